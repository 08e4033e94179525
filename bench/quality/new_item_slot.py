"""The served new-item slot, measured: what `recommend --new-item-slot` does to a student's test
lists, paired per user against its plain lists (and against other students').

    uv run python -m bench.quality.new_item_slot RUN [RUN ...] [--data DIR] [--against RUN ...]

Each RUN is a SASRec student (a run directory or its checkpoint), e.g. one per seed. Its slot is
fitted exactly as `recommend RUN --fit-new-item-slot` fits it (`sasrec.new_item_slot.fit`, on the
valid split), in memory: nothing is written beside the checkpoint. Then the test split is read
once, masked as evaluation masks it: the plain ranking and the slotted one. New items are the
catalogue's items without a training interaction (the cold-item protocol's held-out items, and
any item seen only as a valid/test target). Printed: each run's fit and test figures, then pooled
over the runs (paired per user, mean ± SE, * beyond 2 SE) slotted - plain by target kind, and for
`--against` (one run per run, e.g. each distilled student's baseline) run - against, both plain
and both slotted (each with its own fit).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.quality.score_parts import print_against_twins

BATCH = 256


def measure(run: Path, data: Path | None) -> tuple[dict, list[str]]:
    """({"plain", "slotted": (S,) test ranks}, each sample's target kind: new / learnt)."""
    from runkit.new_items import Calibration
    from sasrec import new_item_slot
    from sasrec.recommend import Recommender

    recommender = Recommender.load(run, data, new_item_slot=False)
    fitted = new_item_slot.fit(recommender, BATCH)
    calibration = Calibration.from_dict(fitted["calibration"])
    ranks = new_item_slot.split_ranks(recommender, calibration, BATCH, "test")
    tested = new_item_slot.ranks_summary(ranks)
    print(f"\n{run}: {new_item_slot.summary(fitted)}")
    ndcg, hr = tested["ndcg@10"], tested["new_target_hr@10"]
    print(
        f"  test: the pick moved for {tested['users_moved']} of {tested['users']} users; NDCG@10 "
        f"{ndcg['plain']:.4f} -> {ndcg['slotted']:.4f}; {tested['new_targets']} new targets, in "
        f"the top 10 {hr['plain']:.3f} -> {hr['slotted']:.3f}"
    )
    groups = ["new" if new else "learnt" for new in ranks["new target"].tolist()]
    return {"plain": ranks["plain"].float(), "slotted": ranks["slotted"].float()}, groups


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality.new_item_slot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", type=Path, nargs="+", help="SASRec student runs or checkpoints")
    parser.add_argument("--data", type=Path, help="the prepared dataset (default: the card's)")
    parser.add_argument("--against", type=Path, nargs="+", default=[], help="one run per run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.against and len(args.against) != len(args.runs):
        parser.error(f"--against needs one run per run: {len(args.runs)}, got {len(args.against)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    measured = [measure(run, args.data) for run in args.runs]
    against = [measure(run, args.data) for run in args.against]
    groups = measured[0][1]
    if any(g != groups for _, g in measured + against):
        raise SystemExit("the runs do not share their test samples (same data and protocol?)")
    runs = [ranks for ranks, _ in measured]
    print("\nslotted - plain, per run's own lists:")
    plain = [{"slotted": r["plain"]} for r in runs]
    print_against_twins(runs, plain, groups, parts=("slotted",))
    if against:
        print(f"\nrun - against ({args.against[0]} ...), both plain and both slotted:")
        print_against_twins(runs, [r for r, _ in against], groups, parts=("plain", "slotted"))


if __name__ == "__main__":
    main()
