"""`train-student`: train and evaluate the SASRec baseline."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from runkit.data import build_datamodule
from runkit.entry import hydra_entry
from runkit.recipe import run_training, seed_run
from sasrec.model import SASRecConfig
from sasrec.module import SASRecModule


def student_config(cfg: DictConfig, num_items: int) -> SASRecConfig:
    return SASRecConfig(num_items=num_items, **OmegaConf.to_container(cfg.student, resolve=True))


def build_student(cfg: DictConfig, num_items: int) -> SASRecModule:
    return SASRecModule(
        student_config(cfg, num_items),
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        seed=cfg.seed,
    )


@hydra_entry("run_student")
def main(cfg: DictConfig) -> None:
    seed_run(cfg)
    dm = build_datamodule(cfg, max_seq_len=cfg.student.max_seq_len)
    run_training(cfg, build_student(cfg, dm.num_items), dm)


if __name__ == "__main__":
    main()
