"""teacher.student_mix: the teacher's own scores plus w x its student's, w chosen on valid."""

import json
import logging

import pytest
import torch

from ilora import train as teacher_train
from ilora.checkpoint import load_teacher
from ilora.config import TeacherSettings
from ilora.ensemble import choose_student_mix
from ilora.testing import tiny_teacher_overrides
from recdata.contract import load_prepared
from recdata.datamodule import SequentialDataModule
from runkit.metrics import target_ranks
from runkit.testing import run_cli, tiny_run_overrides


def _train(pipeline, run, *extra):
    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            pipeline["data"],
            run,
            *tiny_teacher_overrides(pipeline["llm"], pipeline["student"]),
            *extra,
        ),
    )
    return run / "checkpoints" / "best"


def test_auto_mix_is_chosen_on_valid_recorded_and_used_by_the_test_pass(tiny_pipeline, tmp_path):
    # the default: own query, mix auto
    best = _train(tiny_pipeline, tmp_path / "t", "train.max_steps=2")
    card = json.loads((best / "card.json").read_text())
    weight, by_mix = (
        card["hparams"]["teacher"]["student_mix"],
        card["metrics"]["valid_by_student_mix"],
    )
    default_grid = TeacherSettings().student_mix_grid
    assert by_mix["metric"] == "ndcg@5" and {f"{w:g}" for w in default_grid} <= set(by_mix)
    assert by_mix[f"{weight:g}"] == max(v for k, v in by_mix.items() if k != "metric")
    # w = 0: the teacher alone
    assert by_mix["0"] == pytest.approx(card["metrics"]["valid"]["ndcg@5"], abs=1e-6)

    teacher, _ = load_teacher(best, load_prepared(tiny_pipeline["data"]))
    assert teacher.config.student_mix == weight
    batch = next(
        iter(
            SequentialDataModule(tiny_pipeline["data"], max_seq_len=16, num_candidates=0).loader(
                "test"
            )
        )
    )
    with torch.no_grad():
        state, u = teacher.encode(batch["history"])
        own = teacher.scores_from_state(state, u, student_mix=0.0)[:, 0]
        mixed = teacher(batch["history"])
        student = teacher.student.score(batch["history"])
    torch.testing.assert_close(
        mixed[:, 1:], own[:, 1:] + weight * student[:, 1:], rtol=1e-5, atol=1e-5
    )
    import pyarrow.parquet as pq

    ranks = (target_ranks(mixed, batch["target"]) + 1).tolist()
    assert (
        ranks
        == pq.read_table(tmp_path / "t" / "test_predictions.parquet")
        .column("rank_unmasked")
        .to_pylist()
    )


def test_a_mix_on_a_residual_teacher_is_refused_with_one_line(tiny_pipeline, tmp_path, capsys):
    for value in ("auto", "0.5"):
        with pytest.raises(SystemExit) as exc:
            _train(
                tiny_pipeline,
                tmp_path / value,
                f"teacher.student_mix={value}",
                "teacher.residual_student_state=true",
            )
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "teacher.residual_student_state=false" in err[0]


def test_the_teacher_digest_changes_with_the_mix_not_only_with_the_weights(tiny_pipeline, tmp_path):
    """Soft labels and the service name their teacher by this digest: a checkpoint whose card
    mixes in the student scores differently is another teacher."""
    import shutil

    from ilora.inference import teacher_digest

    copy = tmp_path / "copy"
    shutil.copytree(tiny_pipeline["teacher"], copy)
    assert teacher_digest(copy) == teacher_digest(tiny_pipeline["teacher"])
    card = json.loads((copy / "card.json").read_text())
    card["hparams"]["teacher"]["student_mix"] += 1.0
    (copy / "card.json").write_text(json.dumps(card))
    assert teacher_digest(copy) != teacher_digest(tiny_pipeline["teacher"])


def test_the_mix_figures_come_from_the_best_checkpoints_own_validation(
    tiny_pipeline, tmp_path, monkeypatch
):
    """Choosing w costs no extra LLM pass over valid: the validation that selected the best
    checkpoint already ranked every mix, and its figures equal a fresh pass on the best weights."""
    from ilora import ensemble

    fresh_pass = ensemble.valid_metric_by_mix
    calls = []
    monkeypatch.setattr(
        ensemble, "valid_metric_by_mix", lambda *a, **k: calls.append(1) or fresh_pass(*a, **k)
    )
    best = _train(tiny_pipeline, tmp_path / "t", "train.max_steps=4", "train.val_check_interval=2")
    assert calls == []
    card = json.loads((best / "card.json").read_text())
    recorded = {
        float(k): v for k, v in card["metrics"]["valid_by_student_mix"].items() if k != "metric"
    }

    teacher, _ = load_teacher(best, load_prepared(tiny_pipeline["data"]))
    valid = SequentialDataModule(tiny_pipeline["data"], max_seq_len=16, num_candidates=0).loader(
        "valid"
    )
    again = fresh_pass(
        teacher,
        valid,
        teacher.student.config.num_items,
        metric="ndcg@5",
        ks=(1, 5),
        mask_history=False,
        device=torch.device("cpu"),
        grid=tuple(recorded),
    )
    assert recorded == pytest.approx(again, abs=1e-6)
    # the mix changes the ranking: the figures are not all w = 0's
    assert len(set(recorded.values())) > 1


def test_the_grid_is_a_knob(tiny_pipeline, tmp_path):
    """`teacher.student_mix_grid` is the set auto chooses from (sorted, each weight once)."""
    best = _train(
        tiny_pipeline, tmp_path / "t", "train.max_steps=2", "teacher.student_mix_grid=[8,0,0.5,8]"
    )
    by_mix = json.loads((best / "card.json").read_text())["metrics"]["valid_by_student_mix"]
    assert set(by_mix) == {"metric", "0", "0.5", "8"}


def test_valid_choosing_the_grids_largest_weight_is_flagged(caplog):
    """The grid's top chosen says the teacher adds little to its student and a wider grid may
    choose more: the run says so, and only then."""

    class Teacher:
        config = TeacherSettings()

    for figures, flagged in (({0.0: 0.1, 2.0: 0.3, 4.0: 0.2}, False), ({0.0: 0.1, 4.0: 0.3}, True)):
        with caplog.at_level(logging.WARNING, logger="ilora.ensemble"):
            caplog.clear()
            weight, _ = choose_student_mix(
                Teacher,
                None,
                0,
                metric="ndcg@10",
                ks=(10,),
                mask_history=False,
                device=None,
                grid=tuple(figures),
                by_mix=figures,
            )
        assert Teacher.config.student_mix == weight == max(figures, key=figures.get)
        assert ("largest of teacher.student_mix_grid" in caplog.text) is flagged
