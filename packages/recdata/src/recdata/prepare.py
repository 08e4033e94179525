"""Raw MovieLens files -> the data contract, written atomically."""

from __future__ import annotations

import datetime as dt
import logging
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
)  # fmt: skip
from recdata.errors import DataError
from recdata.parse import LAYOUTS, RawInteractions, RawItem, read_raw
from recdata.sources import DatasetSpec

log = logging.getLogger(__name__)


def _dense_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map raw ids to dense 1..K in ascending raw-id order; return (vocab, dense ids)."""
    vocab, inverse = np.unique(raw, return_inverse=True)
    return vocab, (inverse + 1).astype(np.int32)


def _filter_short_users(inter: RawInteractions, min_len: int) -> tuple[RawInteractions, int]:
    users, counts = np.unique(inter.users, return_counts=True)
    short = users[counts < min_len]
    return inter.select(~np.isin(inter.users, short)), int(len(short))


def build_contract(
    spec: DatasetSpec, raw_dir: Path, out_dir: Path, *, min_user_interactions: int = 3
) -> dict:
    """Parse and check `raw_dir`, write the contract to `out_dir` atomically and return its meta."""
    layout, raw, raw_items = read_raw(raw_dir, spec)
    num_raw = len(raw.users)
    inter, dropped_users = _filter_short_users(raw, min_user_interactions)
    if len(inter.users) == 0:
        raise DataError(
            f"{spec.name}: no user has at least {min_user_interactions} interactions; "
            "the dataset is empty after filtering"
        )
    missing = np.setdiff1d(np.unique(inter.items), np.fromiter(raw_items, dtype=np.int64))
    if len(missing):
        raise DataError(f"{raw_dir}: items {missing[:5].tolist()} are rated but have no metadata")

    item_vocab, item_ids = _dense_ids(inter.items)
    user_vocab, user_ids = _dense_ids(inter.users)
    # Chronological per user; lexsort is stable, so file order breaks timestamp ties.
    order = np.lexsort((inter.timestamps, user_ids))
    user_sorted, items_sorted = user_ids[order], item_ids[order]
    times_sorted, ratings_sorted = inter.timestamps[order], inter.ratings[order]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_sorted)[1:])]).astype(np.int64)

    items_meta: list[RawItem] = [raw_items[int(raw_id)] for raw_id in item_vocab]
    item_raw = [str(int(r)) for r in item_vocab]
    user_raw = [str(int(r)) for r in user_vocab]
    titles = [item.title for item in items_meta]
    fp = fingerprint(
        item_raw, titles, user_raw, offsets, items_sorted, times_sorted, ratings_sorted
    )

    lengths = np.diff(offsets)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "dataset": spec.name,
        "source": {
            "description": spec.description,
            "layout": layout,
            "files": {name: sha256_file(raw_dir / name) for name in LAYOUTS[layout][0]},
        },
        "counts": {
            "users": int(len(user_vocab)),
            "items": int(len(item_vocab)),
            "interactions": int(len(items_sorted)),
            "raw_interactions": int(num_raw),
            "dropped_users": dropped_users,
            "dropped_interactions": int(num_raw - len(items_sorted)),
        },
        "filters": {"min_user_interactions": min_user_interactions},
        "split": {"rule": SPLIT_RULE, "samples": split_counts(lengths)},
        "fingerprint": fp,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write(
        out_dir,
        items_meta,
        item_raw,
        user_raw,
        offsets,
        items_sorted,
        times_sorted,
        ratings_sorted,
        meta,
    )
    return meta


def _list_array(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, value_type)
    )


def _write(out_dir, items_meta, item_raw, user_raw, offsets, items, times, ratings, meta) -> None:
    items_table = pa.table(
        {
            "item_id": pa.array(np.arange(1, len(item_raw) + 1, dtype=np.int32)),
            "raw_id": pa.array(item_raw, pa.string()),
            "title": pa.array([m.title for m in items_meta], pa.string()),
            "year": pa.array([m.year for m in items_meta], pa.int16()),
            "genres": pa.array([m.genres for m in items_meta], pa.list_(pa.string())),
        },
        schema=ITEMS_SCHEMA,
    )
    sequences_table = pa.table(
        {
            "user_id": pa.array(np.arange(1, len(user_raw) + 1, dtype=np.int32)),
            "raw_user_id": pa.array(user_raw, pa.string()),
            "item_ids": _list_array(items, offsets, pa.int32()),
            "timestamps": _list_array(times, offsets, pa.int64()),
            "ratings": _list_array(ratings, offsets, pa.float32()),
        },
        schema=SEQUENCES_SCHEMA,
    )
    with atomic_directory(out_dir) as tmp:
        pq.write_table(items_table, tmp / ITEMS_FILE)
        pq.write_table(sequences_table, tmp / SEQUENCES_FILE)
        write_json(tmp / META_FILE, meta)


def ensure_prepared(
    name: str, raw_dir: Path, processed_dir: Path, cache_dir: Path, min_user_interactions: int = 3
) -> Path:
    """Fetch and prepare the dataset unless its contract is already there (used by trainers)."""
    from recdata.fetch import fetch, is_fetched
    from recdata.sources import dataset_spec

    if (Path(processed_dir) / META_FILE).is_file():
        return Path(processed_dir)
    spec = dataset_spec(name)
    if not is_fetched(spec, Path(raw_dir)):
        fetch(spec, Path(raw_dir), Path(cache_dir))
    log.info("preparing %s into %s", name, processed_dir)
    build_contract(spec, Path(raw_dir), Path(processed_dir), min_user_interactions=min_user_interactions)
    return Path(processed_dir)
