"""The `eval_all` config group (composed by eval-all only)."""

from __future__ import annotations

from dataclasses import dataclass

from runkit.config import BOOLEAN, Schema, checked, integer


@dataclass
class EvalAllConfig:
    # the LLM teacher's test batch (train.eval_batch_size is sized for SASRec)
    teacher_eval_batch_size: int = checked(16, integer(1))
    # reuse the teacher run's own test predictions when their protocol matches
    reuse_teacher_predictions: bool = checked(True, BOOLEAN)


SCHEMAS = [Schema("eval_all", "eval_all", EvalAllConfig)]
