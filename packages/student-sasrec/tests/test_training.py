"""The student's run: learns, checkpoints, resumes, refuses other data, writes its files."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recdata.datamodule import SequentialDataModule
from runkit.checkpoint import CheckpointError, load_checkpoint
from runkit.metrics import ranking_metrics
from runkit.testing import run_cli, tiny_run_overrides
from sasrec.module import load_sasrec
from sasrec.train import main


@pytest.fixture(scope="module")
def trained(cyclic_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "overfit"
    run_cli(
        main, tiny_run_overrides(cyclic_data, run_dir, "train.max_epochs=40", "train.patience=40")
    )
    return run_dir


def test_tiny_run_overfits_to_hr_at_1(trained):
    metrics = json.loads((trained / "test_metrics.json").read_text())
    assert metrics["model"] == "sasrec" and metrics["split"] == "test"
    assert metrics["metrics"]["hr@1"] == 1.0
    assert metrics["protocol"]["full_ranking"]["mask_history"] is False
    assert set(metrics["metrics_unmasked"]) == set(metrics["metrics"])


def test_run_directory_layout(trained):
    for rel in (
        "config.yaml",
        "checkpoints/best/card.json",
        "checkpoints/best/model.safetensors",
        "checkpoints/last/card.json",
        "checkpoints/last.ckpt",
        "test_metrics.txt",
        "test_predictions.parquet",
        "run_complete.json",
    ):
        assert (trained / rel).exists(), rel
    assert any((trained / "tensorboard").rglob("events.out.tfevents*"))


def test_predictions_recompute_the_metrics(trained):
    table = pq.read_table(trained / "test_predictions.parquet").to_pydict()
    ranks = torch.tensor(table["rank"]) - 1
    reported = json.loads((trained / "test_metrics.json").read_text())["metrics"]
    recomputed = ranking_metrics(ranks, (1, 5))
    assert recomputed == pytest.approx({k: reported[k] for k in recomputed})
    assert all(top[0] == t for top, t in zip(table["topk_items"], table["target"], strict=True))


def test_checkpoint_round_trip_gives_identical_scores(trained, cyclic_data):
    dm = SequentialDataModule(cyclic_data, max_seq_len=16, num_candidates=0)
    dm.setup()
    model, card = load_sasrec(
        trained / "checkpoints/best", fingerprint=dm.fingerprint, num_items=dm.num_items
    )
    assert card["kind"] == "sasrec" and card["metrics"]["test"]["hr@1"] == 1.0
    batch = next(iter(dm.loader("test")))
    again, _ = load_sasrec(trained / "checkpoints/best")
    torch.testing.assert_close(
        model.score(batch["history"]), again.score(batch["history"]), rtol=0, atol=0
    )
    assert (model.score(batch["history"]).argmax(1) == batch["target"]).all()


def test_checkpoint_from_other_data_is_refused(trained):
    with pytest.raises(CheckpointError, match="built on other data"):
        load_sasrec(trained / "checkpoints/best", fingerprint="0" * 64)
    with pytest.raises(CheckpointError, match="scores 40 items; the dataset has 99"):
        load_checkpoint(trained / "checkpoints/best", kinds="sasrec", num_items=99)
    with pytest.raises(CheckpointError, match="expected ilora-teacher"):
        load_checkpoint(trained / "checkpoints/best", kinds="ilora-teacher")


def test_a_finished_run_resumed_with_more_epochs_matches_a_longer_run(cyclic_data, tmp_path):
    common = ["train.patience=10", "student.dropout=0.2", "train.lr=0.003"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_cli(main, tiny_run_overrides(cyclic_data, full, "train.max_epochs=4", *common))
    run_cli(main, tiny_run_overrides(cyclic_data, part, "train.max_epochs=2", *common))
    # only the override: every other setting comes from the run's own config.yaml
    run_cli(
        main, [f"train.resume={part}", "train.max_epochs=4", f"hydra.run.dir={tmp_path / 'resume'}"]
    )
    a = json.loads((full / "test_metrics.json").read_text())["metrics"]
    b = json.loads((part / "test_metrics.json").read_text())["metrics"]
    assert a == b
    wa = load_checkpoint(full / "checkpoints/last", kinds="sasrec").tensors
    wb = load_checkpoint(part / "checkpoints/last", kinds="sasrec").tensors
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6)
    assert not (tmp_path / "resume").exists()  # the resumed run wrote into its own directory
    assert yaml.safe_load((part / "config.yaml").read_text())["train"]["max_epochs"] == 4


@pytest.mark.ddp
def test_ddp_on_cpu_with_two_gloo_processes(cyclic_data, tmp_path):
    run_dir = tmp_path / "ddp"
    overrides = tiny_run_overrides(
        cyclic_data, run_dir, "train.max_epochs=2", "trainer.devices=2", "trainer.strategy=ddp"
    )
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sasrec.train", *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"run_dir: {run_dir}"
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert metrics["model"] == "sasrec" and set(metrics["metrics"]) == {
        "hr@1",
        "ndcg@1",
        "hr@5",
        "ndcg@5",
        "hr@1_of_20",
    }
    assert metrics["protocol"]["num_samples"] == 10
