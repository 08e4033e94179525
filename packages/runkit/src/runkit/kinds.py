"""The registry of checkpoint kinds. Each model package registers the kinds it defines under the
entry-point group ``ilora_dllm2rec.checkpoint_kinds`` (its pyproject), so runkit reads, checks and
finds every installed kind without importing (or naming) any package above it::

    [project.entry-points."ilora_dllm2rec.checkpoint_kinds"]
    sasrec = "sasrec.kind:KIND"

A kind says what its card must record and how to score with a checkpoint of it (eval-all).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from runkit.protocol import Scorer

ENTRY_POINT_GROUP = "ilora_dllm2rec.checkpoint_kinds"


@dataclass(frozen=True)
class CheckpointKind:
    name: str
    # card entry -> the field it must hold (a distilled student names its teacher's labels...)
    requires: dict[str, str] = field(default_factory=dict)
    # "module:function" building a Scorer: f(path, dataset, *, device, cache_dir, precision)
    scorer: str = ""
    # an LLM-sized model: evaluate it in small batches and reuse its run's stored test predictions
    expensive: bool = False

    def load_scorer(
        self,
        path: Path,
        dataset,
        *,
        device: str,
        cache_dir: Path | None = None,
        precision: str = "auto",
    ) -> Scorer:
        module, _, name = self.scorer.partition(":")
        build = getattr(importlib.import_module(module), name)
        return build(path, dataset, device=device, cache_dir=cache_dir, precision=precision)


@functools.cache
def registered_kinds() -> dict[str, CheckpointKind]:
    """Every kind of the installed packages, by name."""
    kinds: dict[str, CheckpointKind] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        kind = point.load()
        if kind.name in kinds:
            raise RuntimeError(f"checkpoint kind {kind.name!r} is registered twice ({point.value})")
        kinds[kind.name] = kind
    return kinds


def checkpoint_kind(name: str) -> CheckpointKind | None:
    return registered_kinds().get(name)


def kind_names() -> tuple[str, ...]:
    return tuple(sorted(registered_kinds()))
