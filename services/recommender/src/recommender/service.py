"""A SASRec student (baseline or distilled) as a BentoML service: top-K in the catalogue's raw ids.

    STUDENT_CHECKPOINT=result/<run>/checkpoints/best uv run bentoml serve \\
        recommender.service:RecommenderService --port 3001

from the repo root (relative paths are resolved there); it listens on 127.0.0.1 unless ``--host``
says otherwise. The ranking is `sasrec.recommend.Recommender`'s, the `recommend` command's.

Configuration (environment, read at startup; checked once before workers start, so a bad setting
or a corrupt checkpoint stops `bentoml serve` with one message, see `recommender.startup`):

* ``STUDENT_CHECKPOINT`` (required): a SASRec student checkpoint directory (any kind that loads as
  a plain SASRec: ``sasrec``, ``sasrec-distilled``), or its run directory.
* ``STUDENT_DATA`` (default ``data/processed/<the card's dataset>``): the prepared dataset it was
  trained on (its fingerprint is checked). ``STUDENT_DEVICE`` (default ``cpu``).
* ``RECOMMENDER_MAX_BATCH_SIZE`` (64) / ``RECOMMENDER_MAX_LATENCY_MS`` (5000): adaptive batching
  of /recommend, ``RECOMMENDER_WORKERS`` (1): worker processes; read at import.

Endpoints (POST, JSON; raw ids are strings, as in the dataset's files):

* ``/recommend`` -- batchable: ``{"requests": [{"user": "196"} | {"history": ["242", "302"]}, "k":
  10, "exclude_history": true, "candidates": [...], "exclude": [...], "titles": false,
  "new_item_slot": false}, ...]}`` (1..256 requests per call) -> ``[{"items": [...], "scores":
  [...], "titles": [...] | null, "fallback": null | "popularity", "ignored": [...]}, ...]``, best
  first. ``user`` ranks after the user's whole sequence in the dataset. History items the catalogue
  does not know (newer than the model) are skipped and listed in ``ignored``; a history that is
  empty, or empty once they are skipped, is a new user: ranked by popularity in the training split,
  ``"fallback": "popularity"``, its scores the interaction counts. Fewer than k items come back when
  fewer are rankable. ``new_item_slot``: the user's best-scored new item (no training interaction)
  moves to the place in the top 10 where it adds most expected NDCG@10, as fitted beside the
  checkpoint by ``recommend CHECKPOINT --fit-new-item-slot`` (`sasrec.new_item_slot`; read at
  startup, a stale fit stops it; without one such a request gets a 400). Concurrent calls are merged
  by BentoML's adaptive batcher.
* ``/similar_items``: ``{"items": ["242", ...], "k": 10, "titles": false}`` -> ``[{"item": "242",
  "items": [...], "scores": [...], "titles": ...}, ...]``: nearest items by cosine of the item
  table (the item itself never).
* ``/info`` -> student digest, kind, checkpoint, data fingerprint, sizes and limits.
* BentoML's ``/healthz``, ``/livez``, ``/readyz`` (ready once the student is loaded).

A bad request gets a 4xx with one message and never reaches the batcher: 415 for a body that is
not ``application/json``, 413 over ``MAX_BODY_BYTES`` (refused unread, `serving.asgi`), 400 for
malformed JSON, unknown fields, wrong types, k out of 1..100, both or neither of user and history,
an unknown user id or an unknown item id in ``candidates``, ``exclude`` or ``/similar_items``
(each named). Every response carries the served student's digest in ``x-student-digest``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Annotated

import bentoml
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr, model_validator

from recommender.startup import check_settings, load_recommender, settings
from serving.asgi import DigestHeader, RequestLimits
from serving.requests import StrictBody, shorten
from serving.startup import ServiceStartupError, exit_with_server, fail_startup, mark_server

log = logging.getLogger("recommender.service")

DIGEST_HEADER = "x-student-digest"
MAX_K = 100
MAX_HISTORY = 4096  # items per history: ML-1M's longest user has 2314
MAX_IDS = 10_000  # candidates or exclusions per request
MAX_REQUESTS = 256  # histories per HTTP call
MAX_BATCH_SIZE = int(os.environ.get("RECOMMENDER_MAX_BATCH_SIZE", 64))
MAX_LATENCY_MS = int(os.environ.get("RECOMMENDER_MAX_LATENCY_MS", 5000))
WORKERS = int(os.environ.get("RECOMMENDER_WORKERS", 1))
# MAX_REQUESTS requests of MAX_HISTORY 12-character ids ('"B00012345A", ') are ~14.7 MB
MAX_BODY_BYTES = 16 * 2**20


@dataclass
class _Served:
    """What request validation needs from the loaded student (set once it is loaded)."""

    recommender: object | None = None
    digest: str | None = None


SERVED = _Served()
RawId = Annotated[StrictStr, Field(min_length=1, max_length=256)]


def _unknown_items(ids: list[str], what: str) -> None:
    catalogue = SERVED.recommender and SERVED.recommender.catalogue
    if catalogue is not None and (unknown := [i for i in ids if i not in catalogue.item_index]):
        raise ValueError(f"unknown item ids in {what}: {shorten(unknown)}")


class RecommendRequest(StrictBody):
    user: StrictStr | None = Field(None, description="a raw user id of the dataset")
    history: Annotated[list[RawId], Field(max_length=MAX_HISTORY)] | None = Field(
        None, description="raw item ids, oldest first; [] = a new user (popularity fallback)"
    )
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="length of the returned ranking")
    exclude_history: StrictBool = Field(True, description="never rank an item of the history")
    candidates: Annotated[list[RawId], Field(min_length=1, max_length=MAX_IDS)] | None = Field(
        None, description="rank only these raw item ids"
    )
    exclude: Annotated[list[RawId], Field(max_length=MAX_IDS)] = Field(
        default_factory=list, description="never rank these raw item ids"
    )
    titles: StrictBool = Field(False, description="add the items' titles (when the data has any)")
    new_item_slot: StrictBool = Field(
        False,
        description="put the best new item (no training interaction) at the place in the top 10 "
        "where it adds most expected NDCG@10 (needs a fitted slot: recommend --fit-new-item-slot)",
    )

    @model_validator(mode="after")
    def _known(self) -> RecommendRequest:
        if (self.user is None) == (self.history is None):
            raise ValueError("give either 'user' (a raw user id) or 'history' (raw item ids)")
        recommender = SERVED.recommender
        if self.new_item_slot and recommender is not None and recommender.new_item_slot is None:
            raise ValueError(
                "this student has no new-item slot: fit one with `recommend CHECKPOINT "
                "--fit-new-item-slot` and restart the service"
            )
        if (
            self.user is not None
            and recommender is not None
            and self.user not in recommender.catalogue.user_index
        ):
            raise ValueError(
                f"unknown user id {self.user!r}; send the user's history instead "
                "(an empty one gets the popularity fallback)"
            )
        _unknown_items(self.candidates or [], "candidates")
        _unknown_items(self.exclude, "exclude")
        return self


class RecommendCall(StrictBody):
    requests: Annotated[list[RecommendRequest], Field(min_length=1, max_length=MAX_REQUESTS)]


class Recommendation(BaseModel):
    items: list[str]
    scores: list[float]
    titles: list[str] | None = None
    fallback: str | None = None
    ignored: list[str] = Field(default_factory=list)


class SimilarCall(StrictBody):
    items: Annotated[list[RawId], Field(min_length=1, max_length=MAX_REQUESTS)]
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    titles: StrictBool = False

    @model_validator(mode="after")
    def _known(self) -> SimilarCall:
        _unknown_items(self.items, "items")
        return self


class Similar(BaseModel):
    item: str
    items: list[str]
    scores: list[float]
    titles: list[str] | None = None


@bentoml.service(
    name="recommender",
    envs=[{"name": "STUDENT_CHECKPOINT"}],  # `bentoml serve` refuses to start without it
    http={"host": "127.0.0.1"},
    traffic={"timeout": 300},
    workers=WORKERS,
    threads=1,  # one model call at a time per worker
)
class RecommenderService:
    @bentoml.on_deployment
    def _check() -> None:
        """Runs once in the `bentoml serve` process before workers are spawned."""
        s = settings()
        check_settings(s["checkpoint"], s["data"])
        mark_server()

    def __init__(self) -> None:
        import torch

        exit_with_server("recommender")
        s = settings()
        try:
            self.recommender = load_recommender(s["checkpoint"], s["data"], s["device"])
        except ServiceStartupError as error:
            fail_startup(error, "recommender")
        info = self.recommender.info
        self.info_payload = {
            **info,
            "has_titles": self.recommender.catalogue.has_titles,
            "fallback": "popularity: items by interactions in the training split (ties by item "
            "id), for a history that is empty once unknown items are skipped",
            "k_min": 1,
            "k_max": MAX_K,
            "max_history": MAX_HISTORY,
            "max_ids": MAX_IDS,
            "max_requests": MAX_REQUESTS,
            "max_body_bytes": MAX_BODY_BYTES,
            "max_batch_size": MAX_BATCH_SIZE,
            "torch_threads": torch.get_num_threads(),
        }
        SERVED.recommender, SERVED.digest = self.recommender, info["digest"]
        log.info("student %s ready: %d items", info["checkpoint"], info["num_items"])

    @bentoml.api(
        batchable=True,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
        input_spec=RecommendCall,
    )
    def recommend(self, requests: list[RecommendRequest]) -> list[Recommendation]:
        """Top-k per request in raw ids (merged across concurrent calls by the batcher)."""
        from sasrec.recommend import Query

        catalogue = self.recommender.catalogue
        queries, ignored = [], []
        for r in requests:
            if r.user is not None:
                history, unknown = catalogue.user_history(r.user), []
            else:
                history, unknown = catalogue.known_items(r.history)
            exclude = catalogue.item_ids(r.exclude, "exclude")
            candidates = catalogue.item_ids(r.candidates, "candidates") if r.candidates else None
            queries.append(
                Query(history, r.k, r.exclude_history, candidates, exclude, r.new_item_slot)
            )
            ignored.append(unknown)
        ranked = self.recommender.rank(queries)
        return [
            Recommendation(**self.recommender.describe(one, titles=r.titles), ignored=skipped)
            for r, one, skipped in zip(requests, ranked, ignored, strict=True)
        ]

    @bentoml.api(input_spec=SimilarCall)
    def similar_items(self, items: list[str], k: int, titles: bool) -> list[Similar]:
        """The k nearest items of each item (cosine of the student's item table)."""
        dense = self.recommender.catalogue.item_ids(items, "items")
        ranked = self.recommender.similar(dense, k)
        return [
            Similar(item=raw, **self.recommender.describe(one, titles=titles))
            for raw, one in zip(items, ranked, strict=True)
        ]

    @bentoml.api(input_spec=StrictBody)
    async def info(self) -> dict:
        """Student digest, kind, checkpoint, data fingerprint, sizes and limits."""
        return self.info_payload


RecommenderService.add_asgi_middleware(RequestLimits, max_body_bytes=MAX_BODY_BYTES)
RecommenderService.add_asgi_middleware(
    DigestHeader, header=DIGEST_HEADER, digest=lambda: SERVED.digest
)
