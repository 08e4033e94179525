"""The distilled student: SASRec + DLLM2Rec (importance-weighted ranking distillation of the
teacher's top-K, collaborative embedding distillation of the teacher's item vectors)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.kind import KIND
from distill.losses import CollaborativeEmbeddingDistillation, DLLM2RecLoss, sample_negatives
from distill.soft_labels import SoftLabels
from recdata.batching import SequenceStore
from runkit.chunking import checkpointed_sum, fits
from sasrec.model import SASRecConfig, item_scores, training_scores
from sasrec.module import SASRecModule


@dataclass
class TeacherLabels:
    """The teacher's top-K of a batch's supervised positions that have a list (`has`), in order."""

    has: torch.Tensor  # (M,) bool over the batch's supervised positions
    items: torch.Tensor  # (M', K)
    scores: torch.Tensor  # (M', K)
    prefixes: torch.Tensor  # (M', L): each position's history, left-padded (for consistency)
    negatives: torch.Tensor | None  # (M', K) sampled negatives (pointwise form)


def _padding_masked(logits: torch.Tensor) -> torch.Tensor:
    return logits.index_fill(1, torch.zeros(1, dtype=torch.long, device=logits.device), -torch.inf)


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
        return _padding_masked(item_scores(self.model.last_state(batch["history"], table), table))

    def training_step(self, batch, batch_idx):
        table = self.item_table()
        keep = batch["targets"] > 0
        states = self.model.encode(batch["history"], table)[keep]
        targets = batch["targets"][keep]
        labels = self._teacher_labels(batch, keep, targets, states.device)
        if fits(len(targets), table.shape[0]):
            ce, rank = self._whole_batch_losses(states, table, targets, labels)
        else:  # a catalogue too large for one positions x items matrix
            ce, rank = self._blocked_losses(states, table, targets, labels)
        total = ce if labels is None else ce + self.loss.lam * rank
        n = len(batch["history"])
        self.log_dict({"train/ce": ce, "train/rank": rank}, batch_size=n)
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        return total

    def _teacher_labels(self, batch, keep, targets, device) -> TeacherLabels | None:
        """The teacher's lists of this batch's supervised positions that have one (None when
        there is nothing to distil), with the history prefix and sampled negatives of each."""
        users = batch["user_id"].unsqueeze(1).expand_as(keep)[keep]
        has, top_items, top_scores = self.lookup.gather(users, batch["target_positions"][keep])
        if not bool(has.any()) or self.loss.lam <= 0:
            return None
        has, top_items, top_scores = has.to(device), top_items.to(device), top_scores.to(device)
        prefixes = self._prefixes(batch["history"], keep)[has]
        negatives = None
        if self.loss.form == "pointwise":
            seen = torch.cat([prefixes, targets[has].unsqueeze(1), top_items], 1)
            negatives = sample_negatives(
                seen, self.num_items, top_items.shape[1], never=self.held_out
            )
        return TeacherLabels(has, top_items, top_scores, prefixes, negatives)

    def _ranking(self, ce, logits, labels: TeacherLabels, rows, num_samples: int) -> torch.Tensor:
        """The ranking-distillation term of the labelled `rows` (indices into `labels`), whose
        student scores are `logits`."""
        consistency_scores = None
        if (
            self.consistency_masks_history
        ):  # the teacher's list never holds a history item: nor does this one
            consistency_scores = logits.detach().scatter(1, labels.prefixes[rows], -torch.inf)
        negatives = None if labels.negatives is None else labels.negatives[rows]
        parts = self.loss(
            ce,
            logits,
            labels.items[rows],
            labels.scores[rows],
            negatives,
            num_samples=num_samples,
            consistency_scores=consistency_scores,
        )
        return parts["rank"]

    def _whole_batch_losses(self, states, table, targets, labels: TeacherLabels | None):
        logits = training_scores(states, table, self.held_out)
        ce = F.cross_entropy(logits, targets)
        if labels is None:
            return ce, torch.zeros((), device=ce.device)
        everyone = torch.arange(len(labels.items), device=ce.device)
        return ce, self._ranking(ce, logits[labels.has], labels, everyone, len(logits))

    def _blocked_losses(self, states, table, targets, labels: TeacherLabels | None):
        """The same losses summed over checkpointed row blocks (runkit.chunking)."""
        label_rows = torch.full((len(targets),), -1, dtype=torch.long, device=states.device)
        if labels is not None:
            label_rows[labels.has] = torch.arange(int(labels.has.sum()), device=states.device)

        def block(states_b, targets_b, label_rows_b):
            logits = training_scores(states_b, table, self.held_out)
            ce = F.cross_entropy(logits, targets_b, reduction="sum")
            mine = label_rows_b >= 0
            if labels is None or not bool(mine.any()):
                return torch.stack([ce, torch.zeros_like(ce)])
            rows = label_rows_b[mine]
            rank_mean = self._ranking(ce, logits[mine], labels, rows, len(rows))
            return torch.stack([ce, rank_mean * len(rows)])

        ce_sum, rank_sum = checkpointed_sum(block, (states, targets, label_rows), table.shape[0])
        labelled = len(labels.items) if labels is not None else 0
        over = labelled if self.loss.average == "labeled" else len(targets)
        return ce_sum / len(targets), rank_sum / max(over, 1)

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
