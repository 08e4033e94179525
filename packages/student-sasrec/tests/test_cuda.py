"""The student on a real CUDA device (skipped without one; bench/gpu_check.sh runs them): where
Lightning leaves the module, a bf16-mixed run validated and tested on the GPU, DDP on one GPU."""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch

from recdata.datamodule import SequentialDataModule
from runkit import recipe
from runkit.testing import run_cli, tiny_run_overrides
from sasrec.model import SASRecConfig
from sasrec.module import SASRecModule
from sasrec.train import main

pytestmark = pytest.mark.cuda
GPU = ["trainer.accelerator=gpu", "trainer.devices=1"]


def test_lightning_leaves_the_module_on_the_cpu_after_fit_on_the_gpu(cyclic_data):
    """Why the run's test pass asks the trainer for its device: `module.device` after fit is the
    CPU."""
    dm = SequentialDataModule(cyclic_data, max_seq_len=16, num_candidates=0)
    dm.setup()
    module = SASRecModule(
        SASRecConfig(
            num_items=dm.num_items, hidden_size=8, num_blocks=1, num_heads=1, max_seq_len=16
        )
    )
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=dm)
    assert module.device.type == "cpu"
    assert recipe.training_device(trainer).type == "cuda"


def test_a_bf16_mixed_run_validates_and_tests_on_the_gpu(cyclic_data, tmp_path, monkeypatch):
    seen, phase = [], {"now": "fit"}
    score, evaluate = SASRecModule.score, recipe.evaluate

    def spy_score(self, batch):
        seen.append(
            (
                phase["now"],
                batch["history"].device.type,
                self.device.type,
                torch.is_autocast_enabled("cuda"),
            )
        )
        return score(self, batch)

    def spy_evaluate(*args, **kwargs):
        phase["now"] = "test"
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(SASRecModule, "score", spy_score)
    monkeypatch.setattr(recipe, "evaluate", spy_evaluate)
    run = tmp_path / "run"
    run_cli(
        main,
        tiny_run_overrides(
            cyclic_data,
            run,
            "train.max_epochs=40",
            "train.patience=40",
            *GPU,
            "trainer.precision=bf16-mixed",
        ),
    )
    assert {s[0] for s in seen} == {"fit", "test"}
    assert {s[1:] for s in seen} == {("cuda", "cuda", True)}
    # 1.0 on the CPU in fp32
    assert json.loads((run / "test_metrics.json").read_text())["metrics"]["hr@1"] >= 0.9


def test_two_ddp_steps_on_one_gpu(cyclic_data, tmp_path):
    run = tmp_path / "ddp"
    overrides = tiny_run_overrides(
        cyclic_data,
        run,
        *GPU,
        "trainer.strategy=ddp",
        "trainer.precision=bf16-mixed",
        "train.max_steps=2",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "sasrec.train", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"run_dir: {run}"
    assert (
        json.loads((run / "checkpoints" / "last" / "card.json").read_text())["metrics"][
            "global_step"
        ]
        == 2
    )
