"""bench.speed.service's restart measurement (issue 23): with a sequence-mode teacher (the
default; the tiny pipeline's teacher is one) the fetch goes through /topk_windows, and the server
is still SIGKILLed a third of the way through the fetch, restarted on the same port, and the
fetch ends with nothing lost and labels bitwise equal to an uninterrupted fetch. (The measurement
counted /topk calls only: with this teacher the kill never happened and it crashed.)"""

from __future__ import annotations

import importlib
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
K, BATCH, MAX_SEQ_LEN = 5, 1, 16  # MAX_SEQ_LEN: student.max_seq_len of tiny_run_overrides


@pytest.fixture
def bench_service(monkeypatch):
    """bench.speed.service, imported as `python -m` from the repository root imports it (pytest
    does not put the root, where `bench` is a package, on sys.path)."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.speed.service")


def test_a_sequence_mode_teacher_is_killed_and_restarted_mid_fetch(
    bench_service, teacher_service, tiny_pipeline
):
    from distill.precompute import training_keys
    from distill.teacher_client import fetch_soft_labels
    from recdata.datamodule import SequentialDataModule

    dm = SequentialDataModule(tiny_pipeline["data"], max_seq_len=MAX_SEQ_LEN)
    dm.setup()
    keys = training_keys(dm, "all")
    uninterrupted = fetch_soft_labels(teacher_service.url, dm, keys, k=K, batch_size=BATCH)

    report = bench_service.fetch_with_restart(
        teacher_service, dm, keys, k=K, batch_size=BATCH, reference=uninterrupted, retry_budget=120
    )

    assert report.endpoint == "/topk_windows"  # the sequence-mode teacher's endpoint
    # a third of the way: mid-fetch
    assert 1 < report.kill_at <= report.calls // 3 + 1 < report.calls
    assert report.port_free_s is not None and report.port_free_s < 10
    assert report.restart_s > 0 and report.resumed_s > 0
    assert report.sent > report.calls  # the call sent into the kill was retried
    assert report.lost == 0 and len(report.labels.user_ids) == len(keys)
    assert report.equal  # bitwise equal to the uninterrupted fetch
    # left running for the session
    assert httpx.get(f"{teacher_service.url}/readyz", timeout=10).status_code == 200
