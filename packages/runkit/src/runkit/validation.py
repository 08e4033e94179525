"""Per-epoch ranking metrics on the valid split, for any module with `score(batch)`."""

from __future__ import annotations

import torch

from recdata.batching import history_mask
from runkit.metrics import (
    CANDIDATE_METRIC,
    DEFAULT_KS,
    candidate_hits_at_1,
    ranking_metrics,
    target_ranks,
)


class RankingValidationMixin:
    """Mix into a LightningModule that defines `score(batch) -> (B, N+1)` and `num_items`.

    Ranks are gathered from every process before the metrics are computed, so the logged
    `valid/*` figures are exact under DDP too (up to the sampler's padding duplicates)."""

    eval_ks = DEFAULT_KS
    eval_mask_history = True

    def on_validation_epoch_start(self) -> None:
        # plain Python lists, not a small tensor per batch: those, between the (batch x items)
        # transients, fragment the C heap and grow the RSS with every batch on big catalogues
        self._valid_ranks: list[int] = []
        self._valid_hits: list[float] = []

    def validation_step(self, batch, batch_idx):
        self.record_valid_scores(self.score(batch), batch)

    def valid_exclude(self, batch, device) -> torch.Tensor | None:
        """The items a valid sample does not rank (its history but the target), when masking."""
        if not self.eval_mask_history:
            return None
        return history_mask(batch["full_history"], self.num_items, keep=batch["target"]).to(device)

    def record_valid_scores(self, scores: torch.Tensor, batch) -> None:
        exclude = self.valid_exclude(batch, scores.device)
        self._valid_ranks += target_ranks(scores, batch["target"], exclude).tolist()
        if "candidates" in batch:
            self._valid_hits += candidate_hits_at_1(scores, batch["candidates"]).float().tolist()

    def on_validation_epoch_end(self) -> None:
        if not self._valid_ranks:
            return
        ranks = self.all_gather(torch.tensor(self._valid_ranks, device=self.device)).reshape(-1)
        metrics = ranking_metrics(ranks.cpu(), self.eval_ks)
        if self._valid_hits:
            hits = torch.tensor(self._valid_hits, device=self.device)
            metrics[CANDIDATE_METRIC] = self.all_gather(hits).float().mean().item()
        for name, value in metrics.items():
            self.log(
                f"valid/{name}",
                value,
                prog_bar=name in ("ndcg@10", "hr@10"),
                sync_dist=False,
                rank_zero_only=False,
            )
