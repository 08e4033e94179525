"""Ranking metrics against a brute-force reference, the tie rule, masking, and evaluate()."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recdata.datamodule import SequentialDataModule
from runkit.evaluation import evaluate, read_metrics, write_eval_result
from runkit.metrics import DEFAULT_KS, candidate_hits_at_1, ranking_metrics, target_ranks


def reference_rank(row: list[float], target: int, excluded: set[int]) -> int:
    """0-based rank among items 1..N: how many other ranked items score >= the target."""
    ranked = [j for j in range(1, len(row)) if j not in excluded or j == target]
    if math.isnan(row[target]):
        return len(ranked) - 1  # NaN ranks last
    return sum(1 for j in ranked if j != target and row[j] >= row[target])


def reference_metrics(ranks: list[int], ks=DEFAULT_KS) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"hr@{k}"] = sum(r < k for r in ranks) / len(ranks)
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_and_metrics_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    batch, n = 64, 40
    # one decimal -> plenty of exact ties; the target is often tied with other items
    scores = np.round(rng.normal(size=(batch, n + 1)), 1).astype(np.float32)
    scores[:, 0] = 100.0  # padding scores highest: it must still never be ranked
    targets = rng.integers(1, n + 1, size=batch)
    exclude = rng.random((batch, n + 1)) < 0.2
    exclude[np.arange(batch), targets] = False
    for mask in (None, exclude):
        got = target_ranks(
            torch.tensor(scores),
            torch.tensor(targets),
            None if mask is None else torch.tensor(mask),
        )
        want = [
            reference_rank(
                scores[b].tolist(),
                int(targets[b]),
                set() if mask is None else set(np.flatnonzero(mask[b]).tolist()),
            )
            for b in range(batch)
        ]
        assert got.tolist() == want
        metrics = ranking_metrics(got)
        for key, value in reference_metrics(want).items():
            assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert set(metrics) == {f"{m}@{k}" for k in (5, 10, 20) for m in ("hr", "ndcg")}


def test_tie_rule_constant_scorer_scores_zero():
    n = 50
    scores = torch.zeros(8, n + 1)
    targets = torch.arange(1, 9)
    ranks = target_ranks(scores, targets)
    assert ranks.tolist() == [n - 1] * 8  # last among its N-1 ties
    assert all(v == 0.0 for v in ranking_metrics(ranks).values())
    # a tie with a single other item already costs one place
    scores[0, 7] = scores[0, 1] = 1.0
    assert target_ranks(scores[:1], torch.tensor([1])).item() == 1


def test_nan_target_ranks_last_and_nan_others_do_not_count():
    scores = torch.tensor([[0.0, float("nan"), 3.0, 2.0, 1.0, 0.5]])
    assert target_ranks(scores, torch.tensor([1])).item() == 4  # last of 5 items
    exclude = torch.tensor([[False, False, True, False, False, False]])
    assert target_ranks(scores, torch.tensor([1]), exclude).item() == 3  # last of 4
    scores = torch.tensor([[0.0, 1.0, float("nan"), 2.0]])
    assert target_ranks(scores, torch.tensor([1])).item() == 1  # only item 3 beats it
    assert ranking_metrics(torch.tensor([4]), ks=(1, 5))["hr@5"] == 1.0
    assert math.isnan(ranking_metrics(torch.tensor([], dtype=torch.int64))["hr@10"])


def test_history_masking_excludes_history_but_never_the_target():
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    target = torch.tensor([3])
    assert target_ranks(scores, target).item() == 2
    history = torch.zeros_like(scores, dtype=torch.bool)
    history[0, [1, 2, 3]] = True  # the target itself is also in the history (a repeat)
    # callers keep the target unmasked (history_mask(keep=target)); then it ranks first
    history[0, 3] = False
    assert target_ranks(scores, target, history).item() == 0


def test_candidate_hits_at_1_ties_are_misses():
    scores = torch.tensor(
        [
            [0.0, 3.0, 1.0, 2.0, 0.5],  # target 1 strictly best -> hit
            [0.0, 3.0, 3.0, 2.0, 0.5],  # target tied with a negative -> miss
            [0.0, 1.0, 2.0, 0.0, 0.0],  # a negative is better -> miss
            [0.0, float("nan"), 1.0, 2.0, 0.5],  # NaN target -> miss
            [9.0, 1.0, 0.0, 0.0, 0.0],  # padding's score is irrelevant -> hit
        ]
    )
    candidates = torch.tensor([[1, 2, 3, 4]] * 5)
    assert candidate_hits_at_1(scores, candidates).tolist() == [True, False, False, False, True]
    assert not candidate_hits_at_1(torch.zeros(3, 5), candidates[:3]).any()  # constant scorer


# --- evaluate() and its files -----------------------------------------------------------------


def make_scorer(num_items: int, boost_history: bool = False):
    table = torch.randn(num_items + 1, 8, generator=torch.Generator().manual_seed(0))

    def score(batch):
        scores = table[batch["history"][:, -1]] @ table.T
        if boost_history:  # a model that loves the items already seen
            scores = scores.scatter(1, batch["full_history"], 100.0)
        return scores

    return score


@pytest.mark.parametrize("mask_history", [True, False])
def test_evaluate_writes_files_whose_ranks_recompute_the_metrics(
    random_prepared, tmp_path, mask_history
):
    dm = SequentialDataModule(random_prepared.path, max_seq_len=6, eval_batch_size=9)
    dm.setup()
    n = dm.num_items
    result = evaluate(
        make_scorer(n, boost_history=True),
        dm.loader("test"),
        n,
        mask_history=mask_history,
        top_n=10,
        progress=False,
    )
    run_dir = tmp_path / "run"
    write_eval_result(run_dir, result, model_kind="sasrec")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "test_metrics.json",
        "test_metrics.txt",
        "test_predictions.parquet",
    ]

    preds = pq.read_table(run_dir / "test_predictions.parquet").to_pydict()
    users, positions = preds["user_id"], preds["position"]
    assert list(zip(users, positions, strict=True)) == list(
        zip(dm.keys["test"].user_ids.tolist(), dm.keys["test"].positions.tolist(), strict=True)
    )
    assert preds["target"] == [
        int(random_prepared.sequence(u)[p]) for u, p in zip(users, positions, strict=True)
    ]
    for column, metrics in (("rank", result.metrics), ("rank_unmasked", result.metrics_unmasked)):
        ranks = np.array(preds[column])  # 1-based
        assert ranks.min() >= 1 and ranks.max() <= n
        for k in (5, 10, 20):
            assert metrics[f"hr@{k}"] == pytest.approx(np.mean(ranks <= k))
            assert metrics[f"ndcg@{k}"] == pytest.approx(
                np.mean(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0))
            )
    assert result.metrics["hr@1_of_20"] == pytest.approx(np.mean(preds["hit@1_of_20"]))
    # the boosted history floods the unmasked top-K; masking removes it, never the target
    assert result.metrics_masked["hr@20"] > result.metrics_unmasked["hr@20"]
    expected = result.metrics_masked if mask_history else result.metrics_unmasked
    assert result.metrics == expected

    for u, p, top in zip(users, positions, preds["topk_items"], strict=True):
        assert len(top) == 10 and 0 not in top
        history = set(random_prepared.sequence(u)[:p].tolist())
        assert bool(set(top) & history) is (not mask_history)

    payload = read_metrics(run_dir / "test_metrics.json")
    assert payload["model"] == "sasrec" and payload["split"] == "test"
    assert payload["metrics"] == pytest.approx(expected)
    assert payload["protocol"]["full_ranking"]["mask_history"] is mask_history
    assert payload["protocol"]["num_samples"] == random_prepared.num_users
    assert json.loads((run_dir / "test_metrics.json").read_text()) == payload
    text = (run_dir / "test_metrics.txt").read_text()
    assert f"history masked: {mask_history}" in text
    rows = {
        line.split()[0]: [float(x) for x in line.split()[1:]]
        for line in text.splitlines()
        if line.startswith(("hr@", "ndcg@"))
    }
    assert set(rows) == set(result.metrics)
    for name, (reported, unmasked, masked) in rows.items():
        assert reported == pytest.approx(expected[name], abs=5e-5)
        assert unmasked == pytest.approx(result.metrics_unmasked[name], abs=5e-5)
        assert masked == pytest.approx(result.metrics_masked[name], abs=5e-5)


def test_metrics_by_slice_are_the_metrics_of_the_samples_of_each_group(random_prepared, tmp_path):
    """Every sample is labelled with its target's and its user's group; each slice's metrics are
    the reported ranks' metrics over exactly those samples, and the files carry them."""
    dm = SequentialDataModule(
        random_prepared.path, max_seq_len=6, eval_batch_size=9, head_fraction=0.3
    )
    dm.setup()
    result = evaluate(
        make_scorer(dm.num_items), dm.loader("test"), dm.num_items, progress=False, slices=dm.slices
    )
    preds = result.predictions.to_pydict()
    targets, users = np.array(preds["target"]), np.array(preds["user_id"])
    expected_groups = dm.slices.of(users, targets)
    ranks = torch.tensor(preds["rank"]) - 1
    for group, metrics in result.metrics_by_slice.items():
        column = "target_group" if group in ("head", "tail", "cold") else "history_group"
        members = np.array(preds[column]) == group
        np.testing.assert_array_equal(members, expected_groups[group])
        assert metrics["samples"] == int(members.sum()) > 0
        again = ranking_metrics(ranks[torch.from_numpy(members)], DEFAULT_KS)
        assert all(math.isclose(metrics[k], v) for k, v in again.items())
    assert set(result.metrics_by_slice) == {"head", "tail", "short", "long"}
    write_eval_result(tmp_path, result, model_kind="sasrec")
    payload = json.loads((tmp_path / "test_metrics.json").read_text())
    assert (
        payload["metrics_by_slice"] == result.metrics_by_slice and "slices" in payload["protocol"]
    )
    assert "tail" in (tmp_path / "test_metrics.txt").read_text()
