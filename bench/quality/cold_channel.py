"""Can a model put never-seen items in a top 10, and what does it cost the others? (a measurement)

    uv run python -m bench.quality.cold_channel RUN_DIR [RUN_DIR ...] [--against RUN_DIR ...]...

Each RUN_DIR is a finished run (student, teacher or distilled student) under the cold-item
protocol (`dataset.cold_items`), e.g. one per seed. Each model keeps its own output for the
items it learnt and may change where the cold items go, by one of these policies, chosen on valid
by overall NDCG@10 (the plain output is one of the choices) and then read once on test:

    slot s, gate m   per user, the cold item the model scores highest takes slot s of the list
                     (the items from slot s down move one place) when the model's own output
                     already ranks it within the top m; otherwise the list is the output
    calibrated slot  per user, the cold item the model scores highest takes the place in the top
                     10 where it adds most expected NDCG@10 (or stays where it is), each item's
                     chance of being the target read from its log-softmax among the items of
                     its kind and its place in the list by a logistic fit on valid (Platt
                     scaling), one fit for learnt items and one for cold ones (judged on valid
                     with each half of the users calibrated on the other half)
    offset b         (a teacher with text scoring) every cold item scored by the teacher's text
                     part alone plus one offset b for all users

Besides the valid choice, every model is also read on test at two fixed operating points: the
simplest new-item slot, `slot 10` (the list's last place, no gate: nine learnt items and the cold
item the model scores highest), and the calibrated slot fitted on all of valid. Printed per run:
the valid change in NDCG@10 (± SE) and HR@10 on cold and on warm targets of every policy, and the
chosen one; the calibration and where it put the pick on test; then, pooled over the runs, the
test metrics per slice, each policy - plain (paired per user, mean ± SE) and, for each
`--against` (one run per run, e.g. the student each teacher mixes in, its random-weight twins, or
the baseline each distilled student is compared with; measured the same way; may be repeated),
run - against under each policy.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.quality.score_parts import (
    METRICS,
    load_text_teacher,
    print_against_twins,
    sample_mask,
    scored_split,
    teacher_parts,
)
from runkit.new_items import (
    Calibration,
    ColdPick,
    K,
    calibrated_slots,
    fit_calibration,
    placed_at,
    with_calibrated_slot,
)

# offsets: b puts the median cold item's text score at these quantiles of the output's scores
QUANTILES = torch.linspace(0.5, 0.9995, 40)
SLOTS = (1, 2, 3, 5, 10)  # 1-based positions in the list
GATES = (10, 30, 100, 300, 1000, math.inf)  # m: the model must rank the cold item in its top m


@dataclass(frozen=True)
class Policy:
    """How cold items are placed: nothing (the plain output), a per-user slot or one offset."""

    slot: int | None = None
    gate: float = math.inf
    offset: float | None = None
    calibrated: bool = False

    def __str__(self) -> str:
        if self.calibrated:
            return "calibrated slot (the pick where it adds most expected NDCG@10)"
        if self.slot is not None:
            gate = "any rank" if math.isinf(self.gate) else f"ranked within {self.gate:g}"
            return f"slot {self.slot} ({gate})"
        if self.offset is not None:
            return f"text + offset {self.offset:.3f}"
        return "the plain output"


PLAIN = Policy()
LAST_SLOT = Policy(slot=10)
CALIBRATED = Policy(calibrated=True)
# None: the valid choice
READ = {"plain": PLAIN, "chosen": None, "slot 10": LAST_SLOT, "calibrated slot": CALIBRATED}


def with_cold_slot(
    output: torch.Tensor, cold: torch.Tensor, exclude: torch.Tensor, slot: int, gate: float
) -> torch.Tensor:
    """(S, N+1) scores where each row's best-scored cold item sits at 1-based ``slot`` of the
    ranking when the output ranks it within the top ``gate`` but below ``slot``; every other score
    is the output's. ``cold`` (N+1,) bool, ``exclude`` (S, N+1) bool: items not ranked (the
    history)."""
    pick = ColdPick.of(output, cold, exclude)
    move = pick.score.isfinite() & (pick.own_rank >= slot) & (pick.own_rank < gate)
    return placed_at(output, pick, torch.where(move, slot, 0))


def cross_fitted_scores(scores: dict, cold: torch.Tensor) -> torch.Tensor:
    """The calibrated slot on one split with each half of its samples calibrated on the other
    half, so the split can judge the policy without having fitted it."""
    generator = torch.Generator().manual_seed(0)
    half = torch.randperm(len(scores["targets"]), generator=generator) % 2 == 0
    placed = scores["output"].clone()
    for fit_on in (half, ~half):
        calibration = fit_calibration(subset(scores, fit_on), cold)
        placed[~fit_on] = with_calibrated_slot(subset(scores, ~fit_on), cold, calibration)
    return placed


def subset(scores: dict, rows: torch.Tensor) -> dict:
    return {name: value[rows] for name, value in scores.items()}


def policy_scores(
    scores: dict, cold: torch.Tensor, policy: Policy, calibration: Calibration | None = None
) -> torch.Tensor:
    """The output under ``policy``; the calibrated slot uses ``calibration`` (fitted elsewhere),
    or, without one, calibrates each half of the samples on the other half."""
    if policy.calibrated:
        if calibration is None:
            return cross_fitted_scores(scores, cold)
        return with_calibrated_slot(scores, cold, calibration)
    if policy.slot is not None:
        return with_cold_slot(scores["output"], cold, scores["exclude"], policy.slot, policy.gate)
    if policy.offset is not None:
        return torch.where(cold, scores["text"] + policy.offset, scores["output"])
    return scores["output"]


def policy_ranks(
    scores: dict, cold: torch.Tensor, policy: Policy, calibration: Calibration | None = None
) -> torch.Tensor:
    """0-based target ranks under ``policy``."""
    from runkit.metrics import target_ranks

    ranked = policy_scores(scores, cold, policy, calibration)
    return target_ranks(ranked, scores["targets"], scores["exclude"]).float()


def offsets(scores: dict, cold: torch.Tensor) -> list[float]:
    """Candidate b: the median cold item's text score moved to each of QUANTILES of the output."""
    generator = torch.Generator().manual_seed(0)
    output = scores["output"]
    finite = output[~scores["exclude"] & ~cold & output.isfinite()]
    sample = finite[torch.randint(len(finite), (min(len(finite), 1_000_000),), generator=generator)]
    levels = torch.quantile(sample, QUANTILES)
    return (levels - scores["text"][:, cold].median()).tolist()


def candidate_policies(scores: dict, cold: torch.Tensor) -> list[Policy]:
    slots = [Policy(slot=s, gate=g) for s in SLOTS for g in GATES if g > s]
    if "text" not in scores:
        return [PLAIN, *slots, CALIBRATED]
    return [PLAIN, *slots, CALIBRATED, *(Policy(offset=b) for b in offsets(scores, cold))]


def run_scorer(run: Path):
    """(batch -> {"output", and for a text-scoring teacher "text"}: (B, N+1) scores, datamodule)
    of the run's best checkpoint, whatever model it is."""
    from omegaconf import OmegaConf

    from ilora.train import teacher_config, teacher_datamodule
    from runkit.checkpoint import read_card
    from runkit.data import build_datamodule
    from runkit.kinds import checkpoint_kind

    cfg = OmegaConf.load(run / "config.yaml")
    best = run / "checkpoints" / "best"
    kind = read_card(best)["kind"]
    if kind == "ilora-teacher":
        config = teacher_config(cfg)
        if config.text_scoring:
            teacher, dm = load_text_teacher(run)
            parts = teacher_parts(teacher)

            def output_and_text(batch):
                scored = parts(batch)
                return {"output": scored["mix"], "text": scored["text part alone"]}

            return output_and_text, dm
        dm = teacher_datamodule(cfg, config, Path(cfg.teacher.rec_model_checkpoint_path))
    else:
        dm = build_datamodule(cfg, max_seq_len=cfg.student.max_seq_len)
    scorer = checkpoint_kind(kind).load_scorer(
        best,
        dm.dataset,
        device="cpu",
        cache_dir=Path(cfg.paths.cache_dir),
        precision=cfg.teacher.precision,
    )
    return (lambda batch: {"output": scorer(batch)}), dm


def split_scores(score_batch, dm, split: str) -> tuple[dict, list[str]]:
    """({output, [text,] targets, exclude (the history)}: (S, ...), target groups)."""

    def keep(scored, exclude, batch):
        return {**scored, "targets": batch["target"], "exclude": exclude}

    return scored_split(score_batch, dm, split, keep)


def choose(run: Path, valid: dict, cold: torch.Tensor) -> Policy:
    """The policy with the best valid NDCG@10 (the plain output on ties); prints every policy's
    change against the plain output (paired per user, ± SE) and its HR@10 on cold / warm targets."""
    ndcg, hr10 = METRICS["NDCG@10"], METRICS["HR@10"]
    cold_targets = cold[valid["targets"]]
    plain = ndcg(policy_ranks(valid, cold, PLAIN))
    measured = {}
    for policy in candidate_policies(valid, cold):
        ranks = policy_ranks(valid, cold, policy)
        change, hr = ndcg(ranks) - plain, hr10(ranks)
        measured[policy] = (
            change.mean().item(),
            change.std().item() / math.sqrt(len(change)),
            hr[cold_targets].mean().item(),
            hr[~cold_targets].mean().item(),
        )
    chosen = max(measured, key=lambda p: (measured[p][0], p == PLAIN))
    print(
        f"\n{run} valid: NDCG@10 of the plain output {plain.mean():.4f} "
        f"({int(cold_targets.sum())} of {len(plain)} targets cold); "
        "per policy: NDCG@10 - plain ± SE, HR@10 on cold / warm targets"
    )
    # of the 40 offsets, only the best that puts some cold target in a top 10 (and the chosen)
    reaching = [p for p in measured if p.offset is not None and measured[p][2] > 0]
    shown_offset = max(reaching, key=lambda p: measured[p][0]) if reaching else None
    for policy, (change, se, cold_hr, warm_hr) in measured.items():
        if policy.offset is not None and policy not in (shown_offset, chosen):
            continue
        mark = "  <- chosen" if policy == chosen else ""
        print(f"  {policy}: {change:+.4f} ± {se:.4f}, {cold_hr:.3f} / {warm_hr:.3f}{mark}")
    return chosen


def measure(run: Path) -> tuple[dict, list[str]]:
    """({policy name in READ: test ranks (S,)}, target groups) for one run."""
    score_batch, dm = run_scorer(run)
    if dm.held_out_items is None:
        raise SystemExit(f"{run}: not a cold-item run (dataset.cold_items is none)")
    cold = dm.held_out_items.clone()
    cold[0] = False
    valid, _ = split_scores(score_batch, dm, "valid")
    chosen = choose(run, valid, cold)
    calibration = fit_calibration(valid, cold)
    del valid
    test, groups = split_scores(score_batch, dm, "test")
    _, slots = calibrated_slots(test, cold, calibration)
    print(f"  calibrated on valid: {calibration}; test: the pick moved for {slots.gt(0).sum()} of")
    print(f"  {len(slots)} users, to slots {torch.bincount(slots, minlength=K + 1)[1:].tolist()}")
    policies = {name: policy or chosen for name, policy in READ.items()}
    ranks = {p: policy_ranks(test, cold, p, calibration) for p in set(policies.values())}
    return {name: ranks[p] for name, p in policies.items()}, groups


def print_pooled(name: str, measured: list, groups: list[str]) -> None:
    for part in READ:
        cells = []
        for g in ["all", *sorted(set(groups))]:
            keep = sample_mask(groups, g)
            rank = torch.cat([r[part][keep] for r in measured])
            values = ", ".join(f"{m} {f(rank).mean():.4f}" for m, f in METRICS.items())
            cells.append(f"{g}: {values}")
        print(f"\n{name}, {part} (test, over {len(measured)} run(s)): " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality.cold_channel", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", type=Path, nargs="+", help="finished cold-protocol runs")
    parser.add_argument(
        "--against", type=Path, nargs="+", action="append", default=[], help="one run per run"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    for against in args.against:
        if len(against) != len(args.runs):
            parser.error(f"--against needs one run per run: {len(args.runs)}, got {len(against)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [measure(run) for run in args.runs]
    against = [[measure(run) for run in same] for same in args.against]
    groups = runs[0][1]
    if any(g != groups for _, g in runs + sum(against, [])):
        raise SystemExit("the runs do not share their test samples and slices (same data?)")
    runs = [r for r, _ in runs]
    print_pooled("runs", runs, groups)
    changed = tuple(name for name in READ if name != "plain")
    print("\neach policy - plain:")
    print_against_twins(runs, [dict.fromkeys(changed, r["plain"]) for r in runs], groups, changed)
    for paths, measured in zip(args.against, against, strict=True):
        name = f"against {paths[0].name} ..."
        print_pooled(name, [r for r, _ in measured], groups)
        print(f"\nrun - {name}, each under the same policy (chosen: each one's own valid choice):")
        print_against_twins(runs, [r for r, _ in measured], groups, parts=tuple(READ))


if __name__ == "__main__":
    main()
