"""ASGI middleware every service adds with `add_asgi_middleware`, so it wraps every endpoint,
present and future.

`RequestLimits` refuses what BentoML would otherwise read and parse whole before validating it: a
POST body that is not JSON (415) or larger than the cap (413), each with a one-line JSON message.
BentoML 1.4 has no body-size setting (it reads `await request.body()` and parses it) and treats a
missing or unknown content type as JSON, so both are checked here, before the body is read.

`DigestHeader` names the model that answered in every response, so a client can tell when the
service it talks to was restarted with another checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return await _refuse(
                415,
                f"send the body as JSON with 'Content-Type: application/json' "
                f"(got {media_type or 'no content type'!r})",
                scope,
                receive,
                send,
            )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:  # refused unread
            return await _refuse(413, self._too_large(int(declared)), scope, receive, send)
        try:
            body = await self._read_capped(receive)  # a chunked body declares no length: count it
        except _Disconnected:
            return
        if body is None:
            return await _refuse(413, self._too_large(None), scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    async def _read_capped(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int | None) -> str:
        body = f"request body of {size} bytes" if size is not None else "request body"
        return (
            f"{body} exceeds the service's limit of {self.max_body_bytes} bytes; "
            "send fewer histories per call"
        )


class _Disconnected(Exception):
    """The client went away while sending its body."""


async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the connection's further messages (e.g. a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class DigestHeader:
    """Adds `header: digest()` to every HTTP response once `digest()` returns a value (the
    served model's identity; None before it is loaded)."""

    def __init__(self, app: ASGIApp, *, header: str, digest: Callable[[], str | None]) -> None:
        self.app, self.header, self.digest = app, header, digest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_digest(message: Message) -> None:
            digest = self.digest()
            if message["type"] == "http.response.start" and digest:
                MutableHeaders(scope=message)[self.header] = digest
            await send(message)

        await self.app(scope, receive, send_with_digest)
