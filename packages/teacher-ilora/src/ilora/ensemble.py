"""`teacher.student_mix=auto`: the teacher as an ensemble of its own scores and its student's.

A teacher with its own query (`residual_student_state=false`) and the student make different
errors; after training, the weight w of scores = teacher + w * student is chosen on the valid
split from a fixed grid (w = 0: the teacher alone), recorded in the checkpoint card, and used by
the test pass, the soft labels and the service. One LLM pass over valid serves every w.
"""

from __future__ import annotations

import logging

import torch

from recdata.batching import history_mask
from recdata.metrics import ranking_metrics, target_ranks
from sasrec.model import item_scores

log = logging.getLogger(__name__)
MIX_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


@torch.no_grad()
def valid_metric_by_mix(teacher, loader, num_items: int, *, metric: str, ks, mask_history: bool, device,
                        grid=MIX_GRID) -> dict[float, float]:  # fmt: skip
    """{w: valid ``metric`` of teacher + w * student} over ``grid``."""
    teacher.eval()
    own, student, targets, excluded = [], [], [], []
    for batch in loader:
        state, u = teacher.encode(batch["history"].to(device))
        own.append(teacher.scores_from_state(state, u, student_mix=0.0)[:, 0].cpu())
        student.append(item_scores(u[:, 0], teacher.student.item_table()).cpu())
        targets.append(batch["target"])
        excluded.append(history_mask(batch["full_history"], num_items, keep=batch["target"]) if mask_history else None)
    own, student, target = torch.cat(own), torch.cat(student), torch.cat(targets)
    exclude = torch.cat(excluded) if mask_history else None
    return {w: ranking_metrics(target_ranks(own + w * student, target, exclude), ks)[metric] for w in grid}


def choose_student_mix(teacher, loader, num_items: int, *, metric: str, ks, mask_history: bool, device) -> tuple[float, dict]:
    """Set ``teacher.config.student_mix`` to the grid's best weight on valid (the first of ties);
    returns (weight, {w: metric})."""
    by_mix = valid_metric_by_mix(teacher, loader, num_items, metric=metric, ks=ks, mask_history=mask_history,
                                 device=device)  # fmt: skip
    best = max(by_mix, key=lambda w: (by_mix[w], -w))
    teacher.config.student_mix = best
    log.info("student_mix chosen on valid (%s): %s -> %g", metric,
             "  ".join(f"{w:g}: {v:.4f}" for w, v in by_mix.items()), best)  # fmt: skip
    return best, by_mix
