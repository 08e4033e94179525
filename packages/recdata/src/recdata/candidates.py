"""Fixed candidate sets for the candidate protocol: target + negatives outside the user's
history, drawn once with a seed and stored next to the dataset so every model sees the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recdata.atomic import atomic_file
from recdata.batching import ITEM_BLOCK_BUDGET, SequenceStore
from recdata.contract import PreparedDataset
from recdata.errors import DataError
from recdata.splits import split_keys


def candidates_path(dataset: PreparedDataset, num_candidates: int, seed: int) -> Path:
    return dataset.path / f"candidates_n{num_candidates}_seed{seed}.parquet"


def draw_candidates(
    store: SequenceStore,
    user_ids: torch.Tensor,
    targets: torch.Tensor,
    num_candidates: int,
    seed: int,
    chunk: int = 1024,
) -> torch.Tensor:
    """(S, C): column 0 the target, then C-1 distinct items the user never interacted with,
    uniformly without replacement (top-k of random keys over the allowed items)."""
    generator = torch.Generator().manual_seed(seed)
    # bounded on big catalogues
    chunk = max(1, min(chunk, ITEM_BLOCK_BUDGET // (store.num_items + 1)))
    out = torch.empty(len(user_ids), num_candidates, dtype=torch.int64)
    for lo in range(0, len(user_ids), chunk):
        users = user_ids[lo : lo + chunk]
        seen = store.user_item_mask(users)
        allowed = (~seen).sum(1)
        if int(allowed.min()) < num_candidates - 1:
            user = int(users[int(allowed.argmin())])
            raise DataError(
                f"user {user} has only {int(allowed.min())} unseen items: the candidate protocol "
                f"cannot draw {num_candidates - 1} negatives; lower eval.num_candidates (0 turns "
                "the protocol off)"
            )
        keys = torch.rand(seen.shape, generator=generator).masked_fill_(seen, -1.0)
        out[lo : lo + chunk, 1:] = keys.topk(num_candidates - 1, dim=1).indices
        out[lo : lo + chunk, 0] = targets[lo : lo + chunk]
    return out


def load_or_draw_candidates(
    dataset: PreparedDataset, store: SequenceStore, num_candidates: int, seed: int
) -> dict[str, torch.Tensor]:
    """Candidates for every valid and test sample as {split: (S, C) tensor in key order}."""
    path = candidates_path(dataset, num_candidates, seed)
    if path.is_file():
        table = pq.read_table(path)
        stored = (table.schema.metadata or {}).get(b"fingerprint", b"").decode()
        if stored == dataset.fingerprint:
            return _from_table(table)
    result, all_keys = {}, {}
    for i, split in enumerate(("valid", "test")):
        keys = all_keys[split] = split_keys(dataset.lengths, split)
        targets = store.targets(keys.user_ids, keys.positions)
        result[split] = draw_candidates(store, keys.user_ids, targets, num_candidates, seed + i)
    _save(path, dataset, result, all_keys)
    return result


def _save(path: Path, dataset: PreparedDataset, result: dict[str, torch.Tensor], keys) -> None:
    splits = [s for s, cands in result.items() for _ in range(len(cands))]
    flat = np.concatenate([cands.numpy().astype(np.int32) for cands in result.values()])
    table = pa.table(
        {
            "split": pa.array(splits, pa.string()),
            "user_id": pa.array(
                np.concatenate([keys[s].user_ids.numpy() for s in result]), pa.int32()
            ),
            "position": pa.array(
                np.concatenate([keys[s].positions.numpy() for s in result]), pa.int32()
            ),
            "candidates": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]),
        }
    ).replace_schema_metadata({"fingerprint": dataset.fingerprint})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def _from_table(table: pa.Table) -> dict[str, torch.Tensor]:
    splits = np.asarray(table.column("split").to_pylist())
    cands = table.column("candidates").combine_chunks()
    width = cands.type.list_size
    flat = cands.flatten().to_numpy().reshape(-1, width)
    return {s: torch.as_tensor(flat[splits == s], dtype=torch.int64) for s in ("valid", "test")}
