"""Shards of a soft-label job, one home for precompute-soft-labels and the teacher-service client:
the units (prefixes or windows) are cut into shards of SHARD_SIZE, each shard into teacher
batches from its start, and every finished shard is written atomically, tagged with what it was
computed for, so a rerun of the same job keeps it and a shard of another job is recomputed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distill.soft_labels import label_table, table_columns
from recdata.atomic import atomic_file

SHARD_SIZE = 256  # prefixes (prefix mode) or user windows (sequence mode) per shard
SHARD_TAG = b"ilora.soft_label_shard"  # parquet schema metadata: what a shard was computed for
# user_ids, positions, items, scores
Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def shard_ranges(units: int, shard_size: int | None = None) -> list[tuple[int, int, int]]:
    """(index, lo, hi) of each shard of `units` prefixes or windows (SHARD_SIZE each by default);
    each shard is cut into teacher batches from its start, by precompute-soft-labels and by the
    teacher service's client alike, so both run the same batches."""
    size = shard_size or SHARD_SIZE
    return [(i, lo, min(lo + size, units)) for i, lo in enumerate(range(0, units, size))]


def shard_path(shard_dir: Path, index: int) -> Path:
    return Path(shard_dir) / f"shard_{index:06d}.parquet"


def shard_is_done(path: Path, tag: bytes) -> bool:
    """A shard counts as finished only if it was computed for exactly this job (same teacher,
    data, samples, K, masking and shard layout); shards of another job are recomputed."""
    if not path.is_file():
        return False
    try:
        return (pq.read_schema(path).metadata or {}).get(SHARD_TAG) == tag
    except (OSError, pa.ArrowInvalid):
        return False


def label_shard(
    path: Path, lo: int, hi: int, batch_size: int, label: Callable[[int, int], Rows], tag: bytes
) -> None:
    """Label units lo..hi in batches of `batch_size` from lo, and write them as one tagged shard."""
    rows = [label(start, min(start + batch_size, hi)) for start in range(lo, hi, batch_size)]
    table = label_table(*(torch.cat(column) for column in zip(*rows, strict=True)))
    with atomic_file(path) as tmp:
        pq.write_table(table.replace_schema_metadata({SHARD_TAG: tag}), tmp)


def merge_shards(paths: list[Path], k: int) -> tuple[torch.Tensor, ...]:
    return table_columns(pa.concat_tables([pq.read_table(p) for p in paths]), k)
