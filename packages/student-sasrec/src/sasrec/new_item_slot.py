"""The calibrated new-item slot of a served student: fitted once on the valid split, kept beside
the checkpoint, applied to the requests that ask for it.

New items are the catalogue's items with no training interaction (held out by the cold-item
protocol the student was trained under, or seen only as a valid/test item). A distilled student
scores them with the text-made rows distillation gave them, on a scale of their own; the plain
ranking almost never shows one. With the slot, each user's best-scored new item moves to the place
in the top 10 where it adds most expected NDCG@10 under a logistic calibration of the student's
own scores (`runkit.new_items`), or the list stays as it is.

`recommend CHECKPOINT --fit-new-item-slot` fits the calibration on every user's valid sample (the
sequence but its last two items, the target the item before the last; batch by batch, so a large
catalogue's scores are never held at once) and writes ``new_item_slot.json`` into the checkpoint
directory: the six weights, the student's digest and data fingerprint it was fitted for (a
checkpoint retrained in place refuses a stale file), and what it did on valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from recdata.errors import UserError
from runkit.checkpoint import CheckpointError
from runkit.metrics import ndcg_per_sample, target_ranks
from runkit.new_items import Calibration, K, calibration_rows, fit_rows, with_calibrated_slot

SIDECAR = "new_item_slot.json"
FORMAT = 1


def load_calibration(checkpoint_dir: Path, info: dict) -> Calibration | None:
    """The fitted slot beside a checkpoint (None when none was fitted); a file fitted for another
    student or other data is refused."""
    path = Path(checkpoint_dir) / SIDECAR
    if not path.is_file():
        return None
    try:
        fitted = json.loads(path.read_text())
        calibration = Calibration.from_dict(fitted["calibration"])
        student, data = fitted["student_digest"], fitted["data_fingerprint"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not a new-item slot fit ({error!r})") from None
    if (student, data) != (info["digest"], info["data_fingerprint"]):
        raise CheckpointError(
            f"{path} was fitted for another student or other data (student {student[:12]}…, "
            f"data {data[:12]}…; this is student {info['digest'][:12]}…, data "
            f"{info['data_fingerprint'][:12]}…): fit it again with `recommend "
            f"{checkpoint_dir} --fit-new-item-slot`"
        )
    return calibration


def place_new_items(
    scores: torch.Tensor, allowed: torch.Tensor, new: torch.Tensor, calibration: Calibration
) -> torch.Tensor:
    """(B, N+1) masked ``scores`` with each row's best-scored new item at its calibrated slot."""
    return with_calibrated_slot({"output": scores, "exclude": ~allowed}, new, calibration)


SPLITS = {"valid": 2, "test": 1}  # the target's place from the end of a user's sequence


def split_samples(
    recommender, batch_size: int, split: str = "valid"
) -> Iterator[tuple[list, torch.Tensor]]:
    """(queries, targets) batches of every user's ``split`` sample, masked as evaluation masks it:
    the history's items are not ranked, except the target (a repeat stays rankable)."""
    from sasrec.recommend import Query

    catalogue, back = recommender.catalogue, SPLITS[split]
    users = [u for u in range(len(catalogue.user_raw)) if _length(catalogue, u) >= 3]
    for lo in range(0, len(users), batch_size):
        sequences = [_up_to_target(catalogue, u, back) for u in users[lo : lo + batch_size]]
        queries = [
            Query(s[:-1], K, exclude_history=False, exclude=sorted(set(s[:-1]) - {s[-1]}))
            for s in sequences
        ]
        yield queries, torch.tensor([s[-1] for s in sequences])


def _length(catalogue, user: int) -> int:
    return int(catalogue.offsets[user + 1] - catalogue.offsets[user])


def _up_to_target(catalogue, user: int, back: int) -> list[int]:
    """A user's sequence up to its sample's target, the ``back``-th item from the end."""
    start, end = catalogue.offsets[user], catalogue.offsets[user + 1]
    return catalogue.items[start : end - back + 1].tolist()


def fit(recommender, batch_size: int = 256) -> dict:
    """The sidecar's content: the calibration fitted on valid, and what it does there (in sample:
    six weights on thousands of lists)."""
    new = recommender.catalogue.new_items
    if not new.any():
        raise UserError(
            "every item of this catalogue has training interactions: there is no new item to place"
        )
    parts = [
        calibration_rows({**masked, "targets": targets}, new)
        for masked, targets in _scored(recommender, batch_size)
    ]
    if not parts:
        raise UserError("no user has a valid sample (a sequence of at least 3 items) to fit on")
    calibration = fit_rows({key: torch.cat([p[key] for p in parts]) for key in parts[0]})
    return {
        "format": FORMAT,
        "calibration": calibration.to_dict(),
        "k": K,
        "student_digest": recommender.info["digest"],
        "data_fingerprint": recommender.info["data_fingerprint"],
        "new_items": int(new.sum()),
        "valid": on_split(recommender, calibration, batch_size, "valid"),
    }


def _scored(
    recommender, batch_size: int, split: str = "valid"
) -> Iterator[tuple[dict, torch.Tensor]]:
    for queries, targets in split_samples(recommender, batch_size, split):
        scores, allowed = recommender.masked_scores(queries)
        yield {"output": scores, "exclude": ~allowed}, targets


def split_ranks(recommender, calibration: Calibration, batch_size: int, split: str) -> dict:
    """{"plain", "slotted": (S,) 0-based target ranks, "new target": (S,) bool, "moved": (S,)
    bool} of every user's ``split`` sample."""
    new = recommender.catalogue.new_items
    plain, slotted, new_target, moved = [], [], [], []
    for masked, targets in _scored(recommender, batch_size, split):
        placed = with_calibrated_slot(masked, new, calibration)
        plain.append(target_ranks(masked["output"], targets, masked["exclude"]))
        slotted.append(target_ranks(placed, targets, masked["exclude"]))
        new_target.append(new[targets])
        moved.append((placed != masked["output"]).any(1))
    names = ("plain", "slotted", "new target", "moved")
    return dict(zip(names, map(torch.cat, (plain, slotted, new_target, moved)), strict=True))


def on_split(recommender, calibration: Calibration, batch_size: int, split: str) -> dict:
    """Plain vs slotted on ``split``: NDCG@10 and how often a new target reaches the top 10."""
    return ranks_summary(split_ranks(recommender, calibration, batch_size, split))


def ranks_summary(ranks: dict) -> dict:
    """The figures of :func:`split_ranks`' ranks."""
    plain, slotted, new_target = ranks["plain"], ranks["slotted"], ranks["new target"]
    return {
        "users": len(plain),
        "users_moved": int(ranks["moved"].sum()),
        "new_targets": int(new_target.sum()),
        "ndcg@10": {
            "plain": ndcg_per_sample(plain, K).mean().item(),
            "slotted": ndcg_per_sample(slotted, K).mean().item(),
        },
        "new_target_hr@10": {
            "plain": _share_in_top(plain[new_target]),
            "slotted": _share_in_top(slotted[new_target]),
        },
    }


def _share_in_top(ranks: torch.Tensor) -> float:
    return (ranks < K).double().mean().item() if len(ranks) else 0.0


def summary(fitted: dict) -> str:
    valid = fitted["valid"]
    ndcg, hr = valid["ndcg@10"], valid["new_target_hr@10"]
    return (
        f"new-item slot fitted on {valid['users']} valid samples ({fitted['new_items']} new items, "
        f"{valid['new_targets']} new targets): the pick moved for {valid['users_moved']} users; "
        f"valid NDCG@10 {ndcg['plain']:.4f} -> {ndcg['slotted']:.4f}, new targets in the top "
        f"{K} {hr['plain']:.3f} -> {hr['slotted']:.3f}"
    )
