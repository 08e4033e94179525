"""The teacher-output contract: soft_labels.parquet + item_embeddings.safetensors
+ card.json, keyed by (user_id, position) — never by loader order.

Produced by `precompute-soft-labels` (from a teacher checkpoint) or fetched from the teacher
service; both yield the same `SoftLabels`, so distillation gets identical inputs either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from recdata.atomic import atomic_directory, write_json
from recdata.errors import UserError
from recdata.splits import SampleKeys
from runkit.checkpoint import read_tensors

SOFT_LABELS_FILE, EMBEDDINGS_FILE, CARD_FILE = (
    "soft_labels.parquet",
    "item_embeddings.safetensors",
    "card.json",
)


class SoftLabelError(UserError):
    """Soft labels that do not belong to this teacher, dataset or sample set."""


@dataclass
class SoftLabels:
    user_ids: torch.Tensor  # (S,) int64
    positions: torch.Tensor  # (S,) int64
    topk_items: torch.Tensor  # (S, K) int64, descending teacher score
    topk_scores: torch.Tensor  # (S, K) float32
    item_embeddings: torch.Tensor  # (N+1, H) float32
    card: dict

    @property
    def k(self) -> int:
        return self.topk_items.shape[1]

    def check(self, num_items: int, where: str) -> None:
        """Refuse labels that cannot belong to a dataset of `num_items` items, before training:
        item ids outside 1..N, non-finite scores, or an item-embedding table of the wrong size."""
        items = self.topk_items
        bad = (items < 1) | (items > num_items)
        if bool(bad.any()):
            row = int(bad.any(1).nonzero()[0])
            raise SoftLabelError(
                f"{where}: the top-K list of sample (user_id, position) = "
                f"({int(self.user_ids[row])}, {int(self.positions[row])}) holds item "
                f"{int(items[row][bad[row]][0])}, outside 1..{num_items}"
            )
        if not bool(torch.isfinite(self.topk_scores).all()):
            raise SoftLabelError(f"{where}: some teacher scores are not finite")
        if self.item_embeddings.ndim != 2 or self.item_embeddings.shape[0] != num_items + 1:
            raise SoftLabelError(
                f"{where}: item embeddings have shape {tuple(self.item_embeddings.shape)}, "
                f"expected ({num_items + 1}, H)"
            )

    def aligned_to(self, keys: SampleKeys) -> SoftLabels:
        """Rows reordered to `keys`; every key must be present (missing rows are refused)."""
        if len(keys) == 0:
            return SoftLabels(
                keys.user_ids,
                keys.positions,
                self.topk_items[:0],
                self.topk_scores[:0],
                self.item_embeddings,
                self.card,
            )
        stride = (
            max(int(self.positions.max()) if len(self.positions) else 0, int(keys.positions.max()))
            + 1
        )
        mine = self.user_ids * stride + self.positions
        wanted = keys.user_ids * stride + keys.positions
        order = torch.argsort(mine)
        sorted_keys = mine[order]
        where = torch.searchsorted(sorted_keys, wanted).clamp(max=max(len(sorted_keys) - 1, 0))
        found = (
            sorted_keys[where] == wanted
            if len(sorted_keys)
            else torch.zeros_like(wanted, dtype=torch.bool)
        )
        if not bool(found.all()):
            missing = int((~found).sum())
            first = (int(keys.user_ids[~found][0]), int(keys.positions[~found][0]))
            raise SoftLabelError(
                f"soft labels lack {missing} of {len(wanted)} training samples (first missing key "
                f"(user_id, position) = {first}); re-run precompute-soft-labels with the "
                "same distill.soft_label_samples"
            )
        rows = order[where]
        return SoftLabels(
            keys.user_ids,
            keys.positions,
            self.topk_items[rows],
            self.topk_scores[rows],
            self.item_embeddings,
            self.card,
        )


def label_table(
    user_ids: torch.Tensor, positions: torch.Tensor, items: torch.Tensor, scores: torch.Tensor
) -> pa.Table:
    """The soft-label table (one schema for the contract file and the shards of a job):
    ``user_id``, ``position`` int32, ``topk_items`` list<int32>, ``topk_scores`` list<float32>."""
    rows, k = items.shape
    offsets = pa.array(np.arange(0, (rows + 1) * k, k, dtype=np.int32))
    return pa.table(
        {
            "user_id": pa.array(user_ids.numpy().astype(np.int32)),
            "position": pa.array(positions.numpy().astype(np.int32)),
            "topk_items": pa.ListArray.from_arrays(
                offsets, pa.array(items.numpy().astype(np.int32).ravel())
            ),
            "topk_scores": pa.ListArray.from_arrays(
                offsets, pa.array(scores.numpy().astype(np.float32).ravel())
            ),
        }
    )


def write_soft_labels(directory: Path, labels: SoftLabels) -> Path:
    """Write the contract atomically: readers see the old directory or the complete new one."""
    table = label_table(labels.user_ids, labels.positions, labels.topk_items, labels.topk_scores)
    with atomic_directory(Path(directory)) as tmp:
        pq.write_table(table, tmp / SOFT_LABELS_FILE)
        save_file(
            {"item_embeddings": labels.item_embeddings.float().contiguous()}, tmp / EMBEDDINGS_FILE
        )
        write_json(
            tmp / CARD_FILE, {**labels.card, "num_samples": len(labels.user_ids), "k": labels.k}
        )
    return Path(directory)


def read_soft_labels(
    directory: Path, *, fingerprint: str, teacher: str | None = None, min_k: int = 1
) -> SoftLabels:
    """Read and validate: same data fingerprint, same teacher (when given), K large enough."""
    directory = Path(directory)
    card = _read_card(directory)
    if card.get("data_fingerprint") != fingerprint:
        raise SoftLabelError(
            f"{directory} was computed on other data (fingerprint "
            f"{str(card.get('data_fingerprint'))[:12]}…, dataset has {fingerprint[:12]}…)"
        )
    if teacher is not None and card.get("teacher_digest") != teacher:
        raise SoftLabelError(
            f"{directory} was computed by another teacher "
            f"({str(card.get('teacher_digest'))[:12]}…, expected {teacher[:12]}…)"
        )
    if card.get("k", 0) < min_k:
        raise SoftLabelError(
            f"{directory} holds top-{card.get('k')} lists; distillation needs K >= {min_k}"
        )
    path = directory / SOFT_LABELS_FILE
    try:
        users, positions, items, scores = table_columns(pq.read_table(path), card["k"])
    except (
        OSError,
        pa.ArrowException,
        KeyError,
        ValueError,
    ) as exc:  # truncated, or not this table
        raise SoftLabelError(
            f"{path}: unreadable soft-label table ({str(exc).splitlines()[0]}); "
            "re-run precompute-soft-labels"
        ) from None
    try:
        item_embeddings = read_tensors(directory / EMBEDDINGS_FILE)["item_embeddings"]
    except KeyError:
        raise SoftLabelError(f"{directory / EMBEDDINGS_FILE}: no item_embeddings tensor") from None
    return SoftLabels(users, positions, items, scores, item_embeddings, card)


def _read_card(directory: Path) -> dict:
    path = directory / CARD_FILE
    if not path.is_file():
        raise SoftLabelError(
            f"{directory} holds no soft labels (no {CARD_FILE}); run precompute-soft-labels first"
        )
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        card = None
    if not isinstance(card, dict) or not isinstance(card.get("k"), int):
        raise SoftLabelError(f"{path}: not a soft-label card (a JSON object with an integer k)")
    return card


def table_columns(table: pa.Table, k: int) -> tuple[torch.Tensor, ...]:
    """(user_ids, positions, topk_items (S,K), topk_scores (S,K)) of a soft-label table."""

    def keys(name: str) -> torch.Tensor:
        return torch.as_tensor(table.column(name).to_numpy().astype(np.int64))

    def lists(name: str) -> torch.Tensor:
        return torch.as_tensor(
            table.column(name).combine_chunks().flatten().to_numpy().reshape(-1, k).copy()
        )

    return (
        keys("user_id"),
        keys("position"),
        lists("topk_items").long(),
        lists("topk_scores").float(),
    )
