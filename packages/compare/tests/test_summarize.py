"""summarize: one table of every run, config columns only where runs differ, clear bad input."""

import csv
import json

import pytest
import yaml

from compare.summarize import main

CONFIG = {
    "dataset": {"name": "ml-100k", "processed_dir": "/a/processed", "limit_data_rows": -1},
    "student": {"hidden_size": 64, "max_seq_len": 200},
    "teacher": {"distill_loss_type": "mse", "rec_model_checkpoint_path": None},
    "train": {"lr": 0.001, "batch_size": 128, "resume": None},
    "eval": {"ks": [5, 10], "baseline_checkpoint_path": None},
    "paths": {"result_dir": "result"},
    "seed": 42,
}


def _run(path, *, lr, kind="sasrec", metrics=None, **changes):
    config = json.loads(json.dumps(CONFIG))
    config["train"]["lr"] = lr
    for dotted, value in changes.items():
        group, key = dotted.split("__")
        config[group][key] = value
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"train": {"lr": "${oc.env:X}"}}))
    if metrics is not None:
        payload = {"model": kind, "split": "test", "metrics": metrics}
        (path / "test_metrics.json").write_text(json.dumps(payload))


def test_table_has_the_differing_key_only(tmp_path, capsys):
    root = tmp_path / "result"
    _run(
        root / "result_20260101_000000",
        lr=0.001,
        metrics={"hr@10": 0.5, "ndcg@10": 0.25, "hr@5": 0.4},
    )
    # a multirun member: other paths, same experiment except the learning rate
    _run(
        root / "multirun_20260102_000000" / "0",
        lr=0.01,
        metrics={"hr@10": 0.6, "ndcg@10": 0.3, "hr@5": 0.5},
        dataset__processed_dir="/b/processed",
        train__resume="/x",
        paths__result_dir="other",
    )
    _run(root / "result_20260103_000000", lr=0.001)  # still training
    (root / "eval_run").mkdir()
    (root / "eval_run" / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    # eval-all: not a model run
    (root / "eval_run" / "all_evaluation_results.json").write_text("{}")

    main([str(root), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    with open(tmp_path / "out" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["run", "kind", "status", "train.lr", "hr@5", "hr@10", "ndcg@10"]
    by_run = {r["run"]: r for r in rows}
    assert set(by_run) == {
        "result_20260101_000000",
        "multirun_20260102_000000/0",
        "result_20260103_000000",
    }
    assert by_run["multirun_20260102_000000/0"]["train.lr"] == "0.01"
    assert float(by_run["multirun_20260102_000000/0"]["ndcg@10"]) == 0.3
    assert by_run["result_20260103_000000"]["status"] == "incomplete"
    assert by_run["result_20260103_000000"]["hr@10"] == ""
    md = (tmp_path / "out" / "summary.md").read_text()
    assert md == printed
    assert "| run | kind | status | train.lr | hr@5 | hr@10 | ndcg@10 |" in md
    assert "| result_20260101_000000 | sasrec | ok | 0.001 | 0.4000 | 0.5000 | 0.2500 |" in md


def test_valid_split_reads_the_best_checkpoints_validation_metrics(tmp_path, capsys):
    """A search ranks on valid: --split valid shows what model selection chose each run by."""
    root = tmp_path / "result"
    for n, (lr, valid) in enumerate(((0.001, 0.11), (0.01, 0.12))):
        run = root / "multirun_x" / str(n)
        _run(run, lr=lr, metrics={"ndcg@10": 0.9})  # test metrics exist but are not shown
        (run / "checkpoints" / "best").mkdir(parents=True)
        card = {
            "kind": "sasrec-distilled",
            "metrics": {"epoch": 3, "valid": {"ndcg@10": valid, "hr@10": 2 * valid}},
        }
        (run / "checkpoints" / "best" / "card.json").write_text(json.dumps(card))
        if n == 1:
            (run / "run_complete.json").write_text("{}")  # run 0 is still training: its best so far
    _run(root / "multirun_x" / "2", lr=0.1)  # no checkpoint yet
    main([str(root), "--split", "valid"])
    md = capsys.readouterr().out
    assert "| multirun_x/1 | sasrec-distilled | ok | 0.01 | 0.2400 | 0.1200 |" in md
    assert "| multirun_x/0 | sasrec-distilled | incomplete | 0.001 | 0.2200 | 0.1100 |" in md
    assert "| multirun_x/2 | unknown | incomplete | 0.1 | — | — |" in md
    assert "0.9000" not in md and "validation metrics (of the best checkpoint)" in md


def test_default_output_is_the_results_dir(tmp_path, capsys):
    _run(tmp_path / "a", lr=0.1, kind="ilora-teacher", metrics={"hr@5": 0.1})
    _run(tmp_path / "b", lr=0.1, metrics={"hr@5": 0.2}, teacher__distill_loss_type="cosine")
    main([str(tmp_path)])
    assert "teacher.distill_loss_type" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "summary.csv").read_text().splitlines()))
    assert [r["teacher.distill_loss_type"] for r in rows] == ["mse", "cosine"]
    assert [r["kind"] for r in rows] == ["ilora-teacher", "sasrec"]
    assert (tmp_path / "summary.md").is_file()


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make):
    target = tmp_path / "result"
    if make == "file":
        target.write_text("x")
    elif make == "empty":
        (target / "result_1" / ".hydra").mkdir(parents=True)
        (target / "result_1" / ".hydra" / "config.yaml").write_text("a: 1\n")
    with pytest.raises(SystemExit) as exc:
        main([str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert ("no runs found" in err[0]) if make == "empty" else ("is not a directory" in err[0])


def _predictions(run_dir, ranks):
    """test_predictions.parquet with one sample per user and the given 1-based target ranks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(ranks)
    table = pa.table(
        {
            "user_id": list(range(n, 0, -1)),
            "position": [3] * n,
            "rank": ranks,
            "hit@1_of_20": [r == 1 for r in ranks],
        }
    )
    pq.write_table(table, run_dir / "test_predictions.parquet")


def test_baseline_adds_each_runs_paired_difference_with_its_se(tmp_path, capsys):
    """Against a baseline run: the per-user difference of the same users, computed by
    recdata.stats, so a sweep's rows carry their uncertainty, not only their means."""
    import numpy as np

    from compare.stats import paired_difference

    base, other = tmp_path / "base", tmp_path / "result" / "multirun_x" / "0"
    _run(base, lr=0.001, metrics={"ndcg@10": 0.2})
    _run(other, lr=0.01, metrics={"ndcg@10": 0.3})
    _run(tmp_path / "result" / "multirun_x" / "1", lr=0.1)  # unfinished: no difference
    base_ranks, other_ranks = [1, 5, 30, 2, 11, 4], [2, 1, 3, 2, 40, 1]
    _predictions(base, base_ranks)
    _predictions(other, other_ranks)
    main([str(tmp_path / "result"), "--baseline", str(base)])
    rows = {
        r["run"]: r
        for r in csv.DictReader((tmp_path / "result" / "summary.csv").read_text().splitlines())
    }

    def ndcg(ranks):  # users in user_id order, as per_sample reads them
        r = np.array(ranks[::-1], dtype=float)
        return np.where(r <= 10, 1 / np.log2(r + 1), 0.0)

    expected = paired_difference([ndcg(base_ranks)], [ndcg(other_ranks)])
    assert rows["multirun_x/0"]["Δndcg@10"] == expected.text()
    assert expected.mean > 0 and rows["multirun_x/1"]["Δndcg@10"] == ""
    assert "Δhr@10" in rows["multirun_x/0"]
    assert expected.text() in capsys.readouterr().out  # the Markdown shows it unrounded


def test_baseline_without_predictions_or_with_valid_split_is_one_line(tmp_path, capsys):
    _run(tmp_path / "result" / "a", lr=0.1, metrics={"hr@5": 0.1})
    for argv in (
        [str(tmp_path / "result"), "--baseline", str(tmp_path / "nowhere")],
        [str(tmp_path / "result"), "--baseline", str(tmp_path), "--split", "valid"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--baseline" in err[0]
