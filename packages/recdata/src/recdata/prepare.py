"""Raw files -> the data contract, written atomically: the built-in MovieLens datasets here, a
user's own files through the same sequence building and writing (recdata.custom)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recdata.atomic import atomic_directory, sha256_file, write_json
from recdata.contract import (
    ITEMS_FILE,
    ITEMS_SCHEMA,
    META_FILE,
    SCHEMA_VERSION,
    SEQUENCES_FILE,
    SEQUENCES_SCHEMA,
    SPLIT_RULE,
    fingerprint,
    split_counts,
)
from recdata.errors import DataError
from recdata.filters import FilterReport, Filters, apply_filters
from recdata.parse import LAYOUTS, RawItem, read_raw
from recdata.sources import DatasetSpec

log = logging.getLogger(__name__)


@dataclass
class Sequences:
    """Interactions as the contract stores them: dense ids, grouped by user, chronological."""

    user_index: np.ndarray  # vocabulary index of dense user u at row u-1 (ascending)
    item_index: np.ndarray  # vocabulary index of dense item i at row i-1 (ascending)
    offsets: np.ndarray  # int64 (U+1,)
    items: np.ndarray  # int32 dense item ids
    times: np.ndarray  # int64
    ratings: np.ndarray  # float32

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _densify(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..size-1 (in vocabulary order) -> dense 1..K over the codes present, keeping the
    order; returns (vocabulary index of each dense id, dense ids)."""
    present = np.bincount(codes, minlength=size) > 0
    remap = np.cumsum(present, dtype=np.int64).astype(np.int32)
    return np.flatnonzero(present), remap[codes]


def build_sequences(
    user_codes: np.ndarray,
    item_codes: np.ndarray,
    times: np.ndarray,
    ratings: np.ndarray,
    num_users: int,
    num_items: int,
) -> Sequences:
    """Dense ids in vocabulary order and each user's interactions sorted by time; lexsort is
    stable, so the given (file) order breaks timestamp ties."""
    item_index, item_ids = _densify(item_codes, num_items)
    user_index, user_ids = _densify(user_codes, num_users)
    order = np.lexsort((times, user_ids))
    counts = np.bincount(user_ids[order])[1:]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Sequences(user_index, item_index, offsets, item_ids[order], times[order], ratings[order])


def build_contract(
    spec: DatasetSpec,
    raw_dir: Path,
    out_dir: Path,
    *,
    min_user_interactions: int = 3,
    filters: Filters | None = None,
) -> dict:
    """Parse and check `raw_dir`, write the contract to `out_dir` atomically and return its meta."""
    filters = filters or Filters(min_user_interactions=min_user_interactions)
    layout, raw, raw_items = read_raw(raw_dir, spec)
    user_vocab, user_codes = np.unique(raw.users, return_inverse=True)
    item_vocab, item_codes = np.unique(raw.items, return_inverse=True)
    rows, report = apply_filters(
        user_codes, item_codes, raw.timestamps, raw.ratings, filters, spec.name
    )
    missing = np.setdiff1d(
        item_vocab[np.unique(item_codes[rows])], np.fromiter(raw_items, dtype=np.int64)
    )
    if len(missing):
        raise DataError(f"{raw_dir}: items {missing[:5].tolist()} are rated but have no metadata")
    seqs = build_sequences(
        user_codes[rows],
        item_codes[rows],
        raw.timestamps[rows],
        raw.ratings[rows],
        len(user_vocab),
        len(item_vocab),
    )

    items_meta: list[RawItem] = [raw_items[int(raw_id)] for raw_id in item_vocab[seqs.item_index]]
    item_raw = [str(int(r)) for r in item_vocab[seqs.item_index]]
    user_raw = [str(int(r)) for r in user_vocab[seqs.user_index]]
    titles = [item.title for item in items_meta]
    fp = fingerprint(item_raw, titles, user_raw, seqs.offsets, seqs.items, seqs.times, seqs.ratings)

    meta = {
        "schema_version": SCHEMA_VERSION,
        "dataset": spec.name,
        "source": {
            "description": spec.description,
            "layout": layout,
            "files": {name: sha256_file(raw_dir / name) for name in LAYOUTS[layout][0]},
        },
        "counts": counts_meta(
            report, len(user_raw), len(item_raw), len(seqs.items), len(user_vocab)
        ),
        "filters": report.meta(filters),
        "split": {"rule": SPLIT_RULE, "samples": split_counts(seqs.lengths)},
        "fingerprint": fp,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    items_table = items_table_of(
        item_raw, titles, [m.year for m in items_meta], [m.genres for m in items_meta]
    )
    write_contract(out_dir, items_table, sequences_table_of(user_raw, seqs), meta)
    return meta


def counts_meta(
    report: FilterReport, users: int, items: int, interactions: int, raw_users: int
) -> dict:
    return {
        "users": users,
        "items": items,
        "interactions": interactions,
        "raw_interactions": report.raw_interactions,
        "dropped_users": raw_users - users,
        "dropped_interactions": report.raw_interactions - interactions,
    }


def _list_array(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, value_type)
    )


def _as_array(values, value_type: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.cast(value_type) if isinstance(values, pa.Array) else pa.array(values, value_type)


def items_table_of(raw_ids, titles, years, genres) -> pa.Table:
    """items.parquet from python lists or arrow arrays, one entry per dense item id."""
    return pa.table(
        {
            "item_id": pa.array(np.arange(1, len(raw_ids) + 1, dtype=np.int32)),
            "raw_id": _as_array(raw_ids, pa.string()),
            "title": _as_array(titles, pa.string()),
            "year": _as_array(years, pa.int16()),
            "genres": _as_array(genres, pa.list_(pa.string())),
        },
        schema=ITEMS_SCHEMA,
    )


def sequences_table_of(user_raw, seqs: Sequences) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(np.arange(1, len(user_raw) + 1, dtype=np.int32)),
            "raw_user_id": _as_array(user_raw, pa.string()),
            "item_ids": _list_array(seqs.items, seqs.offsets, pa.int32()),
            "timestamps": _list_array(seqs.times, seqs.offsets, pa.int64()),
            "ratings": _list_array(seqs.ratings, seqs.offsets, pa.float32()),
        },
        schema=SEQUENCES_SCHEMA,
    )


def write_contract(
    out_dir: Path, items_table: pa.Table, sequences_table: pa.Table, meta: dict
) -> None:
    """All three files or none: a reader never sees a half-written dataset."""
    with atomic_directory(out_dir) as tmp:
        pq.write_table(items_table, tmp / ITEMS_FILE)
        pq.write_table(sequences_table, tmp / SEQUENCES_FILE)
        write_json(tmp / META_FILE, meta)


def ensure_prepared(
    name: str, raw_dir: Path, processed_dir: Path, cache_dir: Path, min_user_interactions: int = 3
) -> Path:
    """Fetch and prepare the dataset unless its contract is already there (used by trainers).
    A dataset of the user's own is never prepared here: it needs `recdata prepare NAME --from`."""
    from recdata.fetch import fetch, is_fetched
    from recdata.sources import DATASETS, dataset_spec

    if (Path(processed_dir) / META_FILE).is_file():
        return Path(processed_dir)
    if name not in DATASETS:
        raise DataError(
            f"{processed_dir}: no prepared dataset {name!r} (no {META_FILE}); prepare your own "
            f"data with `recdata prepare {name} --from PATH ...` (docs/data.md), or pick a "
            f"built-in dataset: {', '.join(sorted(DATASETS))}"
        )
    spec = dataset_spec(name)
    if not is_fetched(spec, Path(raw_dir)):
        fetch(spec, Path(raw_dir), Path(cache_dir))
    log.info("preparing %s into %s", name, processed_dir)
    build_contract(
        spec, Path(raw_dir), Path(processed_dir), min_user_interactions=min_user_interactions
    )
    return Path(processed_dir)
