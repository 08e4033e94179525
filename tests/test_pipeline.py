"""The whole pipeline on tiny data, as `make demo` chains it: student -> teacher -> soft labels ->
distilled student -> eval-all, each step finding the previous one's output by itself."""

import json
from pathlib import Path

import torch

from compare import eval_all
from distill import precompute
from distill import train as distill_train
from recdata.datamodule import SequentialDataModule
from runkit.runs import find_newest_checkpoint
from runkit.testing import run_cli, tiny_run_overrides
from sasrec.module import load_sasrec


def test_pipeline_chains_by_newest_run_and_compares_all_three(tiny_pipeline, tmp_path):
    data = tiny_pipeline["data"]
    results = tiny_pipeline["teacher"].parents[2]  # the result dir holding both tiny runs
    common = ["distill.soft_label_samples=all", "distill.teacher_batch_size=8"]
    run_cli(precompute.main, tiny_run_overrides(data, results / "precompute", *common))
    run_cli(
        distill_train.main,
        tiny_run_overrides(data, results / "distilled", "train.max_epochs=5", *common),
    )
    run_cli(eval_all.main, tiny_run_overrides(data, results / "eval"))

    report = json.loads((results / "eval" / "all_evaluation_results.json").read_text())
    assert {
        k: v["status"]
        for k, v in report.items()
        if k in ("baseline_student", "distilled_student", "teacher_model")
    } == {"baseline_student": "ok", "distilled_student": "ok", "teacher_model": "ok"}
    assert (
        Path(report["teacher_model"]["checkpoint"]).resolve() == tiny_pipeline["teacher"].resolve()
    )
    for key in ("baseline_student", "distilled_student", "teacher_model"):
        run_dir = Path(report[key]["checkpoint"]).parents[1]
        own = json.loads((run_dir / "test_metrics.json").read_text())
        # one protocol: eval-all reproduces each run's figures
        assert report[key]["metrics"] == own["metrics"]
    assert (results / "eval" / "all_evaluation_results.md").is_file() and (
        results / "eval" / "all_evaluation_results.png"
    ).is_file()

    # the distilled student serves as a plain SASRec
    best = find_newest_checkpoint(results, ("sasrec-distilled",))
    dm = SequentialDataModule(data, max_seq_len=16, num_candidates=0)
    dm.setup()
    model, card = load_sasrec(
        best, fingerprint=dm.fingerprint, num_items=dm.num_items, kinds=("sasrec-distilled",)
    )
    assert card["distillation"]["source"] == "precomputed"
    scores = model.score(next(iter(dm.loader("test")))["history"])
    assert torch.isfinite(scores[:, 1:]).all()


def test_a_dataset_of_ones_own_runs_every_command_by_its_name(tiny_pipeline, tmp_path):
    """The documented way in: `recdata prepare NAME --from` a CSV with string ids and an items
    table with text, then every command with `dataset.name=NAME` (no other data option)."""
    from ilora import train as teacher_train
    from ilora.testing import tiny_teacher_overrides
    from recdata.cli import main as recdata_main
    from recdata.synthetic import generate
    from sasrec import train as student_train

    inter, items = generate(60, 80, 900, seed=3, id_style="str").write_csv(tmp_path / "csv")
    recdata_main(
        [
            "prepare",
            "shop",
            "--from",
            str(inter),
            "--items",
            str(items),
            "--data-root",
            str(tmp_path / "data"),
        ]
    )
    results = tmp_path / "result"

    def run(main, name: str, *extra: str) -> None:
        overrides = tiny_run_overrides(Path("unused"), results / name, *extra)
        overrides = [o for o in overrides if not o.startswith("dataset.processed_dir=")]
        run_cli(main, [*overrides, "dataset.name=shop", f"paths.data_dir={tmp_path / 'data'}"])

    run(student_train.main, "student", "train.max_epochs=3")
    teacher = tiny_teacher_overrides(
        tiny_pipeline["llm"], results / "student" / "checkpoints" / "best"
    )
    run(teacher_train.main, "teacher", *teacher, "train.max_steps=3")
    common = ["distill.soft_label_samples=all", "distill.teacher_batch_size=8"]
    run(precompute.main, "precompute", *common)
    run(distill_train.main, "distilled", "train.max_epochs=2", *common)
    run(eval_all.main, "eval")
    report = json.loads((results / "eval" / "all_evaluation_results.json").read_text())
    assert [
        report[k]["status"] for k in ("baseline_student", "distilled_student", "teacher_model")
    ] == ["ok"] * 3
    assert report["baseline_student"]["protocol"]["data"]["dataset"] == "shop"
    assert (
        json.loads((results / "teacher" / "checkpoints" / "best" / "card.json").read_text())[
            "data"
        ]["dataset"]
        == "shop"
    )


def test_the_cold_item_protocol_through_every_trainer(tiny_pipeline, tmp_path):
    """dataset.cold_items: the student's and teacher's tables hold no ID information for the
    held-out items, no soft label names one, and the test metrics have a cold slice."""
    from safetensors.torch import load_file

    from distill.soft_labels import read_soft_labels
    from ilora import train as teacher_train
    from ilora.testing import tiny_teacher_overrides
    from recdata.testing import cyclic_sequences, make_prepared
    from sasrec import train as student_train

    data = make_prepared(
        tmp_path / "data", cyclic_sequences(num_users=16, cycle=60, length=20, step=4)
    )
    cold = ["dataset.cold_items=random:0.2", "dataset.cold_seed=1"]
    run_cli(
        student_train.main,
        tiny_run_overrides(data, tmp_path / "student", "train.max_epochs=2", *cold),
    )
    dm = SequentialDataModule(
        data, max_seq_len=16, num_candidates=0, cold_items="random:0.2", cold_seed=1
    )
    dm.setup()
    held = dm.held_out_items
    student = tmp_path / "student" / "checkpoints" / "best"
    table = load_file(student / "model.safetensors")["item_emb.weight"]
    assert held.sum() == 12 and not table[held].any() and table[~held][1:].abs().sum(1).gt(0).all()
    metrics = json.loads((tmp_path / "student" / "test_metrics.json").read_text())
    assert metrics["metrics_by_slice"]["cold"]["samples"] > 0
    assert metrics["protocol"]["data"]["cold_items"] == "random:0.2"
    overrides = tiny_teacher_overrides(tiny_pipeline["llm"], student)
    run_cli(
        teacher_train.main,
        tiny_run_overrides(data, tmp_path / "teacher", *overrides, "train.max_steps=2", *cold),
    )
    teacher = tmp_path / "teacher" / "checkpoints" / "best"
    assert not load_file(teacher / "model.safetensors")["item_table"][held].any()
    soft = tmp_path / "soft"
    run_cli(
        precompute.main,
        tiny_run_overrides(
            data,
            tmp_path / "precompute",
            *cold,
            f"distill.teacher_checkpoint_path={teacher}",
            f"distill.soft_labels_dir={soft}",
            "distill.soft_label_samples=all",
        ),
    )
    labels = read_soft_labels(soft, fingerprint=dm.fingerprint)
    assert len(labels.user_ids) == len(dm.keys["train"]) and not held[labels.topk_items].any()
