"""The iLoRA teacher as a BentoML service: top-K soft labels and item embeddings.

    TEACHER_CHECKPOINT=result/<run>/checkpoints/best \
        uv run bentoml serve teacher.service:TeacherService --port 3000
    TEACHER_CHECKPOINT=result/<run>/checkpoints/best \
        uv run bentoml serve teacher --port 3000   # the same service

from the repo root (relative paths are resolved there). It listens on 127.0.0.1 only unless
``--host`` says otherwise.

Configuration (environment, read at startup; checked once before workers start, so a bad setting
or a corrupt checkpoint stops `bentoml serve` with one message, see `teacher.startup`):

* ``TEACHER_CHECKPOINT`` (required): an ``ilora-teacher`` checkpoint directory
  (``checkpoints/best``).
* ``TEACHER_DATA`` (default ``data/processed/ml-100k``): the prepared dataset it was trained on.
* ``TEACHER_DEVICE`` (default ``cpu``), ``TEACHER_CACHE_DIR`` (converted base LLMs; default
  ``$ILORA_CACHE`` or ``~/.cache/ilora-dllm2rec``).
* ``TEACHER_MAX_BATCH_SIZE`` (32) / ``TEACHER_MAX_LATENCY_MS`` (600000): adaptive batching, and
  ``TEACHER_WORKERS`` (1): worker processes, each with its own teacher; read at import.
  Workers exit with the server, even when it is killed with SIGKILL.

Endpoints (POST, JSON):

* ``/topk`` -- batchable:
  ``{"requests": [{"history": [...], "k": 10, "exclude_history": true}, ...]}``
  (1..256 requests per call) -> ``[{"topk_items": [...], "topk_scores": [...]}, ...]``, descending.
  Concurrent calls are merged by BentoML's adaptive batcher into model batches of at most
  ``TEACHER_MAX_BATCH_SIZE`` histories; a long call is split across batches. Scores are those of
  `precompute-soft-labels` bitwise when a model batch holds the same histories as a precompute
  batch (one client, batch size = its eval batch size), else up to float32 rounding (~1e-6).
* ``/topk_windows`` -- batchable, sequence-mode teachers: ``{"requests": [{"history": [...],
  "first_position": p0, "k": 10, "exclude_history": true}, ...]}``, where ``history`` is a user's
  prefix items[:end] (oldest first). One causal pass over its last ``window`` items reads out the
  keys p0..end (the item at position p predicted from items[:p]) ->
  ``[{"positions": [...], "topk_items": [[...]], "topk_scores": [[...]]}, ...]``. The windows of
  `precompute-soft-labels` sent in the same batches give its numbers bitwise.
* ``/item_embeddings`` ->
  ``{"shape": [N+1, H], "dtype": "float32", "data": <base64 little-endian>}``.
* ``/info`` -> teacher digest, data fingerprint, limits and model names.
* BentoML's ``/healthz``, ``/livez``, ``/readyz`` (ready once the teacher is loaded).

Every request is validated before it reaches the batcher (a bad request never fails the requests
it would have been batched with): 415 for a body that is not ``application/json``, 413 for one over
``MAX_BODY_BYTES`` (refused unread, `serving.asgi`), 400 with pydantic's message for malformed
bodies, unknown fields, empty or too long histories, unknown item ids, non-integers, k out of range,
too many requests. No request field names a file. Every response carries the served teacher's
digest in ``x-teacher-digest``.

A new endpoint is a method with ``@bentoml.api(input_spec=<a StrictBody subclass>)``; the limits
and the digest header apply to it as they are.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import bentoml
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from serving.requests import StrictBody
from teacher.asgi import RequestLimits, TeacherDigestHeader
from teacher.startup import (
    ServiceStartupError,
    check_settings,
    exit_with_server,
    fail_startup,
    load_state,
    mark_server,
    settings,
)

log = logging.getLogger("teacher.service")

MAX_K = 100
MAX_HISTORY = 4096  # items per history: ML-1M's longest user has 2314
MAX_REQUESTS = 256  # histories per HTTP call
MAX_BATCH_SIZE = int(os.environ.get("TEACHER_MAX_BATCH_SIZE", 32))  # histories per model batch
MAX_LATENCY_MS = int(os.environ.get("TEACHER_MAX_LATENCY_MS", 600_000))
WORKERS = int(os.environ.get("TEACHER_WORKERS", 1))  # processes, each with its own teacher copy
# The largest legitimate call, MAX_REQUESTS histories of MAX_HISTORY ids of up to 7 digits written
# as json.dumps does ("1234567, "), is ~9.5 MB; a body beyond the cap is refused unread (413).
MAX_BODY_BYTES = 16 * 2**20


@dataclass
class _Served:
    """What request handling needs from the loaded teacher (set once it is loaded)."""

    num_items: int | None = None
    digest: str | None = None


SERVED = _Served()


class TopKRequest(StrictBody):
    history: Annotated[list[StrictInt], Field(min_length=1, max_length=MAX_HISTORY)] = Field(
        description="the user's item ids, oldest first (the model sees the last max_seq_len; "
        "all of them are excluded from the top-K when exclude_history is true)"
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="length of the returned ranking")
    exclude_history: StrictBool = Field(True, description="never rank an item of the history")

    @field_validator("history")
    @classmethod
    def _known_items(cls, history: list[int]) -> list[int]:
        n = SERVED.num_items
        unknown = [i for i in history if i < 1 or (n is not None and i > n)]
        if unknown:
            raise ValueError(
                f"unknown item ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''}: "
                f"item ids are 1..{n}"
            )
        return history

    @model_validator(mode="after")
    def _k_fits(self) -> TopKRequest:
        n = SERVED.num_items
        if n is None:
            return self
        available = n - len(set(self.history)) if self.exclude_history else n
        if self.k > available:
            raise ValueError(
                f"k={self.k} exceeds the {available} rankable items "
                f"({n} items{', minus the history' if self.exclude_history else ''})"
            )
        return self


class WindowRequest(TopKRequest):
    first_position: StrictInt = Field(
        description="the first key position read out (1..len(history)); "
        "the item at position p is scored from items[:p]"
    )

    @model_validator(mode="after")
    def _first_position_fits(self) -> WindowRequest:
        if not 1 <= self.first_position <= len(self.history):
            raise ValueError(
                f"first_position={self.first_position} must be in 1..{len(self.history)} "
                "(the history's length)"
            )
        return self


class WindowResult(BaseModel):
    positions: list[int]
    topk_items: list[list[int]]
    topk_scores: list[list[float]]


class TopKCall(StrictBody):
    requests: Annotated[list[TopKRequest], Field(min_length=1, max_length=MAX_REQUESTS)]


class WindowCall(StrictBody):
    requests: Annotated[list[WindowRequest], Field(min_length=1, max_length=MAX_REQUESTS)]


class TopKResult(BaseModel):
    topk_items: list[int]
    topk_scores: list[float]


class ItemEmbeddings(BaseModel):
    shape: list[int]
    dtype: str = "float32"
    data: str = Field(description="base64 of the row-major little-endian float32 array")


def left_pad(rows: list[list[int]], width: int):
    import torch

    out = torch.zeros(len(rows), max(width, 1), dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            out[r, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
    return out


@bentoml.service(
    name="teacher",
    envs=[{"name": "TEACHER_CHECKPOINT"}],  # `bentoml serve` refuses to start without it
    http={"host": "127.0.0.1"},
    traffic={"timeout": 1800},
    workers=WORKERS,
    threads=1,  # one model call at a time per worker
)
class TeacherService:
    @bentoml.on_deployment
    def _check() -> None:
        """Runs once in the `bentoml serve` process before workers are spawned."""
        s = settings()
        check_settings(s["checkpoint"], s["data"])
        mark_server()

    def __init__(self) -> None:
        exit_with_server()
        s = settings()
        checkpoint, device = s["checkpoint"], s["device"]
        try:
            teacher, ckpt, dataset, embeddings, digest = load_state(
                checkpoint, s["data"], device, s["cache_dir"]
            )
        except ServiceStartupError as error:
            fail_startup(error)
        self.teacher, self.device = teacher, device
        self.max_seq_len = int(teacher.student.config.max_seq_len)
        self.window = int(teacher.window) if teacher.sequence_mode else None
        self.num_items = int(dataset.num_items)
        self.embeddings = ItemEmbeddings(
            shape=list(embeddings.shape),
            data=base64.b64encode(embeddings.numpy().astype("<f4").tobytes()).decode(),
        )
        base = ckpt.card.get("base_llm", {})
        self.info_payload = {
            "teacher_digest": digest,
            "teacher_checkpoint": str(Path(checkpoint).resolve()),
            "kind": ckpt.kind,
            "data_fingerprint": dataset.fingerprint,
            "dataset": dataset.name,
            "num_items": self.num_items,
            "embedding_dim": int(embeddings.shape[1]),
            "max_seq_len": self.max_seq_len,
            "prompt_mode": teacher.config.prompt_mode,
            "window": self.window,
            "window_stride": teacher.config.sequence_window_stride,
            "k_min": 1,
            "k_max": MAX_K,
            "max_history": MAX_HISTORY,
            "max_requests": MAX_REQUESTS,
            "max_body_bytes": MAX_BODY_BYTES,
            "max_batch_size": MAX_BATCH_SIZE,
            "llm_model_name": ckpt.hparams["teacher"]["llm_model_name"],
            "base_llm": {k: base.get(k) for k in ("name", "digest", "source")},
            "student_kind": ckpt.card.get("student_checkpoint", {}).get("kind"),
            "device": device,
        }
        SERVED.num_items, SERVED.digest = self.num_items, digest
        log.info("teacher %s ready: %d items, digest %s…", checkpoint, self.num_items, digest[:12])

    @bentoml.api(
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
        input_spec=TopKCall,
    )
    def topk(self, requests: list[TopKRequest]) -> list[TopKResult]:
        """The teacher's top-K per request (merged across concurrent calls by the batcher)."""
        import torch

        from ilora.inference import topk_with_history_masked

        windows = left_pad([r.history[-self.max_seq_len :] for r in requests], self.max_seq_len)
        with torch.inference_mode():
            scores = self.teacher(windows.to(self.device)).float().cpu()
        results: list[TopKResult | None] = [None] * len(requests)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.k, r.exclude_history), []).append(i)
        for (k, exclude), rows in groups.items():
            index = torch.as_tensor(rows)
            full = (
                left_pad(
                    [requests[i].history for i in rows], max(len(requests[i].history) for i in rows)
                )
                if exclude
                else None
            )
            items, values = topk_with_history_masked(scores[index], full, k)
            for row, it, va in zip(rows, items.tolist(), values.tolist(), strict=True):
                results[row] = TopKResult(topk_items=it, topk_scores=va)
        return results  # type: ignore[return-value]

    @bentoml.api(
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
        input_spec=WindowCall,
    )
    def topk_windows(self, requests: list[WindowRequest]) -> list[WindowResult]:
        """Sequence-mode teachers: the top-K of every key a window reads out (one pass per
        window)."""

        from ilora.inference import window_batch, window_topk

        if self.window is None:
            raise bentoml.exceptions.InvalidArgument(
                "this is a prefix-mode teacher: it scores one history per pass, use /topk"
            )
        results: list[WindowResult | None] = [None] * len(requests)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.k, r.exclude_history), []).append(i)
        for (k, exclude), members in groups.items():  # one pass per window, in each group
            batch = window_batch(
                [requests[i].history for i in members],
                [requests[i].first_position for i in members],
                self.window,
            )
            full = batch["full_history"] if exclude else None
            rows, positions, items, values = window_topk(
                self.teacher,
                batch["history"],
                batch["read"],
                batch["positions"],
                full,
                k,
                self.device,
            )
            for row, i in enumerate(members):
                own = rows == row
                results[i] = WindowResult(
                    positions=positions[own].tolist(),
                    topk_items=items[own].tolist(),
                    topk_scores=values[own].tolist(),
                )
        return results  # type: ignore[return-value]

    @bentoml.api(input_spec=StrictBody)
    async def info(self) -> dict:
        """Teacher digest, data fingerprint, limits and model names."""
        return self.info_payload

    @bentoml.api(input_spec=StrictBody)
    async def item_embeddings(self) -> ItemEmbeddings:
        """The teacher's (N+1, H) item embeddings as base64 float32 (row 0 = padding)."""
        return self.embeddings


TeacherService.add_asgi_middleware(RequestLimits, max_body_bytes=MAX_BODY_BYTES)
TeacherService.add_asgi_middleware(TeacherDigestHeader, digest=lambda: SERVED.digest)
