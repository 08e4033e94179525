"""A student that recommends: top-K in the catalogue's raw item ids for a user or a history.

`Recommender.load(checkpoint)` rebuilds any SASRec student (a baseline or a distilled one: every
kind whose scorer is `sasrec.kind:student_scorer` is a plain SASRec) on the prepared dataset it
was trained on (the card's fingerprint is checked), with raw-id <-> dense-id maps, titles and the
training split's item popularity. `rank(queries)` scores a batch of histories in one model call:

* the model sees the last `max_seq_len` items of a history (left-padded, as in evaluation); all of
  them are excluded from the ranking when `exclude_history` is set, as the evaluation masks them;
* `candidates` restricts a query's ranking to those items, `exclude` removes items from it;
* a query with an empty history (a new user, or every item unknown to the catalogue) is ranked
  by popularity (interactions in the training split, ties by item id) and says so
  (`fallback="popularity"`); its scores are those counts;
* fewer than `k` items come back when fewer are rankable;
* `new_item_slot` puts the query's best-scored new item (no training interaction) where it adds
  most expected NDCG@10, by the calibration fitted beside the checkpoint (`sasrec.new_item_slot`).

A student trained under the cold-item protocol is loaded on the prepared dataset it came from, as
it was trained on it (`dataset_as_trained`: its held-out items have no training interaction).

The ranking of a user's test history equals what `runkit.evaluation.evaluate` ranks for that
sample (same window, same mask; tests/test_recommend.py checks it). The `recommend` command
(`main`) is a thin layer over it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from recdata.errors import DataError, UserError, exit_on_user_error
from runkit.new_items import Calibration
from sasrec.new_item_slot import SIDECAR, load_calibration, place_new_items

STUDENT_SCORER = "sasrec.kind:student_scorer"  # the kinds that load as a plain SASRec
FALLBACK = "popularity"
DATA_ROOT = Path("data/processed")


class UnknownIdError(UserError):
    """A raw user or item id the catalogue does not have."""


@dataclass
class Query:
    """One ranking request in dense item ids (1..N), the history oldest first."""

    history: Sequence[int]
    k: int = 10
    exclude_history: bool = True
    candidates: Sequence[int] | None = None  # None: every item
    exclude: Sequence[int] = ()
    new_item_slot: bool = False  # the best new item at its calibrated place (sasrec.new_item_slot)


@dataclass
class Ranked:
    items: list[int]  # dense ids, best first
    scores: list[float]
    fallback: str | None = None  # "popularity" when the history was empty


@dataclass
class Catalogue:
    """The prepared dataset's vocabulary: raw ids, titles, users' sequences, popularity."""

    item_raw: list[str]  # index = dense id - 1
    titles: list[str]  # index = dense id; titles[0] = ""
    user_raw: list[str]  # index = user_id - 1
    offsets: np.ndarray
    items: np.ndarray
    popularity: np.ndarray  # (N+1,) interactions in the training split; [0] = 0
    item_index: dict[str, int] = field(init=False, repr=False)
    user_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_index = {raw: i for i, raw in enumerate(self.item_raw, start=1)}
        self.user_index = {raw: u for u, raw in enumerate(self.user_raw, start=1)}

    @property
    def num_items(self) -> int:
        return len(self.item_raw)

    @cached_property
    def new_items(self) -> torch.Tensor:
        """(N+1,) bool: the items with no interaction in the training split (never padding)."""
        new = torch.from_numpy(self.popularity == 0)
        new[0] = False
        return new

    @property
    def has_titles(self) -> bool:
        return any(self.titles[1:])

    def item_ids(self, raw_ids: Iterable[str], what: str) -> list[int]:
        """Dense ids of raw item ids that must all be known (else one error naming them)."""
        dense, unknown = self.known_items(raw_ids)
        if unknown:
            raise UnknownIdError(f"unknown item ids in {what}: {_listed(unknown)}")
        return dense

    def known_items(self, raw_ids: Iterable[str]) -> tuple[list[int], list[str]]:
        """(dense ids of the known raw ids in order, the unknown raw ids)."""
        dense, unknown = [], []
        for raw in raw_ids:
            item = self.item_index.get(raw)
            if item:
                dense.append(item)
            else:
                unknown.append(raw)
        return dense, unknown

    def user_history(self, raw_user: str) -> list[int]:
        """A user's whole sequence in the dataset (dense ids, oldest first)."""
        user = self.user_index.get(raw_user)
        if user is None:
            raise UnknownIdError(
                f"unknown user id {raw_user!r} (the dataset has {len(self.user_raw)} users); "
                "send the user's history instead (an empty one gets the popularity fallback)"
            )
        return self.items[self.offsets[user - 1] : self.offsets[user]].tolist()

    def raw(self, items: Iterable[int]) -> list[str]:
        return [self.item_raw[i - 1] for i in items]


def load_catalogue(data: Path, trained_on: dict | None = None):
    """(PreparedDataset, Catalogue) of a prepared dataset directory, as the model whose card's
    `data` is ``trained_on`` saw it (see :func:`dataset_as_trained`)."""
    import pyarrow.parquet as pq

    from recdata.contract import ITEMS_FILE

    dataset = dataset_as_trained(data, trained_on)
    raw = pq.read_table(Path(data) / ITEMS_FILE, columns=["raw_id"]).column("raw_id").to_pylist()
    catalogue = Catalogue(
        item_raw=raw,
        titles=dataset.titles,
        user_raw=dataset.user_raw_ids,
        offsets=dataset.offsets,
        items=dataset.items,
        popularity=training_popularity(dataset.offsets, dataset.items, dataset.num_items),
    )
    return dataset, catalogue


def dataset_as_trained(data: Path, trained_on: dict | None = None):
    """The prepared dataset in ``data`` as a model whose card's `data` is ``trained_on`` saw it:
    under the cold-item protocol (`cold_items`, `cold_seed`) the held-out items are in the
    catalogue but in no training interaction, as in its training."""
    from recdata.cold import NONE, protocol_view
    from recdata.contract import load_prepared

    trained_on = trained_on or {}
    spec, seed = trained_on.get("cold_items", NONE), trained_on.get("cold_seed", 0)
    return protocol_view(load_prepared(data), spec, seed)[0]


def training_popularity(offsets: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Interactions per item in the training split (each user's items before the valid one)."""
    lengths = np.diff(offsets)
    position = np.arange(len(items)) - np.repeat(offsets[:-1], lengths)
    in_train = position < np.repeat(lengths - 2, lengths)  # valid = L-2, test = L-1
    return np.bincount(items[in_train], minlength=num_items + 1).astype(np.int64)


def left_pad(rows: Sequence[Sequence[int]], width: int | None = None) -> torch.Tensor:
    """(B, width) int64, each row's items right-aligned after zeros (rows must fit in width)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = max(int(lengths.max(initial=0)), 1) if width is None else width
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    row = np.repeat(np.arange(len(rows)), lengths)
    within = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.zeros((len(rows), width), dtype=np.int64)
    out[row, width - np.repeat(lengths, lengths) + within] = flat
    return torch.from_numpy(out)


def id_mask(rows: Sequence[Sequence[int]], num_items: int) -> torch.Tensor:
    """(B, N+1) bool, True at each row's items (column 0, padding, never)."""
    from recdata.batching import history_mask

    return history_mask(left_pad(rows), num_items)


Scorer = Callable[[torch.Tensor], torch.Tensor]  # (B, max_seq_len) left-padded -> (B, N+1)


class Recommender:
    """Rank items for histories with a scorer of left-padded windows (the checkpoint's SASRec,
    or its ONNX export) over a catalogue."""

    def __init__(
        self,
        scorer: Scorer,
        catalogue: Catalogue,
        max_seq_len: int,
        *,
        item_table: torch.Tensor | None = None,
        info: dict | None = None,
        model: torch.nn.Module | None = None,
        new_item_slot: Calibration | None = None,
    ):
        self.scorer, self.catalogue, self.max_seq_len = scorer, catalogue, int(max_seq_len)
        self.new_item_slot = new_item_slot  # fitted by `recommend --fit-new-item-slot`
        self.info, self.model = info or {}, model  # model: the SASRec behind the scorer, if any
        n = catalogue.num_items
        # popularity as distinct ranking scores: count descending, then item id ascending
        order = np.lexsort((np.arange(n + 1), -catalogue.popularity))
        self._popularity_rank = torch.empty(n + 1)
        self._popularity_rank[torch.from_numpy(order)] = torch.arange(n + 1, 0, -1).float()
        self._unit_table = (
            torch.nn.functional.normalize(item_table.detach().float(), dim=1)
            if item_table is not None
            else None
        )

    @classmethod
    def load(
        cls,
        checkpoint: Path,
        data: Path | None = None,
        *,
        device: str = "cpu",
        new_item_slot: bool = True,
    ) -> Recommender:
        """A SASRec student checkpoint (or a run directory holding checkpoints/best) on the
        dataset it was trained on: `data`, else data/processed/<the card's dataset>; with the
        new-item slot fitted beside it, if any (``new_item_slot=False``: not read)."""
        from sasrec.module import load_sasrec

        path, card = student_checkpoint(checkpoint)
        data = Path(data) if data is not None else default_data(card)
        dataset, catalogue = load_catalogue(data, card.get("data"))
        check_trained_on(path, card, dataset)
        model, card = load_sasrec(
            path,
            fingerprint=dataset.fingerprint,
            num_items=dataset.num_items,
            kinds=(card["kind"],),
        )
        model.to(device)

        def score(windows: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model.score(windows.to(device)).float().cpu()

        info = {
            "checkpoint": str(path.resolve()),
            "kind": card["kind"],
            "digest": student_digest(path),
            "dataset": dataset.name,
            "data": str(Path(data).resolve()),
            "data_fingerprint": dataset.fingerprint,
            **cold_protocol(card.get("data", {})),
            "num_items": dataset.num_items,
            "num_users": dataset.num_users,
            "max_seq_len": model.config.max_seq_len,
            "device": device,
        }
        table = model.item_table()
        slot = load_calibration(path, info) if new_item_slot else None
        info["new_item_slot"] = slot is not None
        return cls(
            score,
            catalogue,
            model.config.max_seq_len,
            item_table=table,
            info=info,
            model=model,
            new_item_slot=slot,
        )

    # -- ranking ---------------------------------------------------------------------------
    def rank(self, queries: Sequence[Query]) -> list[Ranked]:
        """Top-k of every query, scored in one batch."""
        if not queries:
            return []
        scores, allowed = self.masked_scores(queries)
        slotted = [i for i, q in enumerate(queries) if q.new_item_slot and q.history]
        if slotted:
            if self.new_item_slot is None:
                raise UserError(
                    "this student has no new-item slot: fit one first with "
                    "`recommend CHECKPOINT --fit-new-item-slot`"
                )
            scores[slotted] = place_new_items(
                scores[slotted], allowed[slotted], self.catalogue.new_items, self.new_item_slot
            )
        k = min(max(q.k for q in queries), self.catalogue.num_items)
        values, items = scores.topk(k, dim=1)
        popularity = self.catalogue.popularity
        ranked = []
        for q, row_items, row_values in zip(queries, items.tolist(), values.tolist(), strict=True):
            keep = [j for j, v in enumerate(row_values[: q.k]) if v != -np.inf]
            chosen = [row_items[j] for j in keep]
            if q.history:
                ranked.append(Ranked(chosen, [row_values[j] for j in keep]))
            else:  # report the counts, not the tie-broken ranking scores
                ranked.append(Ranked(chosen, [float(popularity[i]) for i in chosen], FALLBACK))
        return ranked

    def masked_scores(self, queries: Sequence[Query]) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, N+1) scores, -inf where a query may not rank; (B, N+1) bool: what it may)."""
        allowed = self._allowed(queries)
        return self._scores(queries).masked_fill_(~allowed, -torch.inf), allowed

    def _scores(self, queries: Sequence[Query]) -> torch.Tensor:
        """(B, N+1) model scores; popularity ranks for empty histories."""
        scores = torch.empty(len(queries), self.catalogue.num_items + 1)
        learned = [i for i, q in enumerate(queries) if q.history]
        if learned:
            tails = [queries[i].history[-self.max_seq_len :] for i in learned]
            scores[learned] = self.scorer(left_pad(tails, self.max_seq_len)).float()
        cold = [i for i, q in enumerate(queries) if not q.history]
        if cold:
            scores[cold] = self._popularity_rank
        return scores

    def _allowed(self, queries: Sequence[Query]) -> torch.Tensor:
        """(B, N+1) bool: what each query may rank (never padding)."""
        n = self.catalogue.num_items
        allowed = torch.ones(len(queries), n + 1, dtype=torch.bool)
        allowed[:, 0] = False
        for pick, rows_of, keep in (
            (lambda q: q.exclude_history, lambda q: q.history, False),
            (lambda q: len(q.exclude) > 0, lambda q: q.exclude, False),
            (lambda q: q.candidates is not None, lambda q: q.candidates, True),
        ):
            rows = [i for i, q in enumerate(queries) if pick(q)]
            if rows:
                mask = id_mask([rows_of(queries[i]) for i in rows], n)
                allowed[rows] &= mask if keep else ~mask
        return allowed

    def similar(self, items: Sequence[int], k: int) -> list[Ranked]:
        """The k items nearest to each item by cosine of the item table (never itself)."""
        if self._unit_table is None:
            raise UserError("this recommender has no item table (an export scores histories only)")
        if not items:
            return []
        index = torch.as_tensor(list(items))
        sims = self._unit_table[index] @ self._unit_table.T
        sims[:, 0] = -torch.inf
        sims[torch.arange(len(index)), index] = -torch.inf
        values, top = sims.topk(min(k, self.catalogue.num_items - 1), dim=1)
        return [Ranked(i, v) for i, v in zip(top.tolist(), values.tolist(), strict=True)]

    # -- raw ids ---------------------------------------------------------------------------
    def describe(self, ranked: Ranked, *, titles: bool) -> dict:
        """A ranking in raw ids: {"items", "scores", "titles" (when asked and known),
        "fallback"} (the service's and the command's JSON)."""
        out = {"items": self.catalogue.raw(ranked.items), "scores": ranked.scores}
        if titles and self.catalogue.has_titles:
            out["titles"] = [self.catalogue.titles[i] for i in ranked.items]
        out["fallback"] = ranked.fallback
        return out


def cold_protocol(trained_on: dict) -> dict:
    """The cold-item protocol a card's `data` records ({} when none): what rebuilds its view."""
    return {k: trained_on[k] for k in ("cold_items", "cold_seed") if k in trained_on}


def student_checkpoint(checkpoint: Path) -> tuple[Path, dict]:
    """(checkpoint dir, card) of a SASRec student: the directory itself, or a run directory's
    checkpoints/best; any other kind is refused naming the student kinds."""
    from runkit.checkpoint import CARD_FILE, CheckpointError, read_card

    path = Path(checkpoint)
    if not (path / CARD_FILE).is_file() and (path / "checkpoints" / "best" / CARD_FILE).is_file():
        path = path / "checkpoints" / "best"
    card = read_card(path)
    kinds = student_kinds()
    if card["kind"] not in kinds:
        raise CheckpointError(
            f"{path} is a {card['kind']!r} checkpoint; recommendations come from a SASRec "
            f"student ({' or '.join(kinds)})"
        )
    return path, card


def check_trained_on(path: Path, card: dict, dataset) -> None:
    trained = card.get("data", {})
    if trained.get("fingerprint") != dataset.fingerprint:
        raise DataError(
            f"{path} was trained on dataset {trained.get('dataset')!r} (fingerprint "
            f"{str(trained.get('fingerprint'))[:12]}…), not on {dataset.path} (fingerprint "
            f"{dataset.fingerprint[:12]}…); pass the dataset it was trained on (--data DIR)"
        )


def student_kinds() -> tuple[str, ...]:
    from runkit.kinds import registered_kinds

    return tuple(sorted(k.name for k in registered_kinds().values() if k.scorer == STUDENT_SCORER))


def default_data(card: dict) -> Path:
    dataset = card.get("data", {}).get("dataset")
    path = DATA_ROOT / str(dataset)
    if not (path / "meta.json").is_file():
        raise DataError(
            f"the checkpoint was trained on dataset {dataset!r}, but {path} is not a prepared "
            "dataset; pass the directory it was prepared to (--data DIR)"
        )
    return path


def student_digest(path: Path) -> str:
    """Identity of a student checkpoint: sha256 of its weights and of the architecture."""
    from recdata.atomic import sha256_file
    from runkit.checkpoint import WEIGHTS_FILE, read_card

    hparams = json.dumps(read_card(path).get("hparams", {}), sort_keys=True)
    identity = f"{sha256_file(Path(path) / WEIGHTS_FILE)}\n{hparams}"
    return hashlib.sha256(identity.encode()).hexdigest()


def _listed(values: Sequence, limit: int = 5) -> str:
    return f"{list(values[:limit])}{' ...' if len(values) > limit else ''}"


# -- the `recommend` command -------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recommend",
        description="Top-K recommendations of a trained or distilled SASRec student, in the "
        "catalogue's raw item ids.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoints/best (or its run directory)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a raw user id of the dataset: its whole history")
    who.add_argument("--history", help="raw item ids, oldest first, comma-separated ('' = none)")
    who.add_argument("--users-file", type=Path, help="raw user ids, one per line (needs --out)")
    who.add_argument(
        "--fit-new-item-slot",
        action="store_true",
        help=f"fit the new-item slot on the valid split and write {SIDECAR} into the checkpoint",
    )
    parser.add_argument("--data", type=Path, help="prepared dataset (default: the card's)")
    parser.add_argument("-k", "--k", type=int, default=10, help="recommendations per user (10)")
    parser.add_argument(
        "--keep-history", action="store_true", help="also rank items of the history"
    )
    parser.add_argument("--candidates", help="rank only these raw item ids (a,b,c or @file)")
    parser.add_argument("--exclude", help="never recommend these raw item ids (a,b,c or @file)")
    parser.add_argument(
        "--new-item-slot",
        action="store_true",
        help="put the best new item (no training interaction) where it adds most expected NDCG@10",
    )
    parser.add_argument("--out", type=Path, help="write the recommendations as Parquet")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--batch-size", type=int, default=256, help="histories per model call")
    parser.add_argument("--device", default="cpu")
    return parser


def id_list(value: str | None) -> list[str] | None:
    """`a,b,c` or `@file` (one id per line) -> raw ids; None stays None."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise UserError(f"{path} does not exist")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [part.strip() for part in value.split(",") if part.strip()]


def read_users(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"--users-file {path} does not exist")
    users = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not users:
        raise UserError(f"--users-file {path} lists no user ids")
    return users


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    recommender = Recommender.load(
        args.checkpoint, args.data, device=args.device, new_item_slot=not args.fit_new_item_slot
    )
    if args.fit_new_item_slot:
        fit_new_item_slot(recommender, args.batch_size)
        return
    users, queries, ignored = queries_of(args, recommender.catalogue)
    ranked = list(
        chain.from_iterable(
            recommender.rank(queries[lo : lo + args.batch_size])
            for lo in range(0, len(queries), args.batch_size)
        )
    )
    results = [
        {"user": u, **recommender.describe(r, titles=True)}
        for u, r in zip(users, ranked, strict=True)
    ]
    if args.out is not None:
        write_parquet(results, args.out)
        print(f"wrote {len(results)} users' recommendations to {args.out}", file=sys.stderr)
    if args.users_file is None:
        if ignored:
            print(
                f"warning: ignored unknown item ids in --history: {_listed(ignored)}",
                file=sys.stderr,
            )
        result = {**results[0], "ignored": ignored}
        print(json.dumps(result) if args.json else table(result))


def fit_new_item_slot(recommender: Recommender, batch_size: int) -> None:
    from recdata.atomic import write_json
    from sasrec import new_item_slot

    fitted = new_item_slot.fit(recommender, batch_size)
    path = Path(recommender.info["checkpoint"]) / SIDECAR
    write_json(path, fitted)
    print(f"{new_item_slot.summary(fitted)}; wrote {path}", file=sys.stderr)


def check_args(args) -> None:
    if args.k < 1:
        raise UserError(f"-k must be at least 1, got {args.k}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.users_file is not None and args.out is None:
        raise UserError("--users-file writes Parquet: give --out PATH.parquet")


def queries_of(args, catalogue: Catalogue) -> tuple[list, list[Query], list[str]]:
    """(raw user ids or None, a Query per user, unknown --history ids that were skipped)."""
    candidates = id_list(args.candidates)
    if candidates is not None:
        candidates = catalogue.item_ids(candidates, "--candidates")
    exclude = catalogue.item_ids(id_list(args.exclude) or [], "--exclude")
    users, histories, ignored = who_and_histories(args, catalogue)
    queries = [
        Query(h, args.k, not args.keep_history, candidates, exclude, args.new_item_slot)
        for h in histories
    ]
    return users, queries, ignored


def who_and_histories(args, catalogue: Catalogue):
    """(raw user ids or None, dense histories, unknown history ids ignored)."""
    if args.users_file is not None:
        users = read_users(args.users_file)
        unknown = [u for u in users if u not in catalogue.user_index]
        if unknown:
            raise UnknownIdError(f"unknown user ids in {args.users_file}: {_listed(unknown)}")
        return users, [catalogue.user_history(u) for u in users], []
    if args.user is not None:
        return [args.user], [catalogue.user_history(args.user)], []
    history, ignored = catalogue.known_items(id_list(args.history) or [])
    return [None], [history], ignored


def table(result: dict) -> str:
    who = f"user {result['user']}" if result["user"] is not None else "history"
    how = "popularity fallback: empty history" if result["fallback"] else "model"
    items, titles = result["items"], result.get("titles") or [""] * len(result["items"])
    width = max(map(len, ["item", *items]))
    lines = [
        f"{who}: top {len(items)} ({how})",
        f"rank  {'item'.ljust(width)}  {'score':>9}  title",
    ]
    for rank, (item, score, title) in enumerate(
        zip(items, result["scores"], titles, strict=True), 1
    ):
        lines.append(f"{rank:4d}  {item.ljust(width)}  {score:9.4f}  {title}".rstrip())
    return "\n".join(lines)


def write_parquet(results: list[dict], path: Path) -> None:
    """One row per (user, rank): user, rank, item, score[, title], fallback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recdata.atomic import atomic_file

    counts = [len(r["items"]) for r in results]
    columns = {
        "user": pa.array(
            np.repeat(np.array([r["user"] for r in results], dtype=object), counts), pa.string()
        ),
        "rank": pa.array(np.concatenate([np.arange(1, c + 1) for c in counts] or [[]]), pa.int32()),
        "item": pa.array(list(chain.from_iterable(r["items"] for r in results)), pa.string()),
        "score": pa.array(list(chain.from_iterable(r["scores"] for r in results)), pa.float32()),
    }
    if results and "titles" in results[0]:
        columns["title"] = pa.array(list(chain.from_iterable(r["titles"] for r in results)))
    fallback = np.repeat(np.array([r["fallback"] for r in results], dtype=object), counts)
    columns["fallback"] = pa.array(fallback, pa.string())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(Path(path)) as tmp:
        pq.write_table(pa.table(columns), tmp)


if __name__ == "__main__":
    main()
