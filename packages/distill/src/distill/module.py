"""The distilled student: SASRec + DLLM2Rec (importance-weighted ranking distillation of the
teacher's top-K, collaborative embedding distillation of the teacher's item vectors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.kind import KIND
from distill.losses import CollaborativeEmbeddingDistillation, DLLM2RecLoss, sample_negatives
from distill.soft_labels import SoftLabels
from recdata.batching import SequenceStore
from sasrec.model import SASRecConfig, item_scores
from sasrec.module import SASRecModule


class SoftLabelLookup:
    """Teacher top-K by sample key, stored at the key's flat item index (starts[user] + position)
    so a batch's labels are gathered with one indexing op, whatever order the rows came in."""

    def __init__(self, labels: SoftLabels, store: SequenceStore):
        self.starts = store.starts
        size = len(store.items) + 1
        self.row = torch.full((size,), -1, dtype=torch.int64)
        self.row[self.starts[labels.user_ids] + labels.positions] = torch.arange(
            len(labels.user_ids)
        )
        self.items, self.scores = labels.topk_items, labels.topk_scores

    def gather(
        self, user_ids: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(M,) keys -> (has_label (M,), items (M',K), scores (M',K)) for the keys with labels."""
        rows = self.row[self.starts[user_ids.cpu()] + positions.cpu()]
        has = rows >= 0
        return has, self.items[rows[has]], self.scores[rows[has]]


class DistillModule(SASRecModule):
    checkpoint_kind = KIND.name

    def __init__(
        self,
        config: SASRecConfig,
        *,
        labels: SoftLabels,
        store: SequenceStore,
        loss: DLLM2RecLoss,
        ed_weight: float = 0.3,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 42,
        provenance: dict | None = None,
        consistency_masks_history: bool = True,
    ):
        super().__init__(config, lr=lr, weight_decay=weight_decay, seed=seed)
        self.consistency_masks_history = consistency_masks_history
        self.embedding_distillation = CollaborativeEmbeddingDistillation(
            labels.item_embeddings, config.hidden_size, ed_weight
        )
        self.lookup, self.loss, self.provenance = (
            SoftLabelLookup(labels, store),
            loss,
            provenance or {},
        )

    def item_table(self) -> torch.Tensor:
        """e_i + ed_weight * Linear(t_i), used at train and eval time (inputs and outputs)."""
        return self.embedding_distillation(self.model.item_table())

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        table = self.item_table()
        scores = item_scores(self.model.last_state(batch["history"], table), table)
        return scores.index_fill(
            1, torch.zeros(1, dtype=torch.long, device=scores.device), -torch.inf
        )

    def training_step(self, batch, batch_idx):
        table = self.item_table()
        states = self.model.encode(batch["history"], table)
        keep = batch["targets"] > 0
        logits = item_scores(states[keep], table).index_fill(
            1, torch.zeros(1, dtype=torch.long, device=states.device), -torch.inf
        )
        ce = F.cross_entropy(logits, batch["targets"][keep])
        users = batch["user_id"].unsqueeze(1).expand_as(keep)[keep]
        has, top_items, top_scores = self.lookup.gather(users, batch["target_positions"][keep])
        total, rank = ce, torch.zeros((), device=ce.device)
        if bool(has.any()) and self.loss.lam > 0:
            device = logits.device
            has, top_items, top_scores = has.to(device), top_items.to(device), top_scores.to(device)
            negatives, consistency_scores = None, None
            prefixes = self._prefixes(batch["history"], keep)[has]
            if self.loss.form == "pointwise":
                negatives = sample_negatives(
                    torch.cat([prefixes, batch["targets"][keep][has].unsqueeze(1), top_items], 1),
                    self.num_items,
                    top_items.shape[1],
                )
            if (
                self.consistency_masks_history
            ):  # the teacher's list never holds a history item: nor does this one
                consistency_scores = logits[has].detach().scatter(1, prefixes, -torch.inf)
            parts = self.loss(
                ce,
                logits[has],
                top_items,
                top_scores,
                negatives,
                num_samples=len(logits),
                consistency_scores=consistency_scores,
            )
            total, rank = parts["total"], parts["rank"]
        n = len(batch["history"])
        self.log_dict({"train/ce": ce, "train/rank": rank}, batch_size=n)
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        return total

    @staticmethod
    def _prefixes(history: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(M, L): for each target position, the items up to and including its input column."""
        cols = torch.arange(history.shape[1], device=history.device)
        rows, col = keep.nonzero(as_tuple=True)
        return torch.where(cols.unsqueeze(0) <= col.unsqueeze(1), history[rows], 0)

    # -- checkpoint contract: folded, so the result loads and serves as a plain SASRec -------
    def checkpoint_payload(self) -> dict:
        tensors = dict(self.model.state_dict())
        tensors["item_emb.weight"] = self.embedding_distillation.fold(self.model.item_table())
        unfolded = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        unfolded.update(
            {
                f"embedding_distillation.{k}": v
                for k, v in self.embedding_distillation.state_dict().items()
            }
        )
        return {
            "tensors": tensors,
            "hparams": {
                "model": self.model.config.to_dict(),
                "folded": True,
                "ed_weight": self.embedding_distillation.ed_weight,
                "loss": vars(self.loss),
            },
            "extra": {"distillation": self.provenance},
            "files": {"unfolded.safetensors": unfolded},
        }

    def load_payload(self, tensors: dict[str, torch.Tensor]) -> None:
        """Reload the best export for testing: the folded table, with the fold switched off."""
        self.model.load_state_dict(tensors)
        self.embedding_distillation.ed_weight = 0.0
