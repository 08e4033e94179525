"""`teacher.student_mix=auto`: the teacher as an ensemble of its own scores and its student's.

A teacher with its own query (`residual_student_state=false`) and the student make different
errors; after training, the weight w of scores = teacher + w * student is chosen on the valid
split from a grid (`teacher.student_mix_grid`; w = 0: the teacher alone), recorded in the
checkpoint card, and used by the test pass, the soft labels and the service. One LLM pass over
valid serves every w.
"""

from __future__ import annotations

import logging

import torch

from recdata.batching import history_mask
from runkit.metrics import ranking_metrics, target_ranks
from sasrec.model import item_scores

log = logging.getLogger(__name__)


def own_and_student_scores(teacher, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N+1) scores of the teacher alone (w = 0) and of its frozen student, at the last
    position."""
    state, u = teacher.encode(history)
    return teacher.scores_from_state(state, u, student_mix=0.0)[:, 0], item_scores(
        u[:, 0], teacher.student.item_table()
    )


def mix_grid(weights) -> tuple[float, ...]:
    """The configured weights as the sorted, distinct grid every mix function takes."""
    return tuple(sorted({float(w) for w in weights}))


def ranks_by_mix(own, student, target, exclude, grid) -> dict[float, torch.Tensor]:
    """{w: the target's rank under own + w * student} over ``grid``."""
    return {w: target_ranks(own + w * student, target, exclude) for w in grid}


@torch.no_grad()
def valid_metric_by_mix(
    teacher, loader, num_items: int, *, metric: str, ks, mask_history: bool, device, grid
) -> dict[float, float]:
    """{w: valid ``metric`` of teacher + w * student} over ``grid``, by one pass over ``loader``."""
    teacher.eval()
    own, student, targets, excluded = [], [], [], []
    for batch in loader:
        batch_own, batch_student = own_and_student_scores(teacher, batch["history"].to(device))
        own.append(batch_own.cpu())
        student.append(batch_student.cpu())
        targets.append(batch["target"])
        excluded.append(
            history_mask(batch["full_history"], num_items, keep=batch["target"])
            if mask_history
            else None
        )
    exclude = torch.cat(excluded) if mask_history else None
    ranks = ranks_by_mix(torch.cat(own), torch.cat(student), torch.cat(targets), exclude, grid)
    return {w: ranking_metrics(r, ks)[metric] for w, r in ranks.items()}


def choose_student_mix(
    teacher,
    loader,
    num_items: int,
    *,
    metric: str,
    ks,
    mask_history: bool,
    device,
    grid,
    by_mix: dict[float, float] | None = None,
) -> tuple[float, dict]:
    """Set ``teacher.config.student_mix`` to the grid's best weight on valid (the first of ties);
    returns (weight, {w: metric}). ``by_mix``: the figures the best checkpoint's own validation
    already measured (`TeacherModule` records them), else one pass over ``loader``."""
    if by_mix is None:
        by_mix = valid_metric_by_mix(
            teacher,
            loader,
            num_items,
            metric=metric,
            ks=ks,
            mask_history=mask_history,
            device=device,
            grid=grid,
        )
    best = max(by_mix, key=lambda w: (by_mix[w], -w))
    teacher.config.student_mix = best
    log.info(
        "student_mix chosen on valid (%s): %s -> %g",
        metric,
        "  ".join(f"{w:g}: {v:.4f}" for w, v in by_mix.items()),
        best,
    )
    if len(by_mix) > 1 and best == max(by_mix) > 0:
        log.warning(
            "student_mix %g is the largest of teacher.student_mix_grid: the teacher's own scores "
            "add little to its student's on valid; a wider grid may choose a larger weight",
            best,
        )
    return best, by_mix
