"""Where does a target rank under each part of a text-scoring teacher's score? (test split)

    uv run python -m bench.quality.score_parts RUN_DIR [RUN_DIR ...] [--twins RUN_DIR ...]

Each RUN_DIR is a finished `train-teacher` run with `teacher.text_scoring=true` (its config.yaml
names the data, its checkpoints/best the teacher), e.g. one per seed. The teacher's score of an
item is q . (ID row + P t) + w * student; this prints, per run and for the cold, tail and head
targets (and all), the median rank and HR@10 / HR@100 under: the whole mix, the teacher alone
(w = 0), the text part alone (q . P t, every item's ID row left out) and the student alone, with
the mean norm of the ID rows and of the text part. With `--twins` (one per run, e.g. the same
teachers with random LLM weights) it adds, per part and slice, the paired per-user difference
run - twin pooled over the pairs (each user's difference averaged over them first), mean ± SE.
It shows whether text can carry an item the ID table knows nothing of, how far the learnt ID rows
outweigh it, and how much of each part the pretrained LLM makes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from runkit.metrics import ndcg_per_sample

PARTS = ("mix", "teacher alone", "text part alone", "student alone")


def part_scores(teacher, history: torch.Tensor, text_rows: torch.Tensor) -> dict:
    """{part: (B, N+1) scores at the last position} for one batch of histories."""
    from sasrec.model import item_scores

    state, u = teacher.encode(history)
    student = item_scores(u[:, 0], teacher.student.item_table())
    alone = teacher.scores_from_state(state, u, student_mix=0.0)[:, 0]
    text = teacher.scores_from_state(state, u, student_mix=0.0, table=text_rows)[:, 0]
    student = student.index_fill(-1, torch.zeros(1, dtype=torch.long), -torch.inf)
    mix = alone + teacher.config.student_mix * student
    return dict(zip(PARTS, (mix, alone, text, student), strict=True))


def load_text_teacher(run: Path):
    """(the run's best teacher in eval mode, its datamodule); exits unless it scores with text."""
    from omegaconf import OmegaConf

    from ilora.checkpoint import load_teacher
    from ilora.train import teacher_config, teacher_datamodule

    cfg = OmegaConf.load(run / "config.yaml")
    config = teacher_config(cfg)
    dm = teacher_datamodule(cfg, config, Path(cfg.teacher.rec_model_checkpoint_path))
    teacher, _ = load_teacher(run / "checkpoints" / "best", dm.dataset)
    if teacher.text_projector is None:
        raise SystemExit(f"{run}: this teacher has no text part (teacher.text_scoring=false)")
    return teacher.eval(), dm


@torch.no_grad()
def text_table(teacher) -> torch.Tensor:
    """(N+1, H) the text part of every item's vector (P t)."""
    return teacher.text_projector(teacher.title_states)


def teacher_parts(teacher, table: torch.Tensor | None = None):
    """batch -> {part: (B, N+1) scores} of a text-scoring teacher (PARTS); ``table``: its
    text_table when the caller has it already."""
    table = text_table(teacher) if table is None else table
    return lambda batch: part_scores(teacher, batch["history"], table)


@torch.no_grad()
def scored_split(score_batch, dm, split: str, keep) -> tuple[dict, list[str]]:
    """Score one split with ``score_batch(batch)`` ({name: (B, N+1) scores}) and keep what
    ``keep(scores, exclude, batch)`` returns ({name: (B, ...) tensor}) -> ({name: (S, ...)},
    target groups), samples in (user, position) order so that runs on the same data pair up.
    ``exclude``: the user's history (not ranked)."""
    from recdata.batching import history_mask
    from recdata.slices import ITEM_GROUPS
    from runkit.evaluation import sample_order

    kept, groups, keys = {}, [], []
    for batch in dm.loader(split):
        exclude = history_mask(batch["full_history"], dm.num_items, keep=batch["target"])
        parts = score_batch(batch)
        for name, value in keep(parts, exclude, batch).items():
            kept.setdefault(name, []).append(value)
        groups += [ITEM_GROUPS[g] for g in dm.slices.item_group[batch["target"].numpy()]]
        keys.append(torch.stack([batch["user_id"], batch["position"]], 1))
    order = sample_order(torch.cat(keys))
    return {n: torch.cat(v)[order] for n, v in kept.items()}, [groups[i] for i in order]


def ranks_by_part(run: Path):
    """(ranks {part: (S,)}, target groups (S,), norms) over the run's test split, samples in
    (user, position) order."""
    from runkit.metrics import target_ranks

    teacher, dm = load_text_teacher(run)

    def ranks(parts, exclude, batch):  # 0-based
        return {p: target_ranks(s, batch["target"], exclude).float() for p, s in parts.items()}

    table = text_table(teacher)
    by_part, groups = scored_split(teacher_parts(teacher, table), dm, "test", ranks)
    seen = torch.ones(dm.num_items + 1, dtype=torch.bool)
    if dm.held_out_items is not None:
        seen &= ~dm.held_out_items
    seen[0] = False
    norms = {
        "ID rows (seen items)": teacher.item_table[seen].norm(dim=1).mean().item(),
        "text part (all items)": table[1:].norm(dim=1).mean().item(),
    }
    return by_part, groups, norms


# per-sample metrics of 0-based target ranks (runkit.metrics' convention)
METRICS = {
    "NDCG@10": lambda r: ndcg_per_sample(r, 10),
    "HR@10": lambda r: (r < 10).double(),
    "HR@100": lambda r: (r < 100).double(),
}


def print_parts(run: Path, ranks: dict, groups: list[str], norms: dict) -> None:
    print(f"\n{run}: " + ", ".join(f"mean norm of the {k} {v:.3f}" for k, v in norms.items()))
    names = ["all", *sorted(set(groups))]
    counts = [f"{g} (n={sample_mask(groups, g).sum()})" for g in names]
    print("\n| part | " + " | ".join(counts) + " |")
    print("|:--|" + "--:|" * len(names))
    for part, rank in ranks.items():
        cells = []
        for g in names:
            r = rank[sample_mask(groups, g)]
            cells.append(
                f"median {r.median() + 1:.0f}, HR@10 {METRICS['HR@10'](r).mean():.3f}, "
                f"HR@100 {METRICS['HR@100'](r).mean():.3f}"
            )
        print(f"| {part} | " + " | ".join(cells) + " |")


def print_against_twins(
    runs: list, twins: list, groups: list[str], parts: tuple[str, ...] = PARTS
) -> None:
    """Per part and slice: run - twin, paired per user, pooled over the pairs."""
    from compare.stats import paired_difference

    names = ["all", *sorted(set(groups))]
    for metric, per_sample in METRICS.items():
        print(f"\n{metric}: run - twin, pooled over {len(runs)} pair(s), mean ± SE (* beyond 2 SE)")
        print("\n| part | " + " | ".join(names) + " |")
        print("|:--|" + "--:|" * len(names))
        for part in parts:
            cells = []
            for g in names:
                keep = sample_mask(groups, g)
                diff = paired_difference(
                    [per_sample(t[part][keep]).numpy() for t in twins],
                    [per_sample(r[part][keep]).numpy() for r in runs],
                )
                star = "*" if diff.significant() else ""
                cells.append(f"{diff.mean:+.4f} ± {diff.se:.4f}{star}")
            print(f"| {part} | " + " | ".join(cells) + " |")


def sample_mask(groups: list[str], group: str) -> torch.Tensor:
    """(S,) bool: the samples in ``group`` ("all": every sample)."""
    return torch.tensor([group in ("all", x) for x in groups])


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality.score_parts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", type=Path, nargs="+", help="finished train-teacher run dirs")
    parser.add_argument("--twins", type=Path, nargs="*", default=[], help="one twin per run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.twins and len(args.twins) != len(args.runs):
        parser.error(f"--twins needs one run per run: {len(args.runs)}, got {len(args.twins)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    measured = {}
    for run in [*args.runs, *args.twins]:
        ranks, groups, norms = ranks_by_part(run)
        print_parts(run, ranks, groups, norms)
        measured[run] = ranks, groups
    first_groups = measured[args.runs[0]][1]
    if any(g != first_groups for _, g in measured.values()):
        raise SystemExit("the runs do not share their test samples and slices (same data?)")
    if args.twins:
        print_against_twins(
            [measured[r][0] for r in args.runs], [measured[t][0] for t in args.twins], first_groups
        )


if __name__ == "__main__":
    main()
