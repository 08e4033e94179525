"""Would a text-only channel put never-seen items in a top 10? (a measurement, not a feature)

    uv run python -m bench.quality.cold_channel RUN_DIR [RUN_DIR ...] [--threads N]

Each RUN_DIR is a finished `train-teacher` run with `teacher.text_scoring=true` under the cold-item
protocol (`dataset.cold_items`), e.g. one per seed. In the channel, a cold item is scored by the
teacher's text part alone (q . P t) plus one offset b, every other item by the teacher's usual
output (the mix); b is chosen on valid by overall NDCG@10 (the plain mix is one of the choices),
then read once on test. Printed per run: valid NDCG@10 and HR@10 (cold / warm targets) at some of
the offsets, the chosen one; then, pooled over the runs, channel - mix per slice (NDCG@10, HR@10,
HR@100), paired per user, mean ± SE. It measures
what ranking cold items by their text in a channel of their own would give, before building it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.quality.score_parts import (
    METRICS,
    load_text_teacher,
    print_against_twins,
    sample_mask,
    scored_split,
)

# candidate offsets: b puts the median cold item's text score at these quantiles of the mix scores
QUANTILES = torch.linspace(0.5, 0.9995, 40)


def split_scores(teacher, dm, split: str) -> tuple[dict, list[str]]:
    """({mix, text (S, N+1), targets, exclude (the history)}, target groups) over one split."""

    def keep(parts, exclude, batch):
        return {
            "mix": parts["mix"],
            "text": parts["text part alone"],
            "targets": batch["target"],
            "exclude": exclude,
        }

    return scored_split(teacher, dm, split, keep)


def channel_ranks(scores: dict, cold: torch.Tensor, offset: float | None) -> torch.Tensor:
    """0-based target ranks with cold items scored text + offset (None: the plain mix)."""
    from runkit.metrics import target_ranks

    mixed = scores["mix"]
    if offset is not None:
        mixed = torch.where(cold, scores["text"] + offset, mixed)
    return target_ranks(mixed, scores["targets"], scores["exclude"]).float()


def offsets(scores: dict, cold: torch.Tensor) -> list[float]:
    """Candidate b: the median cold item's text score moved to each of QUANTILES of the mix."""
    generator = torch.Generator().manual_seed(0)
    finite = scores["mix"][~scores["exclude"] & ~cold & scores["mix"].isfinite()]
    sample = finite[torch.randint(len(finite), (min(len(finite), 1_000_000),), generator=generator)]
    levels = torch.quantile(sample, QUANTILES)
    return (levels - scores["text"][:, cold].median()).tolist()


def measure(run: Path) -> tuple[dict, list[str]]:
    """({part: test ranks} for the plain mix and the channel at the valid-chosen b, groups)."""
    teacher, dm = load_text_teacher(run)
    if dm.held_out_items is None:
        raise SystemExit(f"{run}: not a cold-item run (dataset.cold_items is none)")
    cold = dm.held_out_items.clone()
    cold[0] = False
    valid, _ = split_scores(teacher, dm, "valid")
    ndcg = METRICS["NDCG@10"]
    cold_targets = cold[valid["targets"]]
    choices = {None: ndcg(channel_ranks(valid, cold, None)).mean().item()}
    trade_off = []
    for q, b in zip(QUANTILES.tolist(), offsets(valid, cold), strict=True):
        ranks = channel_ranks(valid, cold, b)
        choices[b] = ndcg(ranks).mean().item()
        hr = METRICS["HR@10"](ranks)
        trade_off.append(
            f"q {q:.3f}: NDCG@10 {choices[b]:.4f}, HR@10 cold {hr[cold_targets].mean():.3f} "
            f"warm {hr[~cold_targets].mean():.3f}"
        )
    print(f"{run} valid, the channel by offset quantile: " + "; ".join(trade_off[::6]))
    best = max(choices, key=choices.get)
    offset_only = max((b for b in choices if b is not None), key=choices.get)
    print(
        f"{run}: valid NDCG@10 of the mix {choices[None]:.4f}, of the channel at its best offset "
        f"{choices[offset_only]:.4f} (b = {offset_only:.3f}); chosen: "
        + ("the mix" if best is None else "the channel"),
        flush=True,
    )
    del valid
    test, groups = split_scores(teacher, dm, "test")
    ranks = {"mix": channel_ranks(test, cold, None), "channel": channel_ranks(test, cold, best)}
    return ranks, groups


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality.cold_channel", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", type=Path, nargs="+", help="finished cold-protocol teacher runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    measured = [measure(run) for run in args.runs]
    groups = measured[0][1]
    if any(g != groups for _, g in measured):
        raise SystemExit("the runs do not share their test samples and slices (same data?)")
    for name in ("mix", "channel"):
        cells = []
        for g in ["all", *sorted(set(groups))]:
            keep = sample_mask(groups, g)
            rank = torch.cat([r[name][keep] for r, _ in measured])
            values = ", ".join(f"{m} {f(rank).mean():.4f}" for m, f in METRICS.items())
            cells.append(f"{g}: {values}")
        print(f"\n{name} (test, over {len(measured)} run(s)): " + " | ".join(cells))
    print("\nchannel - mix:")
    print_against_twins(
        [{"channel": r["channel"]} for r, _ in measured],
        [{"channel": r["mix"]} for r, _ in measured],
        groups,
        parts=("channel",),
    )


if __name__ == "__main__":
    main()
