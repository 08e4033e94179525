"""Model-agnostic evaluation: any scorer of batches -> metrics files and per-sample predictions."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from recdata.atomic import atomic_file, write_json
from recdata.batching import history_mask
from runkit.metrics import (
    CANDIDATE_METRIC,
    DEFAULT_KS,
    candidate_hits_at_1,
    ranking_metrics,
    target_ranks,
)

TIE_RULE = "ties count against the target (rank = #other items scoring >= target)"
Scorer = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class EvalResult:
    metrics: dict[str, float]  # following `mask_history`
    metrics_unmasked: dict[str, float]
    metrics_masked: dict[str, float]
    protocol: dict
    predictions: pa.Table = field(repr=False)

    def headline(self) -> str:
        return "  ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())


@torch.no_grad()
def evaluate(
    score_fn: Scorer,
    batches: Iterable[dict[str, torch.Tensor]],
    num_items: int,
    *,
    ks=DEFAULT_KS,
    mask_history: bool = True,
    top_n: int = 20,
    split: str = "test",
    progress: bool = True,
    extra_protocol: dict | None = None,
) -> EvalResult:
    keys, targets, ranks_raw, ranks_masked, tops, hits = [], [], [], [], [], []
    for batch in tqdm(batches, desc=f"eval {split}", disable=not progress, leave=False):
        scores = score_fn(batch).float()
        seen = history_mask(batch["full_history"], num_items, keep=batch["target"])
        ranks_raw.append(target_ranks(scores, batch["target"]))
        ranks_masked.append(target_ranks(scores, batch["target"], seen))
        ranked = scores.clone()
        ranked[:, 0] = -torch.inf
        if mask_history:
            ranked.masked_fill_(seen, -torch.inf)
        tops.append(ranked.topk(min(top_n, num_items), dim=1).indices)
        if "candidates" in batch:
            hits.append(candidate_hits_at_1(scores, batch["candidates"]))
        keys.append(torch.stack([batch["user_id"], batch["position"]], 1))
        targets.append(batch["target"])
    key = torch.cat(keys)
    # predictions in (user_id, position) order whatever order the loader used (e.g. by length)
    order = (
        torch.argsort(key[:, 0] * (int(key[:, 1].max()) + 1) + key[:, 1])
        if len(key)
        else torch.arange(0)
    )
    key, target = key[order], torch.cat(targets)[order]
    r_raw, r_masked, top = (
        torch.cat(ranks_raw)[order],
        torch.cat(ranks_masked)[order],
        torch.cat(tops)[order],
    )
    m_raw, m_masked = ranking_metrics(r_raw, ks), ranking_metrics(r_masked, ks)
    hit = torch.cat(hits)[order] if hits else None
    for m in (m_raw, m_masked):
        if hit is not None:
            m[CANDIDATE_METRIC] = hit.double().mean().item()
    chosen = r_masked if mask_history else r_raw
    predictions = pa.table(
        {
            "user_id": pa.array(key[:, 0].numpy(), pa.int32()),
            "position": pa.array(key[:, 1].numpy(), pa.int32()),
            "target": pa.array(target.numpy(), pa.int32()),
            "rank": pa.array((chosen + 1).numpy(), pa.int32()),  # 1-based: hit@K iff rank <= K
            "rank_unmasked": pa.array((r_raw + 1).numpy(), pa.int32()),
            "topk_items": pa.array(top.numpy().tolist(), pa.list_(pa.int32())),
            **({"hit@1_of_20": pa.array(hit.numpy())} if hit is not None else {}),
        }
    )
    protocol = {
        "split": split,
        "num_samples": len(key),
        "full_ranking": {"ks": list(ks), "mask_history": mask_history, "ties": TIE_RULE},
        **(extra_protocol or {}),
    }
    return EvalResult(m_masked if mask_history else m_raw, m_raw, m_masked, protocol, predictions)


def write_eval_result(
    run_dir: Path, result: EvalResult, model_kind: str, prefix: str = "test"
) -> None:
    """<prefix>_metrics.json (machine), <prefix>_metrics.txt (human), <prefix>_predictions.parquet."""
    run_dir = Path(run_dir)
    payload = {
        "model": model_kind,
        "split": result.protocol["split"],
        "metrics": result.metrics,
        "metrics_unmasked": result.metrics_unmasked,
        "metrics_masked": result.metrics_masked,
        "protocol": result.protocol,
    }
    write_json(run_dir / f"{prefix}_metrics.json", payload)
    lines = [
        f"model: {model_kind}",
        f"split: {result.protocol['split']}",
        f"samples: {result.protocol['num_samples']}",
        f"history masked: {result.protocol['full_ranking']['mask_history']}",
        "",
    ]
    width = max(len(k) for k in result.metrics)
    lines += [f"{'metric'.ljust(width)}  {'reported':>9}  {'unmasked':>9}  {'masked':>9}"]
    for name, value in result.metrics.items():
        lines.append(
            f"{name.ljust(width)}  {value:9.4f}  {result.metrics_unmasked[name]:9.4f}  "
            f"{result.metrics_masked[name]:9.4f}"
        )
    with atomic_file(run_dir / f"{prefix}_metrics.txt") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_file(run_dir / f"{prefix}_predictions.parquet") as tmp:
        pq.write_table(result.predictions, tmp)


def read_metrics(path: Path) -> dict:
    return json.loads(Path(path).read_text())
