"""SASRec (Kang & McAuley, 2018): causal self-attention over a user's item history.

Conventions: histories are LEFT-padded with item 0, so the newest item is always at
column -1; positions count from a sequence's first real item, which makes a sequence's outputs
independent of how much padding precedes it and equal for a prefix whether it is scored alone
or inside a longer training sequence. Scores are tied to the item table (padding column 0 is
never a valid prediction).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runkit.chunking import blocked_cross_entropy
from sasrec.config import StudentConfig


@dataclass(kw_only=True)
class SASRecConfig(StudentConfig):
    """The `student` config group's architecture for a catalogue of `num_items` items."""

    num_items: int

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        # No dropout on attention probabilities: it forces SDPA's slow math path on CPU and
        # SASRec regularises well enough with embedding/residual dropout.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, h))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = SelfAttention(hidden, heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = c = config
        self.item_emb = nn.Embedding(c.num_items + 1, c.hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.hidden_size)
        self.emb_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.hidden_size, c.num_heads, c.dropout) for _ in range(c.num_blocks)
        )
        self.final_norm = nn.LayerNorm(c.hidden_size)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def item_table(self) -> torch.Tensor:
        """(N+1, H) item vectors used both as inputs and as the tied output layer."""
        return self.item_emb.weight

    def encode(self, history: torch.Tensor, item_table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded item ids -> (B, L, H) states; padding rows are meaningless."""
        table = self.item_table() if item_table is None else item_table
        real = history > 0
        if history.shape[1] > self.config.max_seq_len:
            history, real = (
                history[:, -self.config.max_seq_len :],
                real[:, -self.config.max_seq_len :],
            )
        positions = (real.cumsum(1) - 1).clamp(min=0)
        x = table[history] * math.sqrt(self.config.hidden_size) + self.pos_emb(positions)
        x = self.emb_drop(x) * real.unsqueeze(-1)
        t = history.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=history.device).tril()
        # Real keys only, but every query may see itself, so no attention row is empty (NaN).
        mask = causal & (real.unsqueeze(1) | torch.eye(t, dtype=torch.bool, device=history.device))
        mask = mask.unsqueeze(1)  # (B, 1, T, T), broadcast over heads
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    def last_state(
        self, history: torch.Tensor, item_table: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The state at the newest item: column -1 under left padding."""
        return self.encode(history, item_table)[:, -1]

    def score(self, history: torch.Tensor) -> torch.Tensor:
        """(B, N+1) fp32 scores for the next item; column 0 (padding) is -inf."""
        table = self.item_table()
        scores = item_scores(self.last_state(history, table), table)
        scores[:, 0] = -torch.inf
        return scores


def item_scores(states: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``states @ table.T`` in fp32, also under autocast: bf16 scores (8-bit mantissa) tie items
    whose scores differ in the third digit, and ties count against the target in the ranking."""
    with torch.autocast(states.device.type, enabled=False):
        return states.float() @ table.float().T


def next_item_cross_entropy(
    states: torch.Tensor,
    targets: torch.Tensor,
    table: torch.Tensor,
    budget: int | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full-softmax CE over items 1..N at every position that has a target (> 0); in row blocks
    of bounded memory when the positions x items scores exceed `budget` (runkit.chunking);
    `exclude` ((N+1,) bool) items take no part (the cold-item protocol)."""
    keep = targets > 0
    return blocked_cross_entropy(
        lambda s: training_scores(s, table, exclude),
        (states[keep],),
        targets[keep],
        table.shape[0],
        budget,
    )


def training_scores(
    states: torch.Tensor, table: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """The scores a training loss ranks: never padding, never a held-out item."""
    logits = item_scores(states, table)
    logits[:, 0] = -torch.inf
    if exclude is not None:
        logits = logits.masked_fill(exclude.to(logits.device), -torch.inf)
    return logits
