"""The prepared-dataset contract: items.parquet, sequences.parquet, meta.json."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recdata.errors import DataError

SCHEMA_VERSION = 1
ITEMS_FILE, SEQUENCES_FILE, META_FILE = "items.parquet", "sequences.parquet", "meta.json"

SPLIT_RULE = "leave-one-out by time: test = index L-1, valid = L-2, train = every t in 1..L-3"


def split_counts(lengths: np.ndarray) -> dict[str, int]:
    """Samples per split for sequences of these lengths (see recdata.splits)."""
    lengths = np.asarray(lengths)
    return {
        "train": int(np.clip(lengths - 3, 0, None).sum()),
        "valid": int((lengths >= 2).sum()),
        "test": int((lengths >= 1).sum()),
    }


ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.int32()),
        ("raw_id", pa.string()),
        ("title", pa.string()),
        ("year", pa.int16()),
        ("genres", pa.list_(pa.string())),
    ]
)
SEQUENCES_SCHEMA = pa.schema(
    [
        ("user_id", pa.int32()),
        ("raw_user_id", pa.string()),
        ("item_ids", pa.list_(pa.int32())),
        ("timestamps", pa.list_(pa.int64())),
        ("ratings", pa.list_(pa.float32())),
    ]
)


def fingerprint(
    item_raw_ids: list[str],
    titles: list[str],
    user_raw_ids: list[str],
    offsets: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    ratings: np.ndarray,
) -> str:
    """sha256 over the item vocabulary and every sequence (items, times and ratings)."""
    digest = hashlib.sha256()
    for part in (item_raw_ids, titles, user_raw_ids):
        digest.update("\x1f".join(part).encode())
        digest.update(b"\x1e")
    for array, dtype in ((offsets, "<i8"), (items, "<i4"), (timestamps, "<i8"), (ratings, "<f4")):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()


@dataclass
class PreparedDataset:
    """A prepared dataset held as flat arrays: sequence u is items[offsets[u-1]:offsets[u]]."""

    path: Path
    meta: dict
    titles: list[str]  # index = item_id; titles[0] = "" (padding)
    user_raw_ids: list[str]
    offsets: np.ndarray  # int64, (U+1,), offsets[0] = 0; user_id u <-> row u-1
    items: np.ndarray  # int32 flat item ids
    timestamps: np.ndarray  # int64 flat

    @property
    def name(self) -> str:
        return self.meta["dataset"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def num_items(self) -> int:
        return len(self.titles) - 1

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def has_item_text(self) -> bool:
        """Whether any item has text (a title, or the text columns a dataset was prepared with)."""
        return any(self.titles[1:])

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user_id: int) -> np.ndarray:
        return self.items[self.offsets[user_id - 1] : self.offsets[user_id]]


def read_meta(path: Path) -> dict:
    """A prepared dataset's meta.json (its name, counts, fingerprint), checked for this schema;
    cheap: no table is read."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise DataError(
            f"{path} is not a prepared dataset (no {META_FILE}); run `recdata prepare <dataset>`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{meta_path}: schema_version {meta.get('schema_version')} is not "
            f"{SCHEMA_VERSION}; re-run `recdata prepare {meta.get('dataset', '<dataset>')}`"
        )
    return meta


def load_prepared(path: Path) -> PreparedDataset:
    path = Path(path)
    meta = read_meta(path)
    items = pq.read_table(path / ITEMS_FILE, columns=["item_id", "title"])
    item_ids = items.column("item_id").to_numpy()
    if not np.array_equal(item_ids, np.arange(1, len(item_ids) + 1)):
        raise DataError(f"{path / ITEMS_FILE}: item_id must be dense 1..N in order")
    sequences = pq.read_table(
        path / SEQUENCES_FILE, columns=["user_id", "raw_user_id", "item_ids", "timestamps"]
    )
    item_lists = sequences.column("item_ids").combine_chunks()
    time_lists = sequences.column("timestamps").combine_chunks()
    offsets = item_lists.offsets.to_numpy().astype(np.int64)
    # flatten(), not .values: it honours a sliced list array's offset, matching offsets - offsets[0]
    return PreparedDataset(
        path=path,
        meta=meta,
        titles=[""] + items.column("title").to_pylist(),
        user_raw_ids=sequences.column("raw_user_id").to_pylist(),
        offsets=offsets - offsets[0],
        items=item_lists.flatten().to_numpy().astype(np.int32),
        timestamps=time_lists.flatten().to_numpy().astype(np.int64),
    )
