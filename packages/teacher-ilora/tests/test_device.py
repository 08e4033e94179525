"""The device the teacher's LLM is loaded on, decided before Lightning starts (the dtype and the
title states computed at build time depend on it): each DDP rank loads onto its own GPU."""

import pytest
import torch

from runkit.device import resolve_device


def test_cpu_unless_a_gpu_is_asked_for_or_auto_finds_one(monkeypatch):
    assert resolve_device("cpu", 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", 1, local_rank=0) == "cuda:0"


@pytest.mark.parametrize(
    ("devices", "local_rank", "expected"),
    [
        (1, 0, "cuda:0"),
        (4, 2, "cuda:2"),
        ("auto", 3, "cuda:3"),
        (-1, 1, "cuda:1"),
        ([2, 3], 0, "cuda:2"),
        ([2, 3], 1, "cuda:3"),
        ("1,", 0, "cuda:1"),
        ("0,2", 1, "cuda:2"),
    ],
)
def test_each_rank_loads_on_the_gpu_lightning_gives_it(devices, local_rank, expected):
    assert resolve_device("gpu", devices, local_rank=local_rank) == expected


def test_the_rank_comes_from_local_rank_as_lightning_and_torchrun_set_it(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda", 2) == "cuda:0"  # the launching process is rank 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda", 2) == "cuda:1"
    assert resolve_device("cuda", [4, 6]) == "cuda:6"
