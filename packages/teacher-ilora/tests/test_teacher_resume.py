"""A teacher run killed mid-training and resumed ends exactly as an uninterrupted one (its
last.ckpt holds only the trained tensors; the frozen LLM and student are rebuilt; the
imitation decay spans the whole run either way)."""

import json

import torch

from ilora import train
from ilora.testing import tiny_teacher_overrides
from runkit.checkpoint import load_checkpoint
from runkit.testing import kill_after_first_epoch, run_cli, tiny_run_overrides


def test_killed_teacher_resumes_to_the_uninterrupted_result(tiny_pipeline, tmp_path, one_thread):
    overrides = [
        *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
        "train.max_steps=-1",
        "train.max_epochs=2",
        "train.patience=2",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    kill_after_first_epoch(
        train.main,
        tiny_run_overrides(tiny_pipeline["data"], killed, *overrides),
        killed,
        tmp_path / "killed.out",
    )
    run_cli(train.main, [f"train.resume={killed}", f"hydra.run.dir={tmp_path / 'again'}"])
    run_cli(train.main, tiny_run_overrides(tiny_pipeline["data"], full, *overrides))
    metrics = [json.loads((d / "test_metrics.json").read_text())["metrics"] for d in (full, killed)]
    assert metrics[0] == metrics[1]
    a, b = (
        load_checkpoint(d / "checkpoints" / "best", kinds="ilora-teacher") for d in (full, killed)
    )
    assert a.card["metrics"]["epoch"] == b.card["metrics"]["epoch"]
    for name in a.tensors:
        torch.testing.assert_close(a.tensors[name], b.tensors[name], rtol=0, atol=0, msg=name)
