"""Item-vector utilities shared by models of different packages."""

from __future__ import annotations

import torch


def standardise_rows(table: torch.Tensor) -> torch.Tensor:
    """Centre item vectors (row 0, padding, excluded and kept at zero) and scale them to unit mean
    norm. LLM title states share one dominant direction (mean cosine ~0.8 on SmolLM2); only the
    differences between items carry information."""
    table = table.detach().float().clone()
    centred = table[1:] - table[1:].mean(0, keepdim=True)
    table[1:] = centred / centred.norm(dim=1).mean().clamp(min=1e-8)
    table[0] = 0
    return table
