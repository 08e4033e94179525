"""`sasrec.recommend`: a student's top-K equals its evaluation's ranking; history, candidates and
exclusions; the popularity fallback; distilled students; string ids without titles; and the
`recommend` command (JSON, Parquet, one-line errors)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recdata.batching import SequenceStore
from recdata.cold import protocol_view
from recdata.contract import load_prepared
from recdata.datamodule import SplitDataset
from recdata.splits import split_keys
from runkit.checkpoint import load_checkpoint, save_checkpoint
from runkit.evaluation import evaluate
from sasrec.model import SASRec, SASRecConfig
from sasrec.recommend import FALLBACK, Query, Recommender, left_pad, main


@pytest.fixture(scope="module")
def tiny(tiny_pipeline):
    return tiny_pipeline


@pytest.fixture(scope="module")
def recommender(tiny) -> Recommender:
    return Recommender.load(tiny["student"], tiny["data"])


def histories_of(recommender: Recommender) -> list[list[int]]:
    """Each user's test-sample history: the sequence but its last item."""
    c = recommender.catalogue
    return [c.items[c.offsets[u] : c.offsets[u + 1] - 1].tolist() for u in range(len(c.user_raw))]


def test_ranking_equals_the_evaluation_of_the_test_split(tiny, recommender):
    """The stored test predictions of the student's run (its protocol's masking) and a fresh
    `evaluate` with the history masked both rank what `rank` ranks for the same histories."""
    run_dir = Path(tiny["student"]).parents[1]
    stored = pq.read_table(run_dir / "test_predictions.parquet").to_pylist()
    masked = json.loads((run_dir / "test_metrics.json").read_text())["protocol"]["full_ranking"]
    histories = histories_of(recommender)
    for mask_history, rows in ((masked["mask_history"], stored), (True, fresh_evaluation(tiny))):
        queries = [Query(histories[r["user_id"] - 1], 20, mask_history) for r in rows]
        assert [r.items for r in recommender.rank(queries)] == [r["topk_items"] for r in rows]


def fresh_evaluation(tiny, model=None, dataset=None) -> list[dict]:
    """`evaluate` on the test split of ``dataset`` (default: the tiny data) with the history
    masked, by ``model`` (default: the tiny student)."""
    model = model or load_model(tiny["student"])
    dataset = dataset or load_prepared(tiny["data"])
    split = SplitDataset(
        SequenceStore(dataset),
        split_keys(dataset.lengths, "test"),
        model.config.max_seq_len,
        with_full_history=True,
    )
    batch = split.__getitems__(list(range(len(split))))
    result = evaluate(
        lambda b: model.score(b["history"]), [batch], dataset.num_items, progress=False
    )
    return result.predictions.to_pylist()


def load_model(path: Path) -> SASRec:
    ckpt = load_checkpoint(path, kinds=("sasrec", "sasrec-distilled"))
    model = SASRec(SASRecConfig(**ckpt.hparams["model"]))
    model.load_state_dict(ckpt.tensors)
    return model.eval()


def test_a_long_history_feeds_its_last_items_and_excludes_all(tiny, recommender):
    n, width = recommender.catalogue.num_items, recommender.max_seq_len
    history = [(7 + t) % n + 1 for t in range(n - 10)]  # 30 distinct items, window of 16
    (ranked,) = recommender.rank([Query(history, k=10)])
    assert len(history) > width and sorted(ranked.items) == sorted(
        set(range(1, n + 1)) - set(history)
    )
    with torch.no_grad():
        scores = load_model(tiny["student"]).score(left_pad([history[-width:]], width))[0]
    torch.testing.assert_close(torch.tensor(ranked.scores), scores[ranked.items], rtol=0, atol=1e-5)
    (kept,) = recommender.rank([Query(history, k=10, exclude_history=False)])
    assert kept.items == scores.topk(10).indices.tolist()


def test_candidates_exclusions_and_fewer_than_k(recommender):
    history = [1, 2, 3]
    (free,) = recommender.rank([Query(history, k=6)])
    (without,) = recommender.rank([Query(history, k=5, exclude=free.items[:2])])
    assert without.items[:4] == free.items[2:] and not set(without.items) & set(free.items[:2])
    candidates = [2, 9, 17, 30, 40]
    (picked,) = recommender.rank([Query(history, k=10, candidates=candidates, exclude=[30])])
    assert set(picked.items) == {9, 17, 40}  # 2 is history, 30 excluded: fewer than k
    assert picked.scores == sorted(picked.scores, reverse=True) and picked.fallback is None


def test_batched_equals_one_at_a_time(recommender):
    queries = [
        Query([5, 6, 7], 5),
        Query([], 4),
        Query([10] * 3 + [11], 7, exclude_history=False),
        Query([1, 2], 3, candidates=[3, 4, 5, 6]),
    ]
    together = recommender.rank(queries)
    for query, ranked in zip(queries, together, strict=True):
        (alone,) = recommender.rank([query])
        assert alone.items == ranked.items and alone.fallback == ranked.fallback
        torch.testing.assert_close(alone.scores, ranked.scores, rtol=0, atol=1e-5)


def test_an_empty_history_falls_back_to_popularity(recommender):
    popularity = recommender.catalogue.popularity
    (cold,) = recommender.rank([Query([], k=8)])
    expected = sorted(range(1, len(popularity)), key=lambda i: (-popularity[i], i))[:8]
    assert cold.fallback == FALLBACK and cold.items == expected
    assert cold.scores == [float(popularity[i]) for i in expected]
    (restricted,) = recommender.rank(
        [Query([], k=3, candidates=expected[5:], exclude=[expected[5]])]
    )
    assert restricted.items == expected[6:8]


def test_popularity_counts_the_training_split_only(recommender):
    c = recommender.catalogue
    counts = np.zeros(c.num_items + 1, dtype=np.int64)
    for u in range(len(c.user_raw)):
        np.add.at(counts, c.items[c.offsets[u] : c.offsets[u + 1] - 2], 1)
    assert np.array_equal(c.popularity, counts)


def test_similar_items_by_cosine(recommender, tiny):
    table = torch.nn.functional.normalize(load_model(tiny["student"]).item_table().detach(), dim=1)
    (near,) = recommender.similar([5], k=4)
    sims = table[5] @ table.T
    sims[[0, 5]] = -torch.inf
    assert near.items == sims.topk(4).indices.tolist() and 5 not in near.items


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_user_history_and_users_file(tiny, recommender, capsys, tmp_path):
    base = [tiny["student"], "--data", tiny["data"]]
    code, out, _ = run([*base, "--user", "3", "-k", "5", "--json"], capsys)
    history = recommender.catalogue.user_history("3")
    expected = recommender.describe(recommender.rank([Query(history, 5)])[0], titles=True)
    assert code == 0 and json.loads(out) == {"user": "3", **expected, "ignored": []}
    code, out, err = run([*base, "--history", "5,6,nope", "-k", "3", "--json"], capsys)
    answer = json.loads(out)
    assert answer["items"] == recommender.catalogue.raw(
        recommender.rank([Query([5, 6], 3)])[0].items
    )
    assert answer["ignored"] == ["nope"] and "ignored unknown item ids" in err
    code, out, _ = run([*base, "--history", "", "-k", "2"], capsys)
    assert code == 0 and "popularity fallback: empty history" in out
    users = tmp_path / "users.txt"
    users.write_text("1\n3\n\n7\n")
    code, _, _ = run(
        [*base, "--users-file", users, "--out", tmp_path / "r.parquet", "-k", "4"], capsys
    )
    table = pq.read_table(tmp_path / "r.parquet").to_pydict()
    assert code == 0 and table["user"] == ["1"] * 4 + ["3"] * 4 + ["7"] * 4
    assert table["rank"] == [1, 2, 3, 4] * 3 and table["title"][0].startswith("Movie")
    for u in ("1", "3", "7"):
        ranked = recommender.rank([Query(recommender.catalogue.user_history(u), 4)])[0]
        rows = [i for i, user in enumerate(table["user"]) if user == u]
        assert [table["item"][i] for i in rows] == recommender.catalogue.raw(ranked.items)


def test_cli_bad_input_is_one_line_and_exit_2(tiny, capsys, tmp_path, monkeypatch):
    from recdata.testing import cyclic_sequences, make_prepared

    base = [tiny["student"], "--data", tiny["data"]]
    other = make_prepared(tmp_path / "other", cyclic_sequences(num_users=6))
    monkeypatch.chdir(tmp_path)  # no data/processed/<the card's dataset> here
    cases = [
        ([*base, "--user", "nope"], "unknown user id 'nope'"),
        (
            [*base, "--user", "1", "--candidates", "1,x9"],
            "unknown item ids in --candidates: ['x9']",
        ),
        ([*base, "--user", "1", "--exclude", "@" + str(tmp_path / "none")], "does not exist"),
        ([*base, "--user", "1", "-k", "0"], "-k must be at least 1"),
        ([*base, "--users-file", tmp_path / "u.txt"], "give --out PATH.parquet"),
        (
            [tiny["teacher"], "--data", tiny["data"], "--user", "1"],
            "recommendations come from a SASRec",
        ),
        ([tiny["student"], "--user", "1"], "pass the directory it was prepared to (--data DIR)"),
        ([tiny["student"], "--data", other, "--user", "1"], "pass the dataset it was trained on"),
        ([tmp_path, "--data", tiny["data"], "--user", "1"], "not a checkpoint directory"),
    ]
    for argv, message in cases:
        code, out, err = run(argv, capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert err.startswith("error: ") and message in err, (argv, err)


def save_student(
    directory: Path,
    data: Path,
    *,
    kind: str = "sasrec",
    seed: int = 0,
    cold_items: str = "none",
    **extra,
):
    """An untrained SASRec checkpoint for `data` (training adds nothing these tests need), as
    trained under the cold-item protocol ``cold_items`` (its card records it, as training's)."""
    dataset, _ = protocol_view(load_prepared(data), cold_items)
    torch.manual_seed(seed)
    config = SASRecConfig(
        num_items=dataset.num_items, hidden_size=16, num_blocks=1, num_heads=1, max_seq_len=8
    )
    model = SASRec(config).eval()
    info = {
        "dataset": dataset.name,
        "fingerprint": dataset.fingerprint,
        "num_items": dataset.num_items,
        **({"cold_items": cold_items, "cold_seed": 0} if cold_items != "none" else {}),
    }
    save_checkpoint(
        directory,
        kind=kind,
        tensors=model.state_dict(),
        hparams={"model": config.to_dict()},
        data=info,
        extra=extra,
    )
    return model


def test_a_distilled_student_recommends_as_the_plain_sasrec_it_folds_into(tiny, tmp_path):
    """The fold-in export: a sasrec-distilled checkpoint is a plain SASRec state dict."""
    distilled = tmp_path / "distilled"
    model = save_student(
        distilled,
        tiny["data"],
        kind="sasrec-distilled",
        seed=3,
        distillation={"teacher_digest": "ab" * 32},
    )
    recommender = Recommender.load(distilled, tiny["data"])
    history = [4, 5, 6, 7]
    (ranked,) = recommender.rank([Query(history, 5, exclude_history=False)])
    with torch.no_grad():
        expected = model.score(left_pad([history], 8))[0].topk(5).indices.tolist()
    assert recommender.info["kind"] == "sasrec-distilled" and ranked.items == expected


def test_a_cold_protocol_student_is_served_on_the_view_it_was_trained_on(tiny, tmp_path):
    """A student trained under dataset.cold_items loads on the prepared dataset it came from: the
    held-out items are in its catalogue with no training interaction, and it ranks a user's test
    history as its evaluation ranks that sample on the protocol's view."""
    spec = "random:0.25"
    model = save_student(tmp_path / "cold", tiny["data"], cold_items=spec)
    view, cold = protocol_view(load_prepared(tiny["data"]), spec)
    recommender = Recommender.load(tmp_path / "cold", tiny["data"])
    catalogue = recommender.catalogue
    assert recommender.info["data_fingerprint"] == view.fingerprint
    assert recommender.info["cold_items"] == spec and cold.sum() == 10
    assert catalogue.popularity[cold].sum() == 0 and catalogue.popularity[~cold][1:].min() > 0
    assert catalogue.user_raw == view.user_raw_ids
    rows = fresh_evaluation(tiny, model, view)
    histories = histories_of(recommender)
    queries = [Query(histories[r["user_id"] - 1], 20) for r in rows]
    assert [r.items for r in recommender.rank(queries)] == [r["topk_items"] for r in rows]


def test_the_new_item_slot_puts_the_best_new_item_where_the_calibration_says(tiny, tmp_path):
    """A calibration that rates every new item a near-certain target puts each user's best-scored
    new item first, the rest in the model's order; one that never rates it keeps the plain list;
    a query without the slot, or with an empty history (popularity), is not touched."""
    from runkit.new_items import Calibration

    save_student(tmp_path / "cold", tiny["data"], cold_items="random:0.25")
    plain = Recommender.load(tmp_path / "cold", tiny["data"])
    new = plain.catalogue.new_items
    histories = histories_of(plain)[:12]
    sure = Calibration(warm=(1.0, 0.0, -3.0), cold=(0.0, 0.0, 6.0))
    never = Calibration(warm=(1.0, 0.0, 0.0), cold=(0.0, 0.0, -30.0))
    for calibration, first in ((sure, True), (never, False)):
        plain.new_item_slot = calibration
        for history in histories:
            (slotted,) = plain.rank([Query(history, 10, new_item_slot=True)])
            (model,) = plain.rank([Query(history, 41)])
            best_new = next(i for i in model.items if new[i])
            expected = (
                [best_new] + [i for i in model.items if i != best_new] if first else model.items
            )
            assert slotted.items == expected[:10]
    plain.new_item_slot = sure
    (unslotted, fallback) = plain.rank([Query(histories[0], 10), Query([], 10, new_item_slot=True)])
    assert unslotted.items == plain.rank([Query(histories[0], 10)])[0].items
    assert fallback.fallback == FALLBACK and not any(new[i] for i in fallback.items)


def test_fitting_the_new_item_slot_and_its_errors(tiny, tmp_path, capsys):
    """`--fit-new-item-slot` writes the fit beside the checkpoint, for that student and data; the
    recommender then places new items; a stale fit, a slot asked of a student without one and a
    catalogue without new items are each one error line."""
    from runkit.new_items import Calibration
    from sasrec.new_item_slot import SIDECAR

    cold = tmp_path / "cold"
    save_student(cold, tiny["data"], cold_items="random:0.25")
    code, _, err = run([cold, "--data", tiny["data"], "--fit-new-item-slot"], capsys)
    fitted = json.loads((cold / SIDECAR).read_text())
    recommender = Recommender.load(cold, tiny["data"])
    assert code == 0 and "new-item slot fitted on" in err and recommender.info["new_item_slot"]
    assert fitted["student_digest"] == recommender.info["digest"] and fitted["new_items"] == 10
    assert recommender.new_item_slot == Calibration.from_dict(fitted["calibration"])
    assert fitted["valid"]["users"] == len(recommender.catalogue.user_raw)
    code, out, _ = run([cold, "--data", tiny["data"], "--user", "1", "--new-item-slot"], capsys)
    assert code == 0 and out.startswith("user 1: top 10")

    plain = tmp_path / "plain"
    save_student(plain, tiny["data"])
    (cold / SIDECAR).write_text(json.dumps({**fitted, "student_digest": "0" * 64}))
    cases = [
        ([cold, "--user", "1"], "was fitted for another student or other data"),
        ([plain, "--user", "1", "--new-item-slot"], "this student has no new-item slot"),
        ([plain, "--fit-new-item-slot"], "there is no new item to place"),
    ]
    for argv, message in cases:
        code, out, err = run([argv[0], "--data", tiny["data"], *argv[1:]], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, err)
    code, _, _ = run([cold, "--data", tiny["data"], "--fit-new-item-slot"], capsys)  # refit
    assert code == 0 and json.loads((cold / SIDECAR).read_text()) == fitted


def test_any_prepared_dataset_string_ids_without_titles(tmp_path, capsys):
    from recdata.cli import main as recdata_main
    from recdata.synthetic import generate

    inter, _ = generate(40, 30, 400, seed=1, id_style="str", with_text=False).write_csv(
        tmp_path / "raw"
    )
    recdata_main(["prepare", "shop", "--from", str(inter), "--out", str(tmp_path / "shop")])
    save_student(tmp_path / "student", tmp_path / "shop")
    capsys.readouterr()
    recommender = Recommender.load(tmp_path / "student", tmp_path / "shop")
    user = recommender.catalogue.user_raw[2]
    code, out, _ = run(
        [tmp_path / "student", "--data", tmp_path / "shop", "--user", user, "--json"], capsys
    )
    answer = json.loads(out)
    assert code == 0 and "titles" not in answer and not recommender.catalogue.has_titles
    assert set(answer["items"]) <= set(recommender.catalogue.item_raw)
    assert all(isinstance(i, str) and not i.isdigit() for i in answer["items"])
    expected = recommender.rank([Query(recommender.catalogue.user_history(user), 10)])[0]
    assert answer["items"] == recommender.catalogue.raw(expected.items)


def test_the_console_scripts_are_installed():
    from importlib.metadata import entry_points

    from sasrec import export, recommend

    (command,) = entry_points(group="console_scripts", name="recommend")
    (exporter,) = entry_points(group="console_scripts", name="export-student")
    assert command.load() is recommend.main and exporter.load() is export.main
    assert Path(sys.executable).with_name("recommend").is_file()
