"""The Lightning callbacks and checkpoint I/O of every training run: the checkpoint-contract
export after each validation, one log line per epoch, atomic resume checkpoints, and early
stopping that survives a resume."""

from __future__ import annotations

import logging
import math
import pickle
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig

from recdata.atomic import atomic_file
from recdata.errors import UserError
from runkit.checkpoint import save_checkpoint

log = logging.getLogger(__name__)
LAST_CKPT = "last.ckpt"


class ContractExport(Callback):
    """Export checkpoints/best (on improvement of valid/<monitor>) and checkpoints/last in the
    checkpoint contract after every validation. Its best score is resumed with the run."""

    def __init__(self, directory: Path, monitor: str, data: dict, extra: dict | None = None):
        self.directory, self.monitor, self.data, self.extra = (
            Path(directory),
            monitor,
            data,
            extra or {},
        )
        self.best = -math.inf
        self.exported_step = -1

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]

    def _export(self, module, name: str, metrics: dict) -> None:
        payload = module.checkpoint_payload()
        save_checkpoint(
            self.directory / name,
            kind=module.checkpoint_kind,
            tensors=payload["tensors"],
            hparams=payload["hparams"],
            data=self.data,
            metrics=metrics,
            extra={**self.extra, **payload.get("extra", {})},
            files=payload.get("files"),
        )

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        valid = {
            k.removeprefix("valid/"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("valid/")
        }
        current = valid.get(self.monitor, math.nan)
        metrics = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "valid": valid,
        }
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
        shown = "  ".join(
            f"{k}={float(v):.4f}" for k, v in m.items() if k.startswith(("valid/", "train/"))
        )
        started = getattr(self, "started", None)
        took = f"{time.perf_counter() - started:.1f}s" if started is not None else "before training"
        log.info(
            "epoch %d step %d (%s): %s", trainer.current_epoch, trainer.global_step, took, shown
        )


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
            raise UserError(
                f"{path}: unreadable resume checkpoint ({str(exc).splitlines()[0]}); "
                "delete it to train the run again from its beginning"
            ) from None


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
        ResumableEarlyStopping(
            monitor=f"valid/{cfg.train.monitor}",
            mode="max",
            patience=cfg.train.patience,
            check_on_train_epoch_end=False,
        ),
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=Path(LAST_CKPT).stem,
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
    ]
