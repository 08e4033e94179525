"""Where a run's last steps happen: on the device training used, whatever device Lightning's
teardown left the module on (it moves the module to the CPU after every fit/validate, so on a GPU
`module.device` is the CPU by then). On this CPU the accelerator is faked as the `meta` device."""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins.precision import Precision
from omegaconf import OmegaConf

from recdata.datamodule import SequentialDataModule
from runkit import recipe
from runkit.testing import run_cli, tiny_run_overrides
from sasrec.model import SASRecConfig
from sasrec.module import SASRecModule
from sasrec.train import main

FAKE_ACCELERATOR = torch.device("meta")


class RecordingPrecision(Precision):
    """The trainer's precision plugin, counting the test-step contexts it opened."""

    entered = 0

    @contextmanager
    def test_step_context(self):
        self.entered += 1
        yield


def fake_trainer(device: torch.device) -> SimpleNamespace:
    return SimpleNamespace(
        strategy=SimpleNamespace(root_device=device), precision_plugin=RecordingPrecision()
    )


def test_training_device_is_the_strategys_root_device():
    assert recipe.training_device(fake_trainer(FAKE_ACCELERATOR)) == FAKE_ACCELERATOR


def test_test_pass_runs_on_the_training_device_under_its_precision(cyclic_data):
    dm = SequentialDataModule(cyclic_data, max_seq_len=16, num_candidates=0)
    dm.setup()
    module = SASRecModule(
        SASRecConfig(
            num_items=dm.num_items, hidden_size=8, num_blocks=1, num_heads=1, max_seq_len=16
        )
    )
    assert module.device.type == "cpu"  # where Lightning's teardown leaves it
    seen = []

    def score(batch):
        seen.append((batch["history"].device, module.device, module.training))
        return torch.randn(len(batch["history"]), dm.num_items + 1)

    module.score = score
    cfg = OmegaConf.create(
        {
            "eval": {"ks": [1, 5], "mask_history": False, "num_candidates": 0, "candidate_seed": 0},
            "trainer": {"enable_progress_bar": False},
        }
    )
    trainer = fake_trainer(FAKE_ACCELERATOR)
    result = recipe.test_best(cfg, module, dm, trainer)
    assert seen and all(s == (FAKE_ACCELERATOR, FAKE_ACCELERATOR, False) for s in seen)
    assert trainer.precision_plugin.entered == len(seen)
    assert result.protocol["num_samples"] == len(dm.keys["test"])


def test_run_moves_the_module_to_the_training_device_before_the_best_weights_and_the_test(
    cyclic_data, tmp_path, monkeypatch
):
    """After fit (on the CPU here, teardown included), the run puts the module on the training
    device before it loads the best weights, so finalize_best and the test pass run there."""
    devices = []

    def load_best(module, best_dir):
        devices.append(module.device)
        raise RuntimeError("stop here")  # the weights are not on the fake device

    monkeypatch.setattr(recipe, "training_device", lambda trainer: FAKE_ACCELERATOR)
    monkeypatch.setattr(recipe, "load_best", load_best)
    with pytest.raises(SystemExit):  # Hydra reports the error and exits
        run_cli(main, tiny_run_overrides(cyclic_data, tmp_path / "run", "train.max_epochs=1"))
    assert devices == [FAKE_ACCELERATOR]
