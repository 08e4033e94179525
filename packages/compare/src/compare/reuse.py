"""Reusing an expensive model's stored test result: when its run directory already holds
`test_metrics.json` and `test_predictions.parquet` written under exactly this protocol for exactly
this checkpoint, eval-all reads them instead of running the LLM again."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig

from compare.nested import flatten
from recdata.datamodule import SequentialDataModule
from runkit.evaluation import TIE_RULE, EvalResult
from runkit.metrics import CANDIDATE_METRIC, ranking_metrics
from runkit.recipe import eval_protocol


def expected_protocol(cfg: DictConfig, dm: SequentialDataModule) -> dict:
    """Exactly the protocol `evaluate` records for this configuration's test split."""
    return {
        "split": "test",
        "num_samples": len(dm.keys["test"]),
        "full_ranking": {
            "ks": [int(k) for k in cfg.eval.ks],
            "mask_history": bool(cfg.eval.mask_history),
            "ties": TIE_RULE,
        },
        **eval_protocol(cfg, dm),
        "slices": dm.slices.describe(),
    }


def metric_names(protocol: dict) -> set[str]:
    names = {f"{m}@{k}" for k in protocol["full_ranking"]["ks"] for m in ("hr", "ndcg")}
    if protocol.get("candidates", {}).get("num"):
        names.add(CANDIDATE_METRIC)
    return names


def _shown(values: dict, key: str) -> str:
    """Canonical text of one value, so the comparison is strict: 1 != 1.0 != true,
    [5, 10] != [10, 5]."""
    return json.dumps(values[key], sort_keys=True) if key in values else "<missing>"


def protocol_mismatch(stored: dict, expected: dict, kind: str) -> str | None:
    """Why a stored `test_metrics.json` payload was NOT produced under the `expected` protocol
    (same model kind, test split, data fingerprint/size, ks, history masking, candidate sets),
    or None when it was. Every protocol field must be equal; nothing is assumed."""
    if not isinstance(stored, dict):
        return "test_metrics.json is not a JSON object"
    if stored.get("model") != kind:
        return f"test_metrics.json is of a {stored.get('model')!r} model, not {kind!r}"
    if stored.get("split") != "test":
        return f"test_metrics.json is of split {stored.get('split')!r}, not 'test'"
    if not isinstance(stored.get("protocol"), dict):
        return "test_metrics.json records no protocol"
    got, want = flatten(stored["protocol"]), flatten(expected)
    differ = [k for k in sorted(got.keys() | want.keys()) if _shown(got, k) != _shown(want, k)]
    if differ:
        shown = "; ".join(
            f"{k}: stored {_shown(got, k)}, now {_shown(want, k)}" for k in differ[:4]
        )
        return f"protocol differs ({shown})"
    names = metric_names(expected)
    for field in ("metrics", "metrics_unmasked", "metrics_masked"):
        values = stored.get(field)
        if not isinstance(values, dict) or set(values) != names:
            return f"test_metrics.json {field} has {sorted(values or {})}, expected {sorted(names)}"
        if not all(isinstance(v, int | float) for v in values.values()):
            return f"test_metrics.json {field} holds non-numeric values"
    if (
        stored["metrics_masked"]
        if expected["full_ranking"]["mask_history"]
        else stored["metrics_unmasked"]
    ) != stored["metrics"]:
        return "test_metrics.json metrics do not follow its mask_history"
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _int64(table: pa.Table, column: str) -> torch.Tensor:
    return torch.from_numpy(table.column(column).to_numpy().astype(np.int64))


def predictions_mismatch(table: pa.Table, stored: dict, keys) -> str | None:
    """Why stored per-sample predictions do not belong to these metrics and test samples."""
    protocol = stored["protocol"]
    with_candidates = bool(protocol.get("candidates", {}).get("num"))
    columns = {"user_id", "position", "target", "rank", "rank_unmasked", "topk_items"}
    columns |= {"hit@1_of_20"} if with_candidates else set()
    if not columns <= set(table.column_names):
        return f"test_predictions.parquet lacks {sorted(columns - set(table.column_names))}"
    users, positions = _int64(table, "user_id"), _int64(table, "position")
    if not (torch.equal(users, keys.user_ids) and torch.equal(positions, keys.positions)):
        return "test_predictions.parquet covers other test samples"
    ks = protocol["full_ranking"]["ks"]
    for column, field in (("rank", "metrics"), ("rank_unmasked", "metrics_unmasked")):
        ranks = _int64(table, column) - 1
        again = ranking_metrics(ranks, ks)
        if with_candidates:
            again[CANDIDATE_METRIC] = float(table.column("hit@1_of_20").to_numpy().mean())
        if not all(_close(again[k], stored[field][k]) for k in again):
            return f"test_predictions.parquet does not reproduce test_metrics.json {field}"
    return None


def reuse_stored_result(
    ckpt_dir: Path, card: dict, expected: dict, keys
) -> tuple[EvalResult | None, str]:
    """(the stored test result of this checkpoint, "reused") when its run directory holds one
    made under `expected`; else (None, why not)."""
    if ckpt_dir.parent.name != "checkpoints":
        return None, f"{ckpt_dir} is not inside a run's checkpoints/ directory"
    run_dir = ckpt_dir.parent.parent
    metrics_path, predictions_path = (
        run_dir / "test_metrics.json",
        run_dir / "test_predictions.parquet",
    )
    if not (metrics_path.is_file() and predictions_path.is_file()):
        return None, f"{run_dir} has no test_metrics.json + test_predictions.parquet"
    try:
        stored = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"{metrics_path} is unreadable ({exc})"
    reason = protocol_mismatch(stored, expected, card["kind"])
    if reason:
        return None, reason
    if (card.get("metrics") or {}).get("test") != stored["metrics"]:
        return (
            None,
            f"{metrics_path} is not the test result of {ckpt_dir} (card.json metrics.test differs)",
        )
    try:
        table = pq.read_table(predictions_path)
    except (OSError, pa.ArrowException) as exc:
        return None, f"{predictions_path} is unreadable ({exc})"
    reason = predictions_mismatch(table, stored, keys)
    if reason:
        return None, reason
    result = EvalResult(
        stored["metrics"],
        stored["metrics_unmasked"],
        stored["metrics_masked"],
        stored["protocol"],
        table,
        stored.get("metrics_by_slice", {}),
    )
    return result, "reused"
