"""The training run shared by the student, the teacher and the distilled student.

fit (resumable) -> export the best/last checkpoint contract -> evaluate the best on test once ->
write the metrics files -> mark the run complete -> print `run_dir: <path>`.

Resume: Lightning's checkpoints/last.ckpt is written at the end of every training epoch, by
rename (a kill mid-write leaves the previous one whole). Every step's randomness and each
epoch's shuffle depend only on (seed, epoch, batch), so a run killed at any point and resumed
with `train.resume=<run_dir>` replays the interrupted epoch and ends exactly as an
uninterrupted run.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from recdata.atomic import atomic_file, write_json
from recdata.datamodule import SequentialDataModule
from recdata.errors import UserError
from runkit.callbacks import (
    LAST_CKPT,
    AtomicCheckpointIO,
    ContractExport,
    EpochSummary,
    resume_callbacks,
)
from runkit.checkpoint import CARD_FILE, WEIGHTS_FILE, read_card, read_tensors
from runkit.config import check_monitor
from runkit.data import data_card
from runkit.entry import announce_run_dir, discard_run_dir, hydra_run_dir
from runkit.evaluation import EvalResult, evaluate, write_eval_result
from runkit.protocol import TrainableModule
from runkit.runs import mark_complete, mark_incomplete

log = logging.getLogger(__name__)


def seed_run(cfg: DictConfig) -> None:
    """Seed before any module is built, so initial weights depend on cfg.seed alone."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def seed_training_step(seed: int, epoch: int, batch_idx: int) -> None:
    """Random draws (dropout, sampled negatives) depend only on (seed, epoch, batch), so a
    resumed run repeats an uninterrupted one step for step. Call from on_train_batch_start."""
    torch.manual_seed((seed * 1_000_003 + epoch) * 100_003 + batch_idx)


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[Callback]) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        default_root_dir=run_dir,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic,
        max_epochs=cfg.train.max_epochs,
        max_steps=cfg.train.max_steps,
        val_check_interval=cfg.train.val_check_interval,
        num_sanity_val_steps=0,
        accumulate_grad_batches=cfg.train.accumulate_grad_batches,
        limit_val_batches=cfg.train.limit_val_batches,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """(run_dir, last.ckpt to resume from or None). A run killed before its first epoch ended
    has no last.ckpt yet: it starts again from the beginning, in its own directory."""
    if cfg.train.get("resume"):
        run_dir = Path(cfg.train.resume)
        ckpt = run_dir / "checkpoints" / LAST_CKPT
        if ckpt.is_file():
            return run_dir, ckpt
        log.info(
            "train.resume=%s: no checkpoints/%s yet; training it from the beginning",
            run_dir,
            LAST_CKPT,
        )
        return run_dir, None
    return hydra_run_dir(), None


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    with atomic_file(run_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def run_training(
    cfg: DictConfig,
    module: TrainableModule,
    dm: SequentialDataModule,
    *,
    card_extra: dict | None = None,
    finalize_best=None,
) -> EvalResult | None:
    """Fit, export, test once and write the run's files; returns the test result on rank 0."""
    check_monitor(cfg)
    run_dir, resume_from = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_incomplete(run_dir)
    save_config(cfg, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    export = ContractExport(ckpt_dir, cfg.train.monitor, data_card(dm), card_extra)
    callbacks = [
        export,
        *resume_callbacks(cfg, ckpt_dir),
        EpochSummary(),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    module.eval_mask_history, module.eval_ks = cfg.eval.mask_history, tuple(cfg.eval.ks)
    if dm.held_out_items is not None:  # the cold-item protocol: never trained on, still ranked
        module.hold_out_items(dm.held_out_items)
    trainer = build_trainer(cfg, run_dir, callbacks)
    if cfg.train.validate_at_start and resume_from is None:
        # the starting point competes in model selection (the residual teacher starts as its
        # student), and its figures open the learning curve at step 0
        trainer.validate(module, datamodule=dm, verbose=False)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
    if export.exported_step != trainer.global_step:
        # stopped on max_steps between validations: validate (and export) the final weights too
        trainer.validate(module, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return None
    module.to(training_device(trainer))  # Lightning's teardown left it on the CPU
    load_best(module, ckpt_dir / "best")
    if finalize_best is not None:  # e.g. the teacher adds its item embeddings to the contract
        finalize_best(module, ckpt_dir / "best")
    result = test_best(cfg, module, dm, trainer)
    write_eval_result(run_dir, result, module.checkpoint_kind)
    _record_test_metrics(ckpt_dir / "best", result)
    log.info("test (%s): %s", module.checkpoint_kind, result.headline())
    print(Path(run_dir / "test_metrics.txt").read_text())
    mark_complete(run_dir, kind=module.checkpoint_kind, best=str(ckpt_dir / "best"))
    _cleanup_resume_dir(cfg, run_dir)
    announce_run_dir(run_dir)
    return result


def load_best(module: L.LightningModule, best_dir: Path) -> None:
    """Put the best exported weights back into the module (`load_payload` of its contract)."""
    if not (best_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"no best checkpoint was exported to {best_dir} (did any validation run?)")
    module.load_payload(read_tensors(best_dir / WEIGHTS_FILE))


def training_device(trainer: L.Trainer) -> torch.device:
    """The device this process trained on. Not `module.device`: Lightning's teardown at the end of
    every fit/validate moves the module to the CPU (Strategy.teardown), so a GPU run would test
    (and embed titles) on the CPU, a bf16 LLM at CPU speed."""
    return trainer.strategy.root_device


def test_best(
    cfg: DictConfig, module: L.LightningModule, dm: SequentialDataModule, trainer: L.Trainer
) -> EvalResult:
    """The test pass on the training device under the trainer's precision (e.g. bf16 autocast),
    so test scores are computed as the validation scores that selected the checkpoint were."""
    device = training_device(trainer)
    module.to(device).eval()

    def score(batch):
        with trainer.precision_plugin.test_step_context():
            return module.score({k: v.to(device) for k, v in batch.items()}).cpu()

    return evaluate(
        score,
        dm.loader("test"),
        dm.num_items,
        ks=tuple(cfg.eval.ks),
        mask_history=cfg.eval.mask_history,
        progress=bool(cfg.trainer.enable_progress_bar),
        extra_protocol=eval_protocol(cfg, dm),
        slices=dm.slices,
    )


def eval_protocol(cfg: DictConfig, dm: SequentialDataModule) -> dict:
    return {
        "candidates": {
            "num": cfg.eval.num_candidates,
            "seed": cfg.eval.candidate_seed,
            "negatives": "uniform, distinct, from items the user never interacted with",
            "metric": "hr@1_of_20: target strictly above the other candidates",
        },
        "data": data_card(dm),
    }


def _record_test_metrics(best_dir: Path, result: EvalResult) -> None:
    card = read_card(best_dir)
    card["metrics"]["test"] = result.metrics
    write_json(best_dir / CARD_FILE, card)


def _cleanup_resume_dir(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run writes into its original directory; keep the log of the directory Hydra
    made for this invocation there, and drop that directory."""
    fresh = hydra_run_dir()
    if not cfg.train.get("resume") or fresh.resolve() == run_dir.resolve():
        return
    for log_file in fresh.glob("*.log"):
        shutil.copyfile(log_file, run_dir / f"resume_{log_file.name}")
    discard_run_dir(fresh)
