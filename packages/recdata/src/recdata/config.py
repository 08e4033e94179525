"""The numeric knobs of the shared config tree (conf/), checked by every command before any work,
so a bad value is one `error:` line and exit code 2 instead of a traceback from deep inside
data loading or training. Keys absent from a command's config are skipped. The groups of one
package (teacher.*, distill.*) are checked by that package."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recdata.errors import UserError

_ABSENT = object()


@dataclass(frozen=True)
class Check:
    expected: str  # completes "<key> must be ..."
    ok: Callable[[Any], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int, *, also: tuple = ()) -> Check:
    """An integer >= low, or one of `also` (e.g. -1 for "all", None for "unset")."""
    extra = "".join(f" or {a}" for a in also)
    return Check(f"an integer >= {low}{extra}",
                 lambda v: (_is_int(v) and v >= low) or any(v is a or (_is_int(v) and v == a) for a in also))  # fmt: skip


def number(low: float, high: float | None = None, *, strict_low: bool = False, strict_high: bool = False,
           nullable: bool = False) -> Check:  # fmt: skip
    upper = "inf)" if high is None else f"{high:g}" + (")" if strict_high else "]")
    expected = f"a number in {'(' if strict_low else '['}{low:g}, {upper}" + (" or null" if nullable else "")

    def ok(v) -> bool:
        if v is None:
            return nullable
        if not _is_number(v) or v < low or (strict_low and v == low):
            return False
        return high is None or v < high or (v == high and not strict_high)

    return Check(expected, ok)


# a fraction of the batches (0, 1] or a count of batches >= 1 (Lightning's convention)
FRACTION_OR_COUNT = Check("a fraction in (0, 1] or an integer count >= 1",
                          lambda v: (_is_int(v) and v >= 1) or (_is_number(v) and 0 < v <= 1))  # fmt: skip
POSITIVE_INT_LIST = Check("a non-empty list of integers >= 1",
                          lambda v: isinstance(v, list) and bool(v) and all(_is_int(k) and k >= 1 for k in v))  # fmt: skip

RULES: dict[str, Check] = {
    "seed": integer(0),
    "train.batch_size": integer(1),
    "train.eval_batch_size": integer(1),
    "train.lr": number(0, strict_low=True),
    "train.weight_decay": number(0),
    "train.max_epochs": integer(1, also=(-1,)),
    "train.max_steps": integer(1, also=(-1,)),
    "train.patience": integer(0),
    "train.val_check_interval": FRACTION_OR_COUNT,
    "train.limit_val_batches": FRACTION_OR_COUNT,
    "train.num_workers": integer(0),
    "train.accumulate_grad_batches": integer(1),
    "student.hidden_size": integer(1),
    "student.num_blocks": integer(1),
    "student.num_heads": integer(1),
    "student.dropout": number(0, 1, strict_high=True),
    "student.max_seq_len": integer(1),
    "dataset.limit_data_rows": integer(1, also=(-1,)),
    "dataset.min_user_interactions": integer(3),  # leave-one-out needs a train, valid and test item
    "eval.ks": POSITIVE_INT_LIST,
    "eval.num_candidates": integer(2, also=(0,)),  # 0 = no candidate protocol
    "eval.candidate_seed": integer(0),
    "trainer.num_nodes": integer(1),
    "trainer.log_every_n_steps": integer(1),
    "trainer.gradient_clip_val": number(0, nullable=True),
}


def check_config(cfg: DictConfig) -> None:
    """Raise a one-line UserError for the first knob outside its range."""
    for key, check in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not check.ok(value):
            raise UserError(f"{key} must be {check.expected}, got {value!r}")
    hidden, heads = OmegaConf.select(cfg, "student.hidden_size"), OmegaConf.select(cfg, "student.num_heads")
    if hidden is not None and heads is not None and hidden % heads:
        raise UserError(f"student.hidden_size={hidden} must be divisible by student.num_heads={heads}")
