"""Lightning module of the SASRec student (full-softmax CE at every position)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from runkit.checkpoint import load_checkpoint, load_state_strict
from runkit.recipe import seed_training_step
from runkit.validation import RankingValidationMixin
from sasrec.kind import KIND
from sasrec.model import SASRec, SASRecConfig, next_item_cross_entropy


class SASRecModule(RankingValidationMixin, L.LightningModule):
    checkpoint_kind = KIND.name

    def __init__(
        self, config: SASRecConfig, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 42
    ):
        super().__init__()
        self.model = SASRec(config)
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.held_out: torch.Tensor | None = None  # the cold-item protocol's items

    @property
    def num_items(self) -> int:
        return self.model.config.num_items

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.score(batch["history"])

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        seed_training_step(self.seed, self.current_epoch, batch_idx)

    def training_step(self, batch, batch_idx):
        table = self.model.item_table()
        states = self.model.encode(batch["history"], table)
        loss = next_item_cross_entropy(states, batch["targets"], table, exclude=self.held_out)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["history"]))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def hold_out_items(self, items: torch.Tensor) -> None:
        """No ID information for these items (their rows stay zero: they are in no training input,
        and out of every training loss), so they are ranked as a new item would be."""
        self.held_out = items
        with torch.no_grad():
            self.model.item_emb.weight[items] = 0

    # -- checkpoint contract --------------------------------------------------------------
    def checkpoint_payload(self) -> dict:
        return {
            "tensors": self.model.state_dict(),
            "hparams": {"model": self.model.config.to_dict()},
        }

    def load_payload(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors)


def load_sasrec(
    path: Path,
    *,
    fingerprint: str | None = None,
    num_items: int | None = None,
    kinds: tuple[str, ...] = (KIND.name,),
) -> tuple[SASRec, dict]:
    """Rebuild a plain SASRec from a checkpoint directory (validated before any work)."""
    ckpt = load_checkpoint(path, kinds=kinds, fingerprint=fingerprint, num_items=num_items)
    model = SASRec(SASRecConfig(**ckpt.hparams["model"]))
    load_state_strict(model, ckpt.tensors, ckpt.path)
    return model.eval(), ckpt.card
