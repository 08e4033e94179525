"""Which device a process runs on, from the trainer config (before any model is built)."""

from __future__ import annotations

import os

import torch


def resolve_device(accelerator: str, devices="auto", local_rank: int | None = None) -> str:
    """The device this process will run on, known before an LLM is loaded (its dtype and the
    title states computed at build time depend on it). Each DDP process is one rank (LOCAL_RANK,
    set by Lightning's launcher and by torchrun): loading every rank's LLM on cuda:0 first would
    put one copy per rank on that GPU."""
    if not (
        accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    ):
        return "cpu"
    rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    ids = _device_ids(devices)
    return f"cuda:{ids[rank] if ids else rank}"


def _device_ids(devices) -> list[int] | None:
    """Explicit GPU ids of Lightning's `devices` ([2, 3] or "2,3"); None for a count or "auto",
    which Lightning maps to the first GPUs in rank order."""
    if isinstance(devices, str) and "," in devices:
        return [int(d) for d in devices.split(",") if d.strip()]
    if isinstance(devices, int | str):
        return None
    return [int(d) for d in devices]
