"""Where does a target rank under each part of a text-scoring teacher's score? (test split)

    uv run python -m bench.quality.score_parts RUN_DIR [--threads 1]

RUN_DIR is a finished `train-teacher` run with `teacher.text_scoring=true` (its config.yaml names
the data, its checkpoints/best the teacher). The teacher's score of an item is
q . (ID row + P t) + w * student; this prints, for the cold, tail and head targets (and all), the
median rank and HR@10 / HR@100 under: the whole mix, the teacher alone (w = 0), the text part
alone (q . P t, every item's ID row left out) and the student alone, with the mean norm of the ID
rows and of the text part. It shows whether text can carry an item the ID table knows nothing of,
and how far the learnt ID rows outweigh it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

PARTS = ("mix", "teacher alone", "text part alone", "student alone")


def part_scores(teacher, history: torch.Tensor, text_table: torch.Tensor) -> dict:
    """{part: (B, N+1) scores at the last position} for one batch of histories."""
    from sasrec.model import item_scores

    state, u = teacher.encode(history)
    student = item_scores(u[:, 0], teacher.student.item_table())
    alone = teacher.scores_from_state(state, u, student_mix=0.0)[:, 0]
    text = teacher.scores_from_state(state, u, student_mix=0.0, table=text_table)[:, 0]
    student = student.index_fill(-1, torch.zeros(1, dtype=torch.long), -torch.inf)
    mix = alone + teacher.config.student_mix * student
    return dict(zip(PARTS, (mix, alone, text, student), strict=True))


@torch.no_grad()
def ranks_by_part(run: Path):
    """(ranks {part: (S,)}, target groups (S,), norms) over the run's test split."""
    from omegaconf import OmegaConf

    from ilora.checkpoint import load_teacher
    from ilora.train import teacher_config, teacher_datamodule
    from recdata.batching import history_mask
    from recdata.slices import ITEM_GROUPS
    from runkit.metrics import target_ranks

    cfg = OmegaConf.load(run / "config.yaml")
    config = teacher_config(cfg)
    student = Path(cfg.teacher.rec_model_checkpoint_path)
    dm = teacher_datamodule(cfg, config, student)
    teacher, _ = load_teacher(run / "checkpoints" / "best", dm.dataset)
    if teacher.text_projector is None:
        raise SystemExit(f"{run}: this teacher has no text part (teacher.text_scoring=false)")
    teacher.eval()
    text_table = teacher.text_projector(teacher.title_states)
    ranks = {part: [] for part in PARTS}
    groups = []
    for batch in dm.test_dataloader():
        exclude = history_mask(batch["full_history"], dm.num_items, keep=batch["target"])
        for part, scores in part_scores(teacher, batch["history"], text_table).items():
            # target_ranks is 0-based: 1-based here, as the predictions files are
            ranks[part].append(target_ranks(scores, batch["target"], exclude) + 1)
        groups += [ITEM_GROUPS[g] for g in dm.slices.item_group[batch["target"].numpy()]]
    seen = torch.ones(dm.num_items + 1, dtype=torch.bool)
    if dm.held_out_items is not None:
        seen &= ~dm.held_out_items
    seen[0] = False
    norms = {
        "ID rows (seen items)": teacher.item_table[seen].norm(dim=1).mean().item(),
        "text part (all items)": text_table[1:].norm(dim=1).mean().item(),
    }
    return {p: torch.cat(r).float() for p, r in ranks.items()}, groups, norms


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality.score_parts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", type=Path, help="a finished train-teacher run directory")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ranks, groups, norms = ranks_by_part(args.run)
    print(", ".join(f"mean norm of the {k}: {v:.3f}" for k, v in norms.items()))
    names = ["all", *sorted(set(groups))]
    print("\n| part | " + " | ".join(f"{g} (n={_count(groups, g)})" for g in names) + " |")
    print("|:--|" + "--:|" * len(names))
    for part, rank in ranks.items():
        cells = []
        for g in names:
            r = rank if g == "all" else rank[torch.tensor([x == g for x in groups])]
            cells.append(
                f"median {r.median():.0f}, HR@10 {(r <= 10).float().mean():.3f}, "
                f"HR@100 {(r <= 100).float().mean():.3f}"
            )
        print(f"| {part} | " + " | ".join(cells) + " |")


def _count(groups: list[str], group: str) -> int:
    return len(groups) if group == "all" else groups.count(group)


if __name__ == "__main__":
    main()
