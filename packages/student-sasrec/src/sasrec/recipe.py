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
import math
import pickle
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from recdata.atomic import atomic_file
from recdata.checkpoint import WEIGHTS_FILE, read_tensors, save_checkpoint
from recdata.datamodule import SequentialDataModule
from recdata.errors import UserError
from recdata.evaluation import EvalResult, evaluate, write_eval_result
from recdata.prepare import ensure_prepared
from recdata.runs import (
    announce_run_dir,
    discard_run_dir,
    hydra_run_dir,
    mark_complete,
    mark_incomplete,
)

log = logging.getLogger(__name__)
LAST_CKPT = "last.ckpt"


def seed_run(cfg: DictConfig) -> None:
    """Seed before any module is built, so initial weights depend on cfg.seed alone."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def seed_training_step(seed: int, epoch: int, batch_idx: int) -> None:
    """Random draws (dropout, sampled negatives) depend only on (seed, epoch, batch), so a
    resumed run repeats an uninterrupted one step for step. Call from on_train_batch_start."""
    torch.manual_seed((seed * 1_000_003 + epoch) * 100_003 + batch_idx)


def build_datamodule(cfg: DictConfig, *, max_seq_len: int, train_mode: str = "sequence",
                     batch_size: int | None = None, train_samples: str = "all", window_stride: int | None = None,
                     eval_order: str = "key") -> SequentialDataModule:  # fmt: skip
    data = cfg.dataset
    processed = ensure_prepared(data.name, Path(data.data_dir), Path(data.processed_dir),
                                Path(cfg.paths.cache_dir), data.min_user_interactions)  # fmt: skip
    dm = SequentialDataModule(
        processed, max_seq_len=max_seq_len, batch_size=batch_size or cfg.train.batch_size,
        eval_batch_size=cfg.train.eval_batch_size, limit_data_rows=data.limit_data_rows,
        train_mode=train_mode, num_workers=cfg.train.num_workers,
        num_candidates=cfg.eval.num_candidates, candidate_seed=cfg.eval.candidate_seed, seed=cfg.seed,
        train_samples=train_samples, window_stride=window_stride, eval_order=eval_order,
    )  # fmt: skip
    dm.setup()
    return dm


def data_card(dm: SequentialDataModule) -> dict:
    return {"dataset": dm.dataset.name, "fingerprint": dm.fingerprint, "num_items": dm.num_items,
            "limit_data_rows": dm.limit_data_rows, "train_samples": len(dm.keys["train"])}  # fmt: skip


class ContractExport(Callback):
    """Export checkpoints/best (on improvement of valid/<monitor>) and checkpoints/last in the
    checkpoint contract after every validation. Its best score is resumed with the run."""

    def __init__(self, directory: Path, monitor: str, data: dict, extra: dict | None = None):
        self.directory, self.monitor, self.data, self.extra = Path(directory), monitor, data, extra or {}
        self.best = -math.inf
        self.exported_step = -1

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]

    def _export(self, module, name: str, metrics: dict) -> None:
        payload = module.checkpoint_payload()
        save_checkpoint(self.directory / name, kind=module.checkpoint_kind, tensors=payload["tensors"],
                        hparams=payload["hparams"], data=self.data, metrics=metrics,
                        extra={**self.extra, **payload.get("extra", {})}, files=payload.get("files"))  # fmt: skip

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        valid = {k.removeprefix("valid/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")}
        current = valid.get(self.monitor, math.nan)
        metrics = {"epoch": trainer.current_epoch, "global_step": trainer.global_step, "valid": valid}
        if current > self.best:
            self.best = current
            self._export(module, "best", metrics)
        self._export(module, "last", metrics)
        self.exported_step = trainer.global_step


class EpochSummary(Callback):
    """One log line per validation, so the console keeps a readable history of the run."""

    def on_train_epoch_start(self, trainer, module) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        shown = "  ".join(f"{k}={float(v):.4f}" for k, v in m.items() if k.startswith(("valid/", "train/")))
        started = getattr(self, "started", None)
        took = f"{time.perf_counter() - started:.1f}s" if started is not None else "before training"
        log.info("epoch %d step %d (%s): %s", trainer.current_epoch, trainer.global_step, took, shown)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write last.ckpt beside its target and rename it into place. (Lightning's own write goes
    through a temporary file in the system temp dir; across filesystems its final move is a
    copy, which a kill can cut short.) Read it with weights_only=True."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_file(Path(path)) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        try:  # tensors and plain values only: nothing is unpickled
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise UserError(f"{path}: unreadable resume checkpoint ({str(exc).splitlines()[0]}); "
                            "delete it to train the run again from its beginning") from None  # fmt: skip


class ResumableEarlyStopping(EarlyStopping):
    """Lightning does not save `trainer.should_stop`: a run killed after early stopping fired
    but before its test would train on when resumed. Stop again at once instead."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.stopping_reason is not EarlyStoppingReason.NOT_STOPPED:  # restored from last.ckpt
            trainer.should_stop = True


def resume_callbacks(cfg: DictConfig, ckpt_dir: Path) -> list[Callback]:
    """Early stopping, and last.ckpt at the end of every training epoch (mid-epoch checkpoints
    would resume with a different batch order)."""
    return [
        ResumableEarlyStopping(monitor=f"valid/{cfg.train.monitor}", mode="max", patience=cfg.train.patience,
                               check_on_train_epoch_end=False),
        ModelCheckpoint(dirpath=ckpt_dir, filename=Path(LAST_CKPT).stem, monitor=None, save_top_k=1,
                        every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False),
    ]  # fmt: skip


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[Callback]) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        default_root_dir=run_dir,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic, max_epochs=cfg.train.max_epochs, max_steps=cfg.train.max_steps,
        val_check_interval=cfg.train.val_check_interval, num_sanity_val_steps=0,
        accumulate_grad_batches=cfg.train.accumulate_grad_batches,
        limit_val_batches=cfg.train.limit_val_batches,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""),
        callbacks=callbacks, plugins=[AtomicCheckpointIO()],
    )  # fmt: skip


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """(run_dir, last.ckpt to resume from or None). A run killed before its first epoch ended
    has no last.ckpt yet: it starts again from the beginning, in its own directory."""
    if cfg.train.get("resume"):
        run_dir = Path(cfg.train.resume)
        ckpt = run_dir / "checkpoints" / LAST_CKPT
        if ckpt.is_file():
            return run_dir, ckpt
        log.info("train.resume=%s: no checkpoints/%s yet; training it from the beginning", run_dir, LAST_CKPT)
        return run_dir, None
    return hydra_run_dir(), None


def check_monitor(cfg: DictConfig) -> None:
    names = [f"{m}@{k}" for k in cfg.eval.ks for m in ("hr", "ndcg")]
    names += ["hr@1_of_20"] if cfg.eval.num_candidates else []
    if cfg.train.monitor not in names:
        raise UserError(f"train.monitor={cfg.train.monitor} is not a validation metric; with eval.ks={list(cfg.eval.ks)} choose one of {', '.join(names)}")


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    with atomic_file(run_dir / "config.yaml") as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))


def run_training(cfg: DictConfig, module: L.LightningModule, dm: SequentialDataModule,
                 *, card_extra: dict | None = None, finalize_best=None) -> EvalResult | None:  # fmt: skip
    """Fit, export, test once and write the run's files; returns the test result on rank 0."""
    check_monitor(cfg)
    run_dir, resume_from = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_incomplete(run_dir)
    save_config(cfg, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    export = ContractExport(ckpt_dir, cfg.train.monitor, data_card(dm), card_extra)
    callbacks = [export, *resume_callbacks(cfg, ckpt_dir), EpochSummary(), LearningRateMonitor(logging_interval="step")]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    module.eval_mask_history, module.eval_ks = cfg.eval.mask_history, tuple(cfg.eval.ks)
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


def test_best(cfg: DictConfig, module: L.LightningModule, dm: SequentialDataModule, trainer: L.Trainer) -> EvalResult:
    """The test pass on the training device under the trainer's precision (e.g. bf16 autocast),
    so test scores are computed as the validation scores that selected the checkpoint were."""
    device = training_device(trainer)
    module.to(device).eval()

    def score(batch):
        with trainer.precision_plugin.test_step_context():
            return module.score({k: v.to(device) for k, v in batch.items()}).cpu()

    return evaluate(score, dm.loader("test"), dm.num_items, ks=tuple(cfg.eval.ks), mask_history=cfg.eval.mask_history,
                    progress=bool(cfg.trainer.enable_progress_bar), extra_protocol=eval_protocol(cfg, dm))  # fmt: skip


def eval_protocol(cfg: DictConfig, dm: SequentialDataModule) -> dict:
    return {
        "candidates": {"num": cfg.eval.num_candidates, "seed": cfg.eval.candidate_seed,
                       "negatives": "uniform, distinct, from items the user never interacted with",
                       "metric": "hr@1_of_20: target strictly above the other candidates"},
        "data": data_card(dm),
    }  # fmt: skip


def _record_test_metrics(best_dir: Path, result: EvalResult) -> None:
    import json

    from recdata.atomic import write_json

    card = json.loads((best_dir / "card.json").read_text())
    card["metrics"]["test"] = result.metrics
    write_json(best_dir / "card.json", card)


def _cleanup_resume_dir(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run writes into its original directory; keep the log of the directory Hydra
    made for this invocation there, and drop that directory."""
    fresh = hydra_run_dir()
    if not cfg.train.get("resume") or fresh.resolve() == run_dir.resolve():
        return
    for log_file in fresh.glob("*.log"):
        shutil.copyfile(log_file, run_dir / f"resume_{log_file.name}")
    discard_run_dir(fresh)

