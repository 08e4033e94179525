"""Paired per-sample differences: mean, SE and bootstrap interval against hand computations."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from compare.stats import mean_interval, paired_difference, per_sample


def test_paired_difference_of_one_seed():
    base = np.array([0.0, 1.0, 0.5, 0.25, 0.0, 1.0])
    other = np.array([0.5, 1.0, 0.5, 0.0, 1.0, 1.0])
    d = paired_difference([base], [other])
    diffs = other - base
    assert d.mean == pytest.approx(diffs.mean()) and d.n == 6 and d.seeds == 1
    assert d.se == pytest.approx(diffs.std(ddof=1) / np.sqrt(6))
    lo, hi = d.ci95
    assert lo < d.mean < hi and paired_difference([base], [other]).ci95 == d.ci95  # seeded
    assert d.to_dict()["ci95"] == [lo, hi]


def test_several_seeds_average_each_users_difference_before_the_users():
    rng = np.random.default_rng(0)
    bases = [rng.random(50) for _ in range(3)]
    others = [b + rng.normal(0.1, 0.05, 50) for b in bases]
    d = paired_difference(bases, others)
    per_user = np.mean([o - b for b, o in zip(bases, others, strict=True)], axis=0)
    assert d.mean == pytest.approx(per_user.mean()) and d.n == 50 and d.seeds == 3
    assert d.se == pytest.approx(per_user.std(ddof=1) / np.sqrt(50))
    assert d.significant() and not paired_difference(bases, bases).significant()


def test_mismatched_samples_are_refused():
    with pytest.raises(ValueError, match="same samples"):
        paired_difference([np.zeros(3)], [np.zeros(4)])
    with pytest.raises(ValueError, match="one baseline array per other"):
        paired_difference([np.zeros(3)], [])


def test_per_sample_metrics_follow_the_rank_in_key_order():
    table = pa.table(
        {
            "user_id": [2, 1, 3],
            "position": [5, 4, 9],
            "rank": [1, 3, 12],
            "hit@1_of_20": [True, False, True],
        }
    )
    assert per_sample(table, "hr@10").tolist() == [1.0, 1.0, 0.0]  # users 1, 2, 3
    assert per_sample(table, "ndcg@10").tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert per_sample(table, "hr@1_of_20").tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="hr@K, ndcg@K"):
        per_sample(table, "mrr@10")
    lo, hi = mean_interval(np.array([0.0, 1.0] * 50))
    assert lo < 0.5 < hi
