"""Soft labels from the running teacher service (`teacher.service`, DESIGN §3.3) instead of a
precomputed `soft_labels.parquet`.

The client sends exactly what `precompute-soft-labels` scores, in its order and batches, one call
at a time: for a prefix-mode teacher the full prefix items[:position] of every sample key (the
service truncates it to the model's window and uses it whole for history exclusion), for a
sequence-mode teacher the same user windows (their whole prefix items[:end] and first read-out
key, to /topk_windows), longest first. With the same teacher and keys the result equals the
precomputed one: bitwise when the service runs the same batches as the precompute (`batch_size` =
the precompute's `distill.teacher_batch_size` <= the service's `max_batch_size`, and no other
client sharing the service), otherwise up to float32 rounding of batch-dependent matmuls (~1e-6
relative).

Transient failures (connection errors, timeouts, 5xx and 429) are retried `retries` times with
exponential backoff; a 4xx is the request's fault and raises `UserError` with the server's message
at once.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import time

import numpy as np
import torch

from distill.precompute import batch_ranges
from distill.soft_labels import SoftLabelError, SoftLabels
from recdata.datamodule import SplitDataset
from recdata.errors import UserError
from recdata.splits import SampleKeys, plan_windows

log = logging.getLogger(__name__)
RETRY_STATUS = {429, 500, 502, 503, 504}


class TeacherServiceError(UserError):
    """The teacher service refused a request, or stayed unreachable after the retries."""


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
    """POST JSON to the teacher service with bounded retries (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport=None,
    ):
        import httpx

        if retries < 0:
            raise UserError(f"retries must be >= 0, got {retries}")
        self.url, self.retries, self.backoff = url.rstrip("/"), int(retries), float(backoff)
        self.http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def post(self, path: str, payload: dict):
        import httpx

        failure, unreachable = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.http.post(path, json=payload)
            except httpx.TransportError as error:  # connect/read errors and timeouts
                failure, unreachable = f"{type(error).__name__}: {error}", True
            else:
                if response.status_code < 400:
                    return response.json()
                message = _server_message(response)
                if response.status_code not in RETRY_STATUS:
                    raise TeacherServiceError(f"teacher service {self.url}{path} refused the request "
                                              f"(HTTP {response.status_code}): {message}")  # fmt: skip
                failure, unreachable = f"HTTP {response.status_code}: {message}", False
            log.warning("teacher service %s%s: %s (attempt %d of %d)", self.url, path, failure, attempt + 1, self.retries + 1)  # fmt: skip
        hint = (" (is it running? TEACHER_CHECKPOINT=<teacher checkpoints/best> uv run bentoml serve "
                "teacher.service:TeacherService --port <port>; a slow teacher needs a larger distill.request_timeout)")  # fmt: skip
        raise TeacherServiceError(f"teacher service {self.url}{path} failed after {self.retries + 1} attempts: "
                                  f"{failure}{hint if unreachable else ''}")  # fmt: skip

    def info(self) -> dict:
        return self.post("/info", {})

    def item_embeddings(self) -> torch.Tensor:
        body = self.post("/item_embeddings", {})
        if body.get("dtype") != "float32":
            raise TeacherServiceError(
                f"teacher service sent item embeddings of dtype {body.get('dtype')!r}, expected float32"
            )
        array = np.frombuffer(base64.b64decode(body["data"]), dtype="<f4").reshape(body["shape"])
        return torch.from_numpy(array.astype(np.float32, copy=True))

    def topk_windows(self, histories: list[list[int]], first_positions: list[int], k: int,
                     exclude_history: bool) -> list[dict]:  # fmt: skip
        """Per window: {"positions", "topk_items", "topk_scores"} of every key it reads out."""
        requests = [{"history": h, "first_position": f, "k": k, "exclude_history": exclude_history}
                    for h, f in zip(histories, first_positions, strict=True)]  # fmt: skip
        body = self.post("/topk_windows", {"requests": requests})
        if len(body) != len(histories):
            raise TeacherServiceError(f"teacher service answered {len(body)} of {len(histories)} windows")
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


def prefixes(dataset: SplitDataset, indices: list[int]) -> list[list[int]]:
    """The full history items[:position] of each sample, oldest first (what precompute scores)."""
    full = dataset.__getitems__(indices)["full_history"]
    histories = [row[row > 0].tolist() for row in full]
    if any(not h for h in histories):
        raise UserError(
            "a sample has an empty history; the teacher service needs at least one item"
        )
    return histories


def check_info(info: dict, dm, k: int, batch_size: int) -> None:
    if info.get("data_fingerprint") != dm.fingerprint:
        raise SoftLabelError(f"the teacher service serves a teacher trained on other data (fingerprint "
                             f"{str(info.get('data_fingerprint'))[:12]}…, dataset {dm.processed_dir} has "
                             f"{dm.fingerprint[:12]}…); start it with TEACHER_DATA={dm.processed_dir} and a teacher "
                             "trained on it")  # fmt: skip
    if info.get("num_items") != dm.num_items:
        raise SoftLabelError(
            f"the teacher service knows {info.get('num_items')} items, the dataset has {dm.num_items}"
        )
    if not info.get("k_min", 1) <= k <= info.get("k_max", k):
        raise UserError(
            f"distill.candidate_topk={k} is outside the service's range {info.get('k_min')}..{info.get('k_max')}"
        )
    if batch_size > info.get("max_requests", batch_size):
        raise UserError(
            f"distill.teacher_batch_size={batch_size} exceeds the service's {info['max_requests']} requests per call"
        )
    if info.get("prompt_mode") != "sequence" and dm.max_seq_len < info.get("max_seq_len", 0):
        log.warning("student.max_seq_len=%d is shorter than the teacher's window (%d): the service scores the "
                    "teacher's full window, precompute-soft-labels would score the shorter one",
                    dm.max_seq_len, info["max_seq_len"])  # fmt: skip


def fetch_soft_labels(url: str, dm, keys: SampleKeys, *, k: int, batch_size: int = 32, timeout: float = 60.0,
                      retries: int = 3, mask_history: bool = True, samples: str | None = None,
                      backoff: float = 0.5, transport=None) -> SoftLabels:  # fmt: skip
    """The teacher's top-k for every sample key of a set-up `SequentialDataModule`, from the
    service at `url`; rows in `keys` order. `transport` (an httpx transport) is for tests."""
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    if len(keys) == 0:
        raise UserError("no samples to fetch soft labels for")
    dm.setup()
    with TeacherClient(
        url, timeout=timeout, retries=retries, backoff=backoff, transport=transport
    ) as client:
        info = client.info()
        check_info(info, dm, k, batch_size)
        embeddings = client.item_embeddings()
        if embeddings.shape[0] != dm.num_items + 1:
            raise TeacherServiceError(
                f"teacher service sent {embeddings.shape[0]} item embeddings, expected {dm.num_items + 1}"
            )
        fetch = _fetch_windows if info.get("prompt_mode") == "sequence" else _fetch_prefixes
        user_ids, positions, items, scores = fetch(client, dm, keys, info, k, batch_size, mask_history)
    card = {
        "teacher_checkpoint": info.get("teacher_checkpoint"), "teacher_digest": info["teacher_digest"],
        "data_fingerprint": dm.fingerprint, "dataset": dm.dataset.name,
        **({"samples": str(samples)} if samples is not None else {}),
        "history_masked": bool(mask_history), "source": "service", "teacher_url": url,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    return SoftLabels(user_ids, positions, items, scores, embeddings, card).aligned_to(keys)


def _progress(done: int, total: int, started: float, unit: str) -> None:
    log.info("teacher service: %d/%d %s (%.1f/s)", done, total, unit, done / max(time.perf_counter() - started, 1e-9))


def _fetch_prefixes(client, dm, keys, info, k, batch_size, mask_history):
    """Prefix-mode teacher: one history per sample key, in key order."""
    dataset = SplitDataset(dm.store, keys, dm.max_seq_len, with_full_history=True)
    items, scores, started = [], [], time.perf_counter()
    batches = list(batch_ranges(len(keys), batch_size))
    for n, (lo, hi) in enumerate(batches, start=1):
        top_items, top_scores = client.topk(prefixes(dataset, list(range(lo, hi))), k, mask_history)
        items.append(top_items), scores.append(top_scores)
        if n % 20 == 0 or n == len(batches):
            _progress(hi, len(keys), started, "samples")
    return keys.user_ids.clone(), keys.positions.clone(), torch.cat(items), torch.cat(scores)


def _fetch_windows(client, dm, keys, info, k, batch_size, mask_history):
    """Sequence-mode teacher: the windows precompute-soft-labels reads, in its order (longest
    first) and batches; only the keys of ``keys`` are kept."""
    plan = plan_windows(dm.keys["train"], int(info["window"]), info.get("window_stride"))
    plan = plan.holding(keys, dm.store.starts, len(dm.store.items)).longest_first()
    wanted = keys.flat_mask(dm.store.starts, len(dm.store.items))
    users, positions, items, scores, started = [], [], [], [], time.perf_counter()
    batches = list(batch_ranges(len(plan), batch_size))
    for n, (lo, hi) in enumerate(batches, start=1):
        window_users, ends = plan.user_ids[lo:hi], plan.ends[lo:hi]
        full = dm.store.window(window_users, ends, int(ends.max()))
        answers = client.topk_windows([row[row > 0].tolist() for row in full], plan.first_positions[lo:hi].tolist(),
                                      k, mask_history)  # fmt: skip
        for user, answer in zip(window_users.tolist(), answers, strict=True):
            p = torch.tensor(answer["positions"], dtype=torch.int64)
            keep = wanted[dm.store.starts[user] + p]
            users.append(torch.full((int(keep.sum()),), user, dtype=torch.int64)), positions.append(p[keep])
            items.append(torch.tensor(answer["topk_items"], dtype=torch.int64).reshape(-1, k)[keep])
            scores.append(torch.tensor(answer["topk_scores"], dtype=torch.float64).float().reshape(-1, k)[keep])
        if n % 20 == 0 or n == len(batches):
            _progress(hi, len(plan), started, "windows")
    return torch.cat(users), torch.cat(positions), torch.cat(items), torch.cat(scores)
