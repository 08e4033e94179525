"""Uncertainty of a comparison between two models on the same test samples.

One seed moves ML-100K NDCG@10 by ~5%, as much as the effects measured, so a gain is reported as
the paired per-sample difference -- the same user scored by both models, so the user-level noise
cancels -- with its standard error and a bootstrap 95% interval (resampling users, fixed seed).
Over several seeds (one baseline and one other model per seed), each user's difference is first
averaged over the seeds, then over users: users stay the unit of resampling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from runkit.metrics import CANDIDATE_METRIC

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def per_sample(predictions: pa.Table, metric: str) -> np.ndarray:
    """Per-sample ``hr@K``, ``ndcg@K`` or ``hr@1_of_20`` of a predictions table (``user_id``,
    ``position``, 1-based ``rank``, ``hit@1_of_20``), in (user_id, position) order."""
    order = np.lexsort(
        (predictions.column("position").to_numpy(), predictions.column("user_id").to_numpy())
    )
    if metric == CANDIDATE_METRIC:
        return predictions.column("hit@1_of_20").to_numpy()[order].astype(np.float64)
    name, _, k = metric.partition("@")
    if name not in ("hr", "ndcg") or not k.isdigit():
        raise ValueError(
            f"per-sample metric must be hr@K, ndcg@K or {CANDIDATE_METRIC}, got {metric!r}"
        )
    rank = predictions.column("rank").to_numpy()[order].astype(np.float64) - 1  # 0-based
    hit = rank < int(k)
    return hit.astype(np.float64) if name == "hr" else np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)


def in_slice(predictions: pa.Table, group: str) -> np.ndarray:
    """Bool mask, in (user_id, position) order like :func:`per_sample`, of the samples of one
    slice group (a value of the `target_group` or `history_group` column)."""
    order = np.lexsort(
        (predictions.column("position").to_numpy(), predictions.column("user_id").to_numpy())
    )
    mask = np.zeros(predictions.num_rows, dtype=bool)
    for column in ("target_group", "history_group"):
        if column in predictions.column_names:
            mask |= np.asarray(predictions.column(column).to_pylist(), dtype=object) == group
    return mask[order]


def read_predictions(run_dir_or_file: Path) -> pa.Table:
    """A run's test_predictions.parquet (or the file given)."""
    path = Path(run_dir_or_file)
    return pq.read_table(path / "test_predictions.parquet" if path.is_dir() else path)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (other - baseline) over samples, its standard error and bootstrap 95% interval."""

    mean: float
    se: float
    ci95: tuple[float, float]
    n: int
    seeds: int = 1

    def to_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci95)}

    def significant(self, sigmas: float = 2.0) -> bool:
        return abs(self.mean) > sigmas * self.se

    def text(self, digits: int = 4) -> str:
        lo, hi = self.ci95
        return (
            f"{self.mean:+.{digits}f} ± {self.se:.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
        )


def paired_difference(baselines: list[np.ndarray], others: list[np.ndarray]) -> PairedDifference:
    """Paired difference of per-sample scores, one (baseline, other) pair of arrays per seed, each
    over the same samples in the same order."""
    if not baselines or len(baselines) != len(others):
        raise ValueError("need one baseline array per other array, at least one")
    shapes = {a.shape for a in [*baselines, *others]}
    if len(shapes) != 1:
        raise ValueError(
            f"per-sample arrays must cover the same samples, got shapes {sorted(shapes)}"
        )
    # per sample, over seeds
    diffs = np.mean([o - b for b, o in zip(baselines, others, strict=True)], axis=0)
    n = len(diffs)
    se = float(diffs.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = diffs[rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return PairedDifference(float(diffs.mean()), se, (float(lo), float(hi)), n, len(baselines))


def mean_interval(values: np.ndarray) -> tuple[float, float]:
    """Bootstrap 95% interval of a per-sample metric's mean (error bars of one model's figure)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)
