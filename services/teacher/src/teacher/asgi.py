"""ASGI middleware of the teacher service: the shared `RequestLimits` (415/413, see
`serving.asgi`) and `TeacherDigestHeader`, which names the teacher that answered in every response
(`ilora.inference.DIGEST_HEADER`), so a client can tell when the service it talks to was
restarted with another teacher.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp

from ilora.inference import DIGEST_HEADER
from serving.asgi import DigestHeader, RequestLimits

__all__ = ["RequestLimits", "TeacherDigestHeader"]


class TeacherDigestHeader(DigestHeader):
    def __init__(self, app: ASGIApp, *, digest: Callable[[], str | None]) -> None:
        super().__init__(app, header=DIGEST_HEADER, digest=digest)
