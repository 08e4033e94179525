"""The dataset a run uses (`dataset.*`): prepared on first use when it is a built-in one, its
fingerprint (which every checkpoint and lookup is tied to), and the run's DataModule."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from recdata.contract import read_meta
from recdata.datamodule import SequentialDataModule
from recdata.prepare import ensure_prepared
from runkit.chunking import rows_per_block


def prepared_dir(cfg: DictConfig) -> Path:
    data = cfg.dataset
    return ensure_prepared(
        data.name,
        Path(data.data_dir),
        Path(data.processed_dir),
        Path(cfg.paths.cache_dir),
        data.min_user_interactions,
    )


def dataset_fingerprint(cfg: DictConfig) -> str:
    """The fingerprint of the configured dataset (from its meta.json; no table is read)."""
    return read_meta(prepared_dir(cfg))["fingerprint"]


def build_datamodule(
    cfg: DictConfig,
    *,
    max_seq_len: int,
    train_mode: str = "user_sequences",
    batch_size: int | None = None,
    train_samples: str = "all",
    window_stride: int | None = None,
    eval_order: str = "key",
) -> SequentialDataModule:
    data = cfg.dataset
    processed = prepared_dir(cfg)
    dm = SequentialDataModule(
        processed,
        max_seq_len=max_seq_len,
        batch_size=batch_size or cfg.train.batch_size,
        eval_batch_size=cfg.train.eval_batch_size,
        limit_data_rows=data.limit_data_rows,
        train_mode=train_mode,
        num_workers=cfg.train.num_workers,
        num_candidates=cfg.eval.num_candidates,
        candidate_seed=cfg.eval.candidate_seed,
        seed=cfg.seed,
        train_samples=train_samples,
        window_stride=window_stride,
        eval_order=eval_order,
        head_fraction=cfg.eval.get("head_fraction", 0.2),
        short_quantile=cfg.eval.get("short_history_quantile", 0.5),
        cold_items=data.get("cold_items", "none"),
        cold_seed=data.get("cold_seed", 0),
    )
    dm.setup()
    # an evaluation batch holds a score per item for each row: bounded on big catalogues
    dm.eval_batch_size = min(dm.eval_batch_size, rows_per_block(dm.num_items + 1))
    return dm


def data_card(dm: SequentialDataModule) -> dict:
    return {
        "dataset": dm.dataset.name,
        "fingerprint": dm.fingerprint,
        "num_items": dm.num_items,
        "limit_data_rows": dm.limit_data_rows,
        "train_samples": len(dm.keys["train"]),
        **(
            {"cold_items": dm.cold_items, "cold_seed": dm.cold_seed}
            if dm.cold_items != "none"
            else {}
        ),
    }
