"""Soft labels from the running teacher service (`teacher.service`) instead of a
precomputed `soft_labels.parquet`.

The client sends exactly what `precompute-soft-labels` scores, in its order and batches, one call
at a time: for a prefix-mode teacher the full prefix items[:position] of every sample key (the
service truncates it to the model's window and uses it whole for history exclusion), for a
sequence-mode teacher the same user windows (their whole prefix items[:end] and first read-out
key, to /topk_windows), longest first; these units are cut into shards and each shard into
batches as the precompute cuts them. With the same teacher and keys the result equals the
precomputed one: bitwise when the service runs the same batches as the precompute (`batch_size` =
the precompute's `distill.teacher_batch_size` <= the service's `max_batch_size`, and no other
client sharing the service), otherwise up to float32 rounding of batch-dependent matmuls (~1e-6
relative).

Nothing fetched is lost: every finished shard is written to a cache directory (atomically, tagged
like the precompute's shards with what it was computed for), so a distill restarted after a crash
or an outage fetches only the shards it lacks. Transient failures (connection errors, timeouts, 5xx
and 429) are retried with exponential backoff for `retry_budget` seconds, long enough for the
service to restart; a 4xx is the request's fault and raises `UserError` with the server's message at
once. Every answer must come from the teacher the fetch started with (the service's digest header),
so a service restarted with another teacher is refused rather than mixed in.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.labelling import labelling_units
from distill.shards import label_shard, merge_shards, shard_is_done, shard_path, shard_ranges
from distill.soft_labels import SoftLabelError, SoftLabels
from ilora.inference import DIGEST_HEADER
from recdata.errors import UserError
from recdata.splits import SampleKeys

log = logging.getLogger(__name__)
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_BACKOFF = 5.0  # seconds between retries at most: a restarted service is noticed within 5 s


class TeacherServiceError(UserError):
    """The teacher service refused a request, or stayed unreachable for the retry budget."""


def _server_message(response) -> str:
    """The service's error text: BentoML's {"error", "detail": [pydantic errors]} or plain text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return str(body)[:500]
    parts = []
    for d in body.get("detail") or []:
        if isinstance(d, dict):
            where = ".".join(str(x) for x in d.get("loc", []))
            parts.append(f"{where}: {d.get('msg')}" if where else str(d.get("msg")))
    message = str(body.get("error", ""))
    return f"{message}: {'; '.join(parts)}" if parts else message or str(body)[:500]


class TeacherClient:
    """POST JSON to the teacher service, retrying transient failures for `retry_budget` seconds
    (see the module doc). Once `digest` is set, an answer from another teacher is refused."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        retry_budget: float = 120.0,
        backoff: float = 0.5,
        digest: str | None = None,
        transport=None,
    ):
        import httpx

        if not retry_budget >= 0:
            raise UserError(f"retry_budget must be >= 0 seconds, got {retry_budget}")
        self.url, self.retry_budget, self.backoff = (
            url.rstrip("/"),
            float(retry_budget),
            float(backoff),
        )
        self.digest = digest
        self.http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def post(self, path: str, payload: dict):
        import httpx

        deadline, delay, attempt = None, self.backoff, 0
        while True:
            attempt += 1
            try:
                response = self.http.post(path, json=payload)
            except httpx.TransportError as error:  # connect/read errors and timeouts
                failure, unreachable = f"{type(error).__name__}: {error}", True
            else:
                if response.status_code < 400:
                    self._check_digest(response, path)
                    return response.json()
                message = _server_message(response)
                if response.status_code not in RETRY_STATUS:
                    raise TeacherServiceError(
                        f"teacher service {self.url}{path} refused the request "
                        f"(HTTP {response.status_code}): {message}"
                    )
                failure, unreachable = f"HTTP {response.status_code}: {message}", False
            now = time.monotonic()
            deadline = deadline or now + self.retry_budget
            if now >= deadline:
                break
            log.warning(
                "teacher service %s%s: %s (attempt %d; retrying for %.0f s more)",
                self.url,
                path,
                failure,
                attempt,
                deadline - now,
            )
            time.sleep(min(delay, deadline - now))
            delay = min(2 * delay, MAX_BACKOFF)
        hint = (
            " (is it running? TEACHER_CHECKPOINT=<teacher checkpoints/best> uv run bentoml serve "
            "teacher.service:TeacherService --port <port>; a slow teacher needs a "
            "larger distill.request_timeout)"
        )
        raise TeacherServiceError(
            f"teacher service {self.url}{path} still failing after {attempt} attempts in "
            f"{self.retry_budget:.0f} s (distill.retry_budget): {failure}"
            f"{hint if unreachable else ''}"
        )

    def _check_digest(self, response, path: str) -> None:
        served = response.headers.get(DIGEST_HEADER)
        if self.digest and served and served != self.digest:
            raise TeacherServiceError(
                f"teacher service {self.url}{path} now serves teacher {served[:12]}…, not "
                f"{self.digest[:12]}… it served when this fetch started (restarted with "
                "another TEACHER_CHECKPOINT?); restart it with the same teacher"
            )

    def info(self) -> dict:
        return self.post("/info", {})

    def item_embeddings(self) -> torch.Tensor:
        body = self.post("/item_embeddings", {})
        if body.get("dtype") != "float32":
            raise TeacherServiceError(
                "teacher service sent item embeddings of dtype "
                f"{body.get('dtype')!r}, expected float32"
            )
        array = np.frombuffer(base64.b64decode(body["data"]), dtype="<f4").reshape(body["shape"])
        return torch.from_numpy(array.astype(np.float32, copy=True))

    def topk_windows(
        self, histories: list[list[int]], first_positions: list[int], k: int, exclude_history: bool
    ) -> list[dict]:
        """Per window: {"positions", "topk_items", "topk_scores"} of every key it reads out."""
        requests = [
            {"history": h, "first_position": f, "k": k, "exclude_history": exclude_history}
            for h, f in zip(histories, first_positions, strict=True)
        ]
        body = self.post("/topk_windows", {"requests": requests})
        if len(body) != len(histories):
            raise TeacherServiceError(
                f"teacher service answered {len(body)} of {len(histories)} windows"
            )
        return body

    def topk(
        self, histories: list[list[int]], k: int, exclude_history: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) items and scores for a batch of chronological histories."""
        body = self.post(
            "/topk",
            {
                "requests": [
                    {"history": h, "k": k, "exclude_history": exclude_history} for h in histories
                ]
            },
        )
        if len(body) != len(histories):
            raise TeacherServiceError(
                f"teacher service answered {len(body)} of {len(histories)} requests"
            )
        items = torch.tensor([r["topk_items"] for r in body], dtype=torch.int64)
        scores = torch.tensor(
            [r["topk_scores"] for r in body], dtype=torch.float64
        ).float()  # exact: sent as float32 values
        return items, scores


def check_info(
    info: dict,
    dm,
    k: int,
    batch_size: int,
    expected_digest: str | None = None,
    expected_from: str = "",
) -> None:
    """Refuse a service that serves another teacher or other data, or cannot answer these calls."""
    served = str(info.get("teacher_digest"))
    if expected_digest is not None and served != expected_digest:
        raise SoftLabelError(
            f"the teacher service serves teacher {served[:12]}… "
            f"({info.get('teacher_checkpoint')}), not the expected {expected_digest[:12]}… "
            f"({expected_from}); restart the service with that TEACHER_CHECKPOINT or point "
            "distill.teacher_checkpoint_path at the served one"
        )
    if info.get("data_fingerprint") != dm.fingerprint:
        raise SoftLabelError(
            "the teacher service serves a teacher trained on other data (fingerprint "
            f"{str(info.get('data_fingerprint'))[:12]}…, dataset {dm.processed_dir} has "
            f"{dm.fingerprint[:12]}…); start it with TEACHER_DATA={dm.processed_dir} "
            "and a teacher trained on it"
        )
    if info.get("num_items") != dm.num_items:
        raise SoftLabelError(
            f"the teacher service knows {info.get('num_items')} items, "
            f"the dataset has {dm.num_items}"
        )
    if not info.get("k_min", 1) <= k <= info.get("k_max", k):
        raise UserError(
            f"distill.candidate_topk={k} is outside the service's range "
            f"{info.get('k_min')}..{info.get('k_max')}"
        )
    if batch_size > info.get("max_requests", batch_size):
        raise UserError(
            f"distill.teacher_batch_size={batch_size} exceeds the service's "
            f"{info['max_requests']} requests per call"
        )
    if info.get("prompt_mode") != "sequence" and dm.max_seq_len < info.get("max_seq_len", 0):
        log.warning(
            "student.max_seq_len=%d is shorter than the teacher's window (%d): the service scores "
            "the teacher's full window, precompute-soft-labels would score the shorter one",
            dm.max_seq_len,
            info["max_seq_len"],
        )


def shard_tag(
    info: dict, dm, keys: SampleKeys, k: int, mask_history: bool, units: int, shard_size: int | None
) -> bytes:
    """What a cached shard was fetched for; a shard with another tag is fetched again."""
    key_digest = hashlib.sha256(keys.user_ids.numpy().tobytes() + keys.positions.numpy().tobytes())
    return json.dumps(
        {
            "teacher_digest": info["teacher_digest"],
            "data_fingerprint": dm.fingerprint,
            "keys_sha256": key_digest.hexdigest(),
            "num_samples": len(keys),
            "k": int(k),
            "history_masked": bool(mask_history),
            "max_seq_len": info.get("max_seq_len"),
            "prompt_mode": info.get("prompt_mode", "prefix"),
            "window": info.get("window"),
            "window_stride": info.get("window_stride"),
            "units": int(units),
            "shard_size": shard_size,
            "source": "service",
        },
        sort_keys=True,
    ).encode()


def service_units(info: dict, dm, keys: SampleKeys):
    """The labelling units a fetch sends to a service that answers /info with `info`: user windows
    of its window and stride for a sequence-mode teacher, prefixes otherwise."""
    sequence_mode = info.get("prompt_mode") == "sequence"
    return labelling_units(
        dm.store,
        dm.keys["train"],
        keys,
        sequence_mode=sequence_mode,
        width=int(info["window"]) if sequence_mode else dm.max_seq_len,
        stride=info.get("window_stride"),
    )


def fetch_soft_labels(
    url: str,
    dm,
    keys: SampleKeys,
    *,
    k: int,
    batch_size: int = 32,
    timeout: float = 60.0,
    retry_budget: float = 120.0,
    mask_history: bool = True,
    samples: str | None = None,
    cache_dir: Path | None = None,
    expected_digest: str | None = None,
    expected_from: str = "",
    shard_size: int | None = None,
    backoff: float = 0.5,
    transport=None,
) -> SoftLabels:
    """The teacher's top-k for every sample key of a set-up `SequentialDataModule`, from the
    service at `url`; rows in `keys` order. Finished shards are kept under `cache_dir` (one
    subdirectory per job; None = a temporary directory, i.e. no resume across calls) and reused by
    the next call for the same job. `expected_digest`: the teacher the service must serve
    (`expected_from` says where that expectation comes from). `shard_size` (units per shard,
    default the precompute's) and `transport` (httpx) are for tests."""
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    if len(keys) == 0:
        raise UserError("no samples to fetch soft labels for")
    dm.setup()
    with (
        TeacherClient(
            url, timeout=timeout, retry_budget=retry_budget, backoff=backoff, transport=transport
        ) as client,
        tempfile.TemporaryDirectory() as scratch,
    ):
        info = client.info()
        check_info(info, dm, k, batch_size, expected_digest, expected_from)
        client.digest = info["teacher_digest"]
        embeddings = client.item_embeddings()
        if embeddings.shape[0] != dm.num_items + 1:
            raise TeacherServiceError(
                f"teacher service sent {embeddings.shape[0]} item "
                f"embeddings, expected {dm.num_items + 1}"
            )
        units = service_units(info, dm, keys)
        tag = shard_tag(info, dm, keys, k, mask_history, len(units), shard_size)
        shard_dir = Path(cache_dir or scratch) / hashlib.sha256(tag).hexdigest()[:16]
        shard_dir.mkdir(parents=True, exist_ok=True)
        shards = shard_ranges(len(units), shard_size)
        todo = [s for s in shards if not shard_is_done(shard_path(shard_dir, s[0]), tag)]
        log.info(
            "teacher service %s: %d samples in %d %s, %d shards, %d cached in %s",
            url,
            len(keys),
            len(units),
            units.name,
            len(shards),
            len(shards) - len(todo),
            shard_dir,
        )
        label = functools.partial(units.fetch, client, k=k, mask_history=mask_history)
        started = time.perf_counter()
        for n, (index, lo, hi) in enumerate(todo, start=1):
            label_shard(shard_path(shard_dir, index), lo, hi, batch_size, label, tag)
            if n % 10 == 0 or n == len(todo):
                done = sum(hi - lo for _, lo, hi in todo[:n])
                log.info(
                    "teacher service: %d/%d shards fetched (%.1f %s/s)",
                    n,
                    len(todo),
                    done / (time.perf_counter() - started),
                    units.name,
                )
        user_ids, positions, items, scores = merge_shards(
            [shard_path(shard_dir, i) for i, _, _ in shards], k
        )
    card = {
        "teacher_checkpoint": info.get("teacher_checkpoint"),
        "teacher_digest": info["teacher_digest"],
        "data_fingerprint": dm.fingerprint,
        "dataset": dm.dataset.name,
        **({"samples": str(samples)} if samples is not None else {}),
        "history_masked": bool(mask_history),
        "source": "service",
        "teacher_url": url,
        "num_samples": len(keys),
        "k": int(k),  # as a written soft_labels card has them
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return SoftLabels(user_ids, positions, items, scores, embeddings, card).aligned_to(keys)
