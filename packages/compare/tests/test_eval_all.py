"""eval-all: the same numbers as each run's own test, error entries by name, strict teacher
reuse."""

import copy
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compare.eval_all import main
from compare.reuse import protocol_mismatch, reuse_stored_result
from recdata.datamodule import SequentialDataModule
from recdata.testing import cyclic_sequences, make_prepared
from runkit.evaluation import TIE_RULE
from runkit.testing import run_cli, tiny_run_overrides
from sasrec.train import main as train_student

# what a card of each kind must carry (stand-in values: these runs are students in disguise)
STAND_IN = {
    "sasrec-distilled": {"distillation": {"teacher_digest": "stand-in"}},
    "ilora-teacher": {
        "base_llm": {"digest": "stand-in"},
        "student_checkpoint": {"weights_sha256": "stand-in"},
    },
}


def _rewrite_kind(run_dir, kind, *, provenance=True):
    """Turn a copied student run into a run of another kind (card and test_metrics.json)."""
    card_path = run_dir / "checkpoints" / "best" / "card.json"
    card = json.loads(card_path.read_text())
    card.update(kind=kind, **(STAND_IN[kind] if provenance else {}))
    card_path.write_text(json.dumps(card))
    metrics_path = run_dir / "test_metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["model"] = kind
    metrics_path.write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_all")
    data = make_prepared(root / "data", cyclic_sequences())
    results = root / "results"
    run_cli(train_student, tiny_run_overrides(data, results / "baseline", "train.max_epochs=3"))
    other = root / "elsewhere" / "student"
    run_cli(
        train_student,
        tiny_run_overrides(data, other, "train.max_epochs=3", "seed=7", "train.lr=0.003"),
    )
    shutil.copytree(other, results / "distilled")  # a stand-in for a distilled student
    _rewrite_kind(results / "distilled", "sasrec-distilled")
    # a stand-in teacher run: only its stored test files are used
    teacher = root / "elsewhere" / "teacher"
    shutil.copytree(other, teacher)
    _rewrite_kind(teacher, "ilora-teacher")
    return {"data": data, "results": results, "teacher": teacher, "root": root}


def _eval_all(runs, name, *extra, data=None):
    run_dir = runs["results"] / name
    run_cli(main, tiny_run_overrides(data or runs["data"], run_dir, *extra))
    return run_dir, json.loads((run_dir / "all_evaluation_results.json").read_text())


def _own(run_dir):
    return json.loads((run_dir / "test_metrics.json").read_text())


def test_students_match_their_own_runs_and_missing_teacher_is_an_error(runs, capsys):
    run_dir, out = _eval_all(runs, "eval_students")
    for key, source in (("baseline_student", "baseline"), ("distilled_student", "distilled")):
        entry, own = out[key], _own(runs["results"] / source)
        assert entry["status"] == "ok" and entry["source"] == "evaluated"
        assert entry["checkpoint"] == str(runs["results"] / source / "checkpoints" / "best")
        assert entry["metrics"] == own["metrics"]
        assert entry["metrics_unmasked"] == own["metrics_unmasked"]
        # per slice, the same figures too
        assert entry["metrics_by_slice"] == own["metrics_by_slice"]
        assert entry["protocol"] == own["protocol"]
        assert (
            pq.read_table(run_dir / f"predictions_{key}.parquet").num_rows
            == own["protocol"]["num_samples"]
        )
    assert out["distilled_student"]["kind"] == "sasrec-distilled"
    # really two models
    assert out["baseline_student"]["metrics"] != out["distilled_student"]["metrics"]
    teacher = out["teacher_model"]
    assert teacher["status"] == "error" and teacher["checkpoint"] is None
    assert "no complete ilora-teacher run on this dataset" in teacher["error"]
    md = (run_dir / "all_evaluation_results.md").read_text()
    assert "| model | kind | HR@1 | NDCG@1 | HR@5 | NDCG@5 | HR@1 of 20 | source |" in md
    assert "| baseline_student | sasrec |" in md and "Distilled / baseline at K=5" in md
    assert (
        "history items not masked" in md and "- teacher_model: no complete ilora-teacher run" in md
    )
    assert (run_dir / "all_evaluation_results.png").read_bytes()[:4] == b"\x89PNG"
    assert "By slice: NDCG@5" in md and "| distilled_student | " in md.split("By slice")[1]
    by_slice = out["distilled_student"]["vs_baseline_by_slice"]
    assert set(by_slice) == set(out["distilled_student"]["metrics_by_slice"]) >= {"head", "tail"}
    assert (
        sum(by_slice[g]["ndcg@5"]["n"] for g in ("head", "tail")) == own["protocol"]["num_samples"]
    )
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[-1] == f"run_dir: {run_dir}"
    assert any(line.startswith("| distilled_student | sasrec-distilled |") for line in stdout)


def test_every_model_is_compared_to_the_baseline_with_its_uncertainty(runs):
    from compare.stats import paired_difference, per_sample

    run_dir, out = _eval_all(runs, "eval_uncertainty")
    base = pq.read_table(run_dir / "predictions_baseline_student.parquet")
    other = pq.read_table(run_dir / "predictions_distilled_student.parquet")
    diffs = out["distilled_student"]["vs_baseline"]
    assert set(diffs) == {"ndcg@5", "hr@5"} and "vs_baseline" not in out["baseline_student"]
    for metric, d in diffs.items():
        per_user = per_sample(other, metric) - per_sample(base, metric)
        assert (
            d["mean"]
            == pytest.approx(per_user.mean())
            == pytest.approx(
                out["distilled_student"]["metrics"][metric]
                - out["baseline_student"]["metrics"][metric]
            )
        )
        assert d["se"] == pytest.approx(per_user.std(ddof=1) / np.sqrt(len(per_user)))
        assert (
            d
            == paired_difference([per_sample(base, metric)], [per_sample(other, metric)]).to_dict()
        )
    for entry in (out["baseline_student"], out["distilled_student"]):
        assert set(entry["ci95"]) == set(entry["metrics"])
        assert all(lo <= entry["metrics"][m] <= hi for m, (lo, hi) in entry["ci95"].items())
    md = (run_dir / "all_evaluation_results.md").read_text()
    assert "paired per-user difference at K=5" in md
    d = diffs["ndcg@5"]
    assert (
        f"| distilled_student | {d['mean']:+.4f} ± {d['se']:.4f} "
        f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] |" in md
    )


def test_teacher_predictions_are_reused_only_under_the_same_protocol(runs, capsys):
    teacher_ckpt = runs["teacher"] / "checkpoints" / "best"
    run_dir, out = _eval_all(runs, "eval_reuse", f"eval.teacher_checkpoint_path={teacher_ckpt}")
    entry = out["teacher_model"]
    assert entry["status"] == "ok" and entry["source"] == "reused"
    assert entry["metrics"] == _own(runs["teacher"])["metrics"]
    assert (run_dir / "predictions_teacher_model.parquet").is_file()
    assert "| teacher_model | ilora-teacher |" in capsys.readouterr().out
    # Another K list: the stored predictions do not apply, so the teacher must be run (the
    # stand-in cannot be, which proves it was not reused).
    _, out = _eval_all(
        runs, "eval_no_reuse", f"eval.teacher_checkpoint_path={teacher_ckpt}", "eval.ks=[1,5,10]"
    )
    assert out["teacher_model"]["status"] == "error"
    assert (
        "not reused: protocol differs (full_ranking.ks: stored [1, 5], now [1, 5, 10])"
        in out["teacher_model"]["error"]
    )
    assert out["baseline_student"]["status"] == "ok"


def test_a_card_edited_from_sasrec_to_distilled_is_refused(runs, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(runs["results"] / "baseline", edited)
    _rewrite_kind(edited, "sasrec-distilled", provenance=False)  # what a user's edit does
    _, out = _eval_all(runs, "eval_edited", f"eval.distilled_checkpoint_path={edited}")
    card = edited / "checkpoints" / "best" / "card.json"
    assert out["distilled_student"] == {
        **out["distilled_student"],
        "status": "error",
        "error": (
            f"{card}: a sasrec-distilled card must record distillation.teacher_digest; this one "
            "does not (was its kind edited by hand?)"
        ),
    }
    assert out["baseline_student"]["status"] == "ok"


def test_checkpoints_built_on_other_data_are_errors_by_name(runs, capsys):
    """On another dataset no run here is the newest of its kind (each error says how many were
    left out), and a checkpoint named explicitly is refused as built on other data."""
    other = make_prepared(runs["root"] / "other_data", cyclic_sequences(num_users=12, cycle=40))
    with pytest.raises(SystemExit) as exc:
        _eval_all(runs, "eval_other", data=other)
    assert exc.value.code == 2
    out = json.loads((runs["results"] / "eval_other" / "all_evaluation_results.json").read_text())
    assert "1 built on other datasets" in out["baseline_student"]["error"]
    assert "no model could be evaluated" in capsys.readouterr().err
    named = runs["results"] / "distilled" / "checkpoints" / "best"
    with pytest.raises(SystemExit):
        _eval_all(runs, "eval_named", f"eval.distilled_checkpoint_path={named}", data=other)
    out = json.loads((runs["results"] / "eval_named" / "all_evaluation_results.json").read_text())
    assert out["distilled_student"]["status"] == "error"
    assert "was built on other data" in out["distilled_student"]["error"]
    assert out["distilled_student"]["checkpoint"] == str(named)


# -- the reuse criterion, on hand-made payloads -------------------------------------------------
PROTOCOL = {
    "split": "test",
    "num_samples": 10,
    "full_ranking": {"ks": [5, 10], "mask_history": True, "ties": TIE_RULE},
    "candidates": {"num": 20, "seed": 2024, "negatives": "uniform", "metric": "hr@1"},
    "data": {
        "dataset": "ml-100k",
        "fingerprint": "ab" * 32,
        "num_items": 40,
        "limit_data_rows": -1,
    },
}
METRICS = {"hr@5": 0.5, "ndcg@5": 0.3, "hr@10": 0.7, "ndcg@10": 0.4, "hr@1_of_20": 0.6}
UNMASKED = {**METRICS, "hr@5": 0.4}
STORED = {
    "model": "ilora-teacher",
    "split": "test",
    "metrics": METRICS,
    "metrics_unmasked": UNMASKED,
    "metrics_masked": METRICS,
    "protocol": PROTOCOL,
}


def _changed(path: str, value):
    stored = copy.deepcopy(STORED)
    *parents, leaf = path.split(".")
    node = stored
    for p in parents:
        node = node[p]
    node[leaf] = value
    return stored


def test_identical_protocol_is_reusable():
    assert (
        protocol_mismatch(copy.deepcopy(STORED), copy.deepcopy(PROTOCOL), "ilora-teacher") is None
    )


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("protocol.data.fingerprint", "cd" * 32, "data.fingerprint"),
        ("protocol.data.limit_data_rows", 64, "data.limit_data_rows"),
        ("protocol.num_samples", 9, "num_samples"),
        ("protocol.split", "valid", "split"),
        ("protocol.full_ranking.ks", [5, 10, 20], "full_ranking.ks"),
        ("protocol.full_ranking.ks", [10, 5], "full_ranking.ks"),
        ("protocol.full_ranking.mask_history", False, "full_ranking.mask_history"),
        ("protocol.full_ranking.mask_history", 1, "full_ranking.mask_history"),
        ("protocol.candidates.num", 100, "candidates.num"),
        ("protocol.candidates.seed", 7, "candidates.seed"),
        ("split", "valid", "split"),
        ("model", "sasrec", "model"),
    ],
)
def test_any_protocol_difference_prevents_reuse(path, value, named):
    reason = protocol_mismatch(_changed(path, value), copy.deepcopy(PROTOCOL), "ilora-teacher")
    assert reason is not None and named.split(".")[-1] in reason


def test_missing_or_extra_protocol_fields_and_metrics_prevent_reuse():
    no_candidates = copy.deepcopy(STORED)
    del no_candidates["protocol"]["candidates"]
    assert "candidates.seed" in protocol_mismatch(
        no_candidates, copy.deepcopy(PROTOCOL), "ilora-teacher"
    )
    assert "no protocol" in protocol_mismatch(
        {**STORED, "protocol": None}, PROTOCOL, "ilora-teacher"
    )
    fewer = _changed("metrics_unmasked", {k: v for k, v in UNMASKED.items() if k != "ndcg@10"})
    assert "metrics_unmasked" in protocol_mismatch(fewer, PROTOCOL, "ilora-teacher")
    assert "mask_history" in protocol_mismatch(
        _changed("metrics", UNMASKED), PROTOCOL, "ilora-teacher"
    )
    assert "not a JSON object" in protocol_mismatch([], PROTOCOL, "ilora-teacher")


# -- the reuse criterion, on the files of a run -------------------------------------------------
def test_stored_files_must_belong_to_the_checkpoint_and_the_samples(runs, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(runs["teacher"], teacher)
    best = teacher / "checkpoints" / "best"
    card = json.loads((best / "card.json").read_text())
    expected = _own(teacher)["protocol"]
    dm = SequentialDataModule(runs["data"], max_seq_len=16)
    dm.setup()
    keys = dm.keys["test"]
    result, why = reuse_stored_result(best, card, expected, keys)
    assert why == "reused" and result.metrics == _own(teacher)["metrics"]

    other_weights = copy.deepcopy(card)
    other_weights["metrics"]["test"]["hr@5"] += 0.1
    assert (
        "card.json metrics.test differs"
        in reuse_stored_result(best, other_weights, expected, keys)[1]
    )
    assert (
        "not inside a run's checkpoints/" in reuse_stored_result(teacher, card, expected, keys)[1]
    )

    table = pq.read_table(teacher / "test_predictions.parquet")
    pq.write_table(table.slice(1), teacher / "test_predictions.parquet")
    assert "other test samples" in reuse_stored_result(best, card, expected, keys)[1]
    ranks = table.column("rank").to_numpy()
    ranks = np.full_like(ranks, 1 if ranks.max() > 1 else 2)  # not the ranks the metrics came from
    pq.write_table(
        table.set_column(table.column_names.index("rank"), "rank", pa.array(ranks)),
        teacher / "test_predictions.parquet",
    )
    assert "does not reproduce" in reuse_stored_result(best, card, expected, keys)[1]
    (teacher / "test_predictions.parquet").unlink()
    assert (
        "no test_metrics.json + test_predictions.parquet"
        in reuse_stored_result(best, card, expected, keys)[1]
    )


def test_runs_on_another_dataset_are_left_out_even_when_newer(tmp_path):
    """Two datasets share one result dir: eval-all on the first evaluates the first's student,
    not the second's newer one (which would fail its fingerprint check)."""
    first = make_prepared(tmp_path / "first", cyclic_sequences())
    second = make_prepared(tmp_path / "second", cyclic_sequences(num_users=12, cycle=44, step=3))
    results = tmp_path / "results"
    run_cli(train_student, tiny_run_overrides(first, results / "on_first", "train.max_epochs=2"))
    run_cli(train_student, tiny_run_overrides(second, results / "on_second", "train.max_epochs=2"))
    run_cli(main, tiny_run_overrides(first, results / "eval"))
    entry = json.loads((results / "eval" / "all_evaluation_results.json").read_text())[
        "baseline_student"
    ]
    assert entry["status"] == "ok"
    assert entry["checkpoint"] == str(results / "on_first" / "checkpoints" / "best")
