"""The cold-item protocol: a share of the catalogue is held out of training, as items that arrive
after a model was trained would be, so what a model can do for an item it never saw is measured.

`dataset.cold_items` = ``random:F`` (a seeded random fraction F of the items) or ``newest:F``
(the fraction F of items whose first interaction is latest: "items first seen after a time").
Cold items are removed from every sequence except where they are a user's valid or test target:
they appear in no training input or target, and the valid/test samples whose target is cold form
the `cold` slice. A user left with fewer than three items is dropped. The view is a dataset of its
own: its fingerprint is the source's combined with the protocol, so checkpoints and soft labels
trained under it are never mixed with the full data's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np

from recdata.contract import PreparedDataset
from recdata.errors import UserError

NONE = "none"
_SPEC = re.compile(r"^(random|newest):(0(\.\d+)?|1(\.0+)?|\.\d+)$")


def check_spec(spec: str) -> str:
    spec = str(spec).strip()
    if spec != NONE and not _SPEC.match(spec):
        raise UserError(
            f"dataset.cold_items must be none, random:F or newest:F with F in [0, 1), got {spec!r}"
        )
    if spec != NONE and float(spec.split(":")[1]) >= 1:
        raise UserError(f"dataset.cold_items={spec} would hold out every item")
    return spec


def cold_item_mask(dataset: PreparedDataset, spec: str, seed: int = 0) -> np.ndarray:
    """(N+1,) bool: the items the protocol holds out (row 0, padding, never)."""
    spec = check_spec(spec)
    cold = np.zeros(dataset.num_items + 1, dtype=bool)
    if spec == NONE:
        return cold
    how, fraction = spec.split(":")
    count = int(round(float(fraction) * dataset.num_items))
    if how == "random":
        chosen = np.random.default_rng(seed).permutation(dataset.num_items)[:count] + 1
    else:  # newest: latest first interaction first; ties by item id
        first_seen = np.full(dataset.num_items + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_seen, dataset.items, dataset.timestamps)
        items = np.arange(1, dataset.num_items + 1)
        chosen = items[np.lexsort((items, -first_seen[1:]))][:count]
    cold[chosen] = True
    return cold


def protocol_view(dataset: PreparedDataset, spec: str, seed: int = 0):
    """(the dataset as a model trained under protocol ``spec`` saw it, its (N+1,) held-out mask):
    `dataset` itself when the protocol is none."""
    cold = cold_item_mask(dataset, spec, seed)
    return (dataset if check_spec(spec) == NONE else hold_out(dataset, cold, spec)), cold


def hold_out(dataset: PreparedDataset, cold: np.ndarray, spec: str) -> PreparedDataset:
    """`dataset` with the cold items removed from every sequence but its valid and test targets;
    users left with fewer than three items dropped."""
    lengths = dataset.lengths
    position = np.arange(len(dataset.items)) - np.repeat(dataset.offsets[:-1], lengths)
    target = position >= np.repeat(lengths - 2, lengths)  # the valid and test items
    keep = ~cold[dataset.items] | target
    kept_lengths = (
        np.add.reduceat(keep.astype(np.int64), dataset.offsets[:-1]) if len(lengths) else lengths
    )
    kept_lengths = np.where(lengths > 0, kept_lengths, 0)
    users = kept_lengths >= 3
    keep &= np.repeat(users, lengths)
    offsets = np.concatenate([[0], np.cumsum(kept_lengths[users])]).astype(np.int64)
    meta = {
        **dataset.meta,
        "fingerprint": hashlib.sha256(
            f"{dataset.fingerprint}\ncold_items={spec}".encode()
        ).hexdigest(),
        "cold_items": {
            "spec": spec,
            "items": int(cold.sum()),
            "dropped_users": int((~users).sum()),
            "source_fingerprint": dataset.fingerprint,
        },
    }
    return dataclasses.replace(
        dataset,
        meta=meta,
        user_raw_ids=[u for u, k in zip(dataset.user_raw_ids, users, strict=True) if k],
        offsets=offsets,
        items=dataset.items[keep],
        timestamps=dataset.timestamps[keep],
    )
