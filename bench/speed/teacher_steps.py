"""One teacher training step and one scoring pass on a fixed window batch, for the speed benches
(bench.speed.teacher on the CPU, bench.gpu.bench on a GPU): prefix mode on one prompt per window
(its newest prefix, the last 10 items shown), sequence mode on the whole windows."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

PREFIX_ITEMS = 10  # teacher.max_history: what a prefix prompt shows


def step_functions(teacher, history: torch.Tensor, targets: torch.Tensor, precision=nullcontext):
    """(train_step, score) closures; ``precision()`` wraps the forward (e.g. bf16 autocast)."""
    prefix = not teacher.sequence_mode
    inputs = history[:, -PREFIX_ITEMS:] if prefix else history
    optimizer = torch.optim.AdamW([p for p in teacher.parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        teacher.train()
        with precision():
            if prefix:
                scores, kept = teacher(inputs), targets.amax(1)
            else:
                scores, kept = teacher.training_scores({"history": inputs, "targets": targets})
            loss = nn.functional.cross_entropy(scores, kept)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def score():
        teacher.eval()
        with precision():
            teacher(inputs) if prefix else teacher.score_all_positions(inputs)

    return train_step, score
