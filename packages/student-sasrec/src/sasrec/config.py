"""The `student` config group: the SASRec architecture every student (baseline and distilled)
uses."""

from __future__ import annotations

from dataclasses import dataclass

from recdata.errors import UserError
from runkit.config import Schema, checked, integer, number


@dataclass
class StudentConfig:
    hidden_size: int = checked(64, integer(1))
    num_blocks: int = checked(2, integer(1))
    num_heads: int = checked(2, integer(1))
    dropout: float = checked(0.2, number(0, 1, strict_high=True))
    max_seq_len: int = checked(200, integer(1))

    @classmethod
    def check_group(cls, values: dict, prefix: str) -> None:
        hidden, heads = values.get("hidden_size"), values.get("num_heads")
        if isinstance(hidden, int) and isinstance(heads, int) and heads and hidden % heads:
            raise UserError(
                f"{prefix}hidden_size={hidden} must be divisible by {prefix}num_heads={heads}"
            )


SCHEMAS = [Schema("student", "student", StudentConfig)]
