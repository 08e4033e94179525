"""How a run is recorded and resumed, through the student trainer (the recipe and entry point
every trainer shares): real kills of child processes, runs started at once, multirun, and
commands that fail with one line and leave no run directory behind."""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from runkit.checkpoint import load_checkpoint
from runkit.runs import COMPLETE_FILE
from runkit.testing import fork_cli, run_cli, tiny_run_overrides
from sasrec.train import main

RUN_NAME = re.compile(r"^(result|multirun)_\d{8}_\d{6}_\d+$")


def default_dir_overrides(data: Path, results: Path, *extra: str) -> list[str]:
    """The tiny-run overrides with Hydra's own run directory (result_<ts> under `results`)."""
    return [
        o
        for o in tiny_run_overrides(data, results / "unused", *extra)
        if not o.startswith("hydra.run.dir=")
    ]


def take_names(results: Path, prefix: str, seconds: int = 120) -> set[str]:
    """Create result_<ts> names for the coming seconds, so every run here collides with one."""
    now = time.time()
    names = {
        f"{prefix}_{time.strftime('%Y%m%d_%H%M%S', time.localtime(now + s))}"
        for s in range(-1, seconds)
    }
    for name in names:
        (results / name).mkdir(parents=True, exist_ok=True)
    return names


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "test_metrics.json").read_text())["metrics"]


def assert_same_weights(a: Path, b: Path) -> None:
    for which in ("best", "last"):
        wa = load_checkpoint(a / "checkpoints" / which, kinds="sasrec").tensors
        wb = load_checkpoint(b / "checkpoints" / which, kinds="sasrec").tensors
        for name in wa:
            torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=0, msg=f"{which}/{name}")


def test_runs_started_at_once_get_own_dirs_and_a_killed_one_resumes_to_the_same_result(
    cyclic_data, tmp_path, one_thread
):
    """Two identical runs start in the same second; one is SIGKILLed as soon as its first
    epoch's resume checkpoint exists and is resumed; it must end exactly as the other."""
    results = tmp_path / "result"
    taken = take_names(results, "result")
    overrides = default_dir_overrides(
        cyclic_data,
        results,
        "train.max_epochs=6",
        "train.patience=6",
        "student.dropout=0.2",
        "train.lr=0.003",
    )
    # the victim differs only in how often it logs, so its directory can be told apart
    victim = fork_cli(main, [*overrides, "trainer.log_every_n_steps=3"], tmp_path / "victim.out")
    survivor = fork_cli(main, overrides, tmp_path / "survivor.out")
    deadline, victim_dir = time.monotonic() + 240, None
    while victim_dir is None and time.monotonic() < deadline and victim.is_alive():
        for d in (d for d in results.iterdir() if d.name not in taken):
            if (d / "checkpoints" / "last.ckpt").is_file() and "log_every_n_steps: 3" in (
                d / "config.yaml"
            ).read_text():
                os.kill(victim.pid, signal.SIGKILL)
                victim_dir = d
        time.sleep(0.01)
    victim.join(timeout=60), survivor.join(timeout=240)
    assert victim.exitcode == -signal.SIGKILL, (tmp_path / "victim.out").read_text()[-3000:]
    assert survivor.exitcode == 0, (tmp_path / "survivor.out").read_text()[-3000:]

    announced = [
        ln
        for ln in (tmp_path / "survivor.out").read_text().splitlines()
        if ln.startswith("run_dir: ")
    ]
    survivor_dir = Path(announced[-1].removeprefix("run_dir: "))
    # the first run to claim a directory may be either process
    assert {d.name for d in results.iterdir()} - taken == {victim_dir.name, survivor_dir.name}
    assert victim_dir != survivor_dir and all(
        RUN_NAME.match(d.name) for d in (victim_dir, survivor_dir)
    )
    for run_dir in (victim_dir, survivor_dir):  # no interleaved logs: one first epoch per log
        assert (run_dir / "train.log").read_text().count("epoch 0 step") == 1
    assert (
        not (victim_dir / COMPLETE_FILE).exists()
        and not (victim_dir / "test_metrics.json").exists()
    )
    # whole, mid-run
    assert torch.load(victim_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] < 5

    # resume with nothing but the run: every other setting comes from its own config.yaml
    run_cli(main, [f"train.resume={victim_dir}", f"hydra.run.dir={tmp_path / 'resume-invocation'}"])
    assert metrics(victim_dir) == metrics(survivor_dir)
    assert_same_weights(victim_dir, survivor_dir)
    assert (victim_dir / COMPLETE_FILE).is_file() and (victim_dir / "resume_train.log").is_file()
    assert not (tmp_path / "resume-invocation").exists()

    # killed before its first resume checkpoint: resuming trains it from the start, same result
    (victim_dir / "checkpoints" / "last.ckpt").unlink()
    run_cli(main, [f"train.resume={victim_dir}", f"hydra.run.dir={tmp_path / 'resume-invocation'}"])
    assert metrics(victim_dir) == metrics(survivor_dir)
    assert_same_weights(victim_dir, survivor_dir)


def test_resume_file_is_written_every_epoch_by_rename_and_an_early_stop_survives_resume(
    cyclic_data, tmp_path, monkeypatch
):
    from runkit import recipe

    saved, real_save = [], torch.save

    def recording_save(obj, path, *args, **kwargs):
        assert Path(path).name != "last.ckpt", "last.ckpt must be written under another name first"
        saved.append(obj["epoch"])
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(recipe.torch, "save", recording_save)
    run_dir = tmp_path / "stopped"
    run_cli(
        main,
        tiny_run_overrides(
            cyclic_data, run_dir, "train.max_epochs=60", "train.patience=1", "train.lr=0.05"
        ),
    )
    card = json.loads((run_dir / "checkpoints" / "last" / "card.json").read_text())
    assert card["metrics"]["epoch"] < 59  # it did stop early
    assert saved == list(range(card["metrics"]["epoch"] + 1))  # one resume file per epoch
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best",
        "last",
        "last.ckpt",
    ]

    # resumed after its early stop (as if killed before its test): it must not train on
    before = metrics(run_dir)
    run_cli(main, [f"train.resume={run_dir}", f"hydra.run.dir={tmp_path / 'again'}"])
    again = json.loads((run_dir / "checkpoints" / "last" / "card.json").read_text())
    assert again["metrics"]["global_step"] == card["metrics"]["global_step"]
    assert metrics(run_dir) == before

    def dying_save(obj, path, *args, **kwargs):  # a kill in the middle of writing
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    monkeypatch.setattr(recipe.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        recipe.AtomicCheckpointIO().save_checkpoint(
            {"epoch": 9}, run_dir / "checkpoints" / "last.ckpt"
        )
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before


def test_multirun_sweeps_get_their_own_directories(cyclic_data, tmp_path):
    results = tmp_path / "result"
    taken = take_names(results, "multirun")
    run_cli(
        main, ["-m", *default_dir_overrides(cyclic_data, results, "train.max_epochs=1", "seed=1,2")]
    )
    sweeps = [d for d in results.iterdir() if d.name not in taken]
    assert len(sweeps) == 1 and RUN_NAME.match(sweeps[0].name), sweeps
    for job, seed in (("0", 1), ("1", 2)):
        assert yaml.safe_load((sweeps[0] / job / "config.yaml").read_text())["seed"] == seed
        assert (sweeps[0] / job / COMPLETE_FILE).is_file()
    # the taken ones stay untouched
    assert all(not any(results.glob(f"{name}/*")) for name in taken)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", "error: train.batch_size must be an integer >= 1, got 0"),
        (
            "train.max_epochs=abc",
            "error: train.max_epochs must be an integer >= 1 or -1, got 'abc'",
        ),
        (
            "student.num_heads=3",
            "error: student.hidden_size=32 must be divisible by student.num_heads=3",
        ),
        ("train.monitor=hr@50", "error: train.monitor=hr@50 is not a validation metric"),
        ("train.bacth_size=64", "error: Could not override 'train.bacth_size'."),
        (
            "dataset=ml-20m",
            "error: In 'config': Could not find 'dataset/ml-20m' Available "
            "options in 'dataset': ml-100k, ml-1m",
        ),
        (
            "paths.cache_dir=${oc.env:ILORA_NO_SUCH_VARIABLE}",
            "error: config paths.cache_dir: KeyError raised while resolving interpolation: "
            "\"Environment variable 'ILORA_NO_SUCH_VARIABLE' not found\"",
        ),
        (
            f"train.resume={Path('/nonexistent/run')}",
            "error: train.resume=/nonexistent/run: no such directory",
        ),
    ],
)
def test_bad_settings_are_one_line_exit_2_and_leave_no_run_dir(
    cyclic_data, tmp_path, capsys, override, message
):
    results = tmp_path / "result"
    with pytest.raises(SystemExit) as exc:
        run_cli(main, default_dir_overrides(cyclic_data, results, override))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert not results.exists() or not any(results.iterdir())


def test_resume_refuses_another_config_group_and_an_unreadable_checkpoint(
    cyclic_data, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    run_cli(main, tiny_run_overrides(cyclic_data, run_dir, "train.max_epochs=1"))
    refusals = [
        (
            ["train=teacher"],
            "error: train.resume: train=teacher changes the config group 'train' of "
            f"{run_dir} (it ran with train=student)",
        ),
        ([], f"error: {run_dir / 'checkpoints' / 'last.ckpt'}: unreadable resume checkpoint ("),
    ]
    for extra, message in refusals:
        if not extra:  # damaged by something other than a kill (we write it by rename)
            (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
        with pytest.raises(SystemExit) as exc:
            run_cli(
                main, [f"train.resume={run_dir}", *extra, f"hydra.run.dir={tmp_path / 'again'}"]
            )
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and err.startswith(message) and len(err.splitlines()) == 1, err
        assert not (tmp_path / "again").exists()
