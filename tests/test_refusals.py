"""Damaged checkpoints handed to a command: one `error:` line naming the file, exit code 2, no
run directory left behind (train-teacher reading its student, before any LLM is loaded)."""

import json
import shutil

import pytest

from ilora import train as teacher_train
from ilora.testing import tiny_teacher_overrides
from runkit.testing import run_cli, tiny_run_overrides


def _truncate(best):
    data = (best / "model.safetensors").read_bytes()
    (best / "model.safetensors").write_bytes(data[: len(data) // 3])


def _edit_kind(best):
    card = json.loads((best / "card.json").read_text())
    (best / "card.json").write_text(json.dumps({**card, "kind": "sasrec-distilled"}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, "{best}/model.safetensors: not a readable safetensors file ("),
        (
            lambda best: (best / "card.json").write_text("[]"),
            "{best}/card.json: not a checkpoint card (a JSON list, expected an object)",
        ),
        (
            _edit_kind,
            "{best}/card.json: a sasrec-distilled card must record distillation.teacher_digest;",
        ),
    ],
)
def test_damaged_student_checkpoint_is_one_line(tiny_pipeline, tmp_path, capsys, damage, message):
    best = tmp_path / "student"
    shutil.copytree(tiny_pipeline["student"], best)
    damage(best)
    with pytest.raises(SystemExit) as exc:
        run_cli(
            teacher_train.main,
            tiny_run_overrides(
                tiny_pipeline["data"],
                tmp_path / "run",
                *tiny_teacher_overrides(tiny_pipeline["llm"], best),
            ),
        )
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err.startswith("error: " + message.format(best=best)), err
    assert not (tmp_path / "run").exists()
