"""`train-student`: train and evaluate the SASRec baseline (seed guide §3.1)."""

from __future__ import annotations

from omegaconf import DictConfig

from recdata.runs import hydra_entry
from sasrec.model import SASRecConfig
from sasrec.module import SASRecModule
from sasrec.recipe import build_datamodule, run_training, seed_run


def student_config(cfg: DictConfig, num_items: int) -> SASRecConfig:
    s = cfg.student
    return SASRecConfig(num_items=num_items, hidden_size=s.hidden_size, num_blocks=s.num_blocks,
                        num_heads=s.num_heads, dropout=s.dropout, max_seq_len=s.max_seq_len)  # fmt: skip


def build_student(cfg: DictConfig, num_items: int) -> SASRecModule:
    return SASRecModule(student_config(cfg, num_items), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, seed=cfg.seed)


@hydra_entry("run_student")
def main(cfg: DictConfig) -> None:
    seed_run(cfg)
    dm = build_datamodule(cfg, max_seq_len=cfg.student.max_seq_len, train_mode="sequence")
    run_training(cfg, build_student(cfg, dm.num_items), dm)


if __name__ == "__main__":
    main()
