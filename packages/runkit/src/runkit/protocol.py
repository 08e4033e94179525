"""The contract every trainable module meets, so one recipe trains, exports, selects and tests any
of them (the student, the teacher, the distilled student)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

# a batch -> its (B, N+1) scores, column 0 never ranked (what evaluation runs a model as)
Scorer = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@runtime_checkable
class TrainableModule(Protocol):
    """A LightningModule that `runkit.recipe.run_training` can run end to end."""

    # the registered checkpoint kind its exports are (runkit.kinds)
    checkpoint_kind: str

    @property
    def num_items(self) -> int: ...

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N+1) scores of the next item after each row's history; column 0 is never ranked."""
        ...

    def checkpoint_payload(self) -> dict:
        """What its checkpoint holds: {"tensors", "hparams"} and optionally "extra" (card entries
        its kind requires) and "files" (further named safetensors files)."""
        ...

    def load_payload(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put exported weights back (the best checkpoint, before the test pass)."""
        ...

    def hold_out_items(self, items: torch.Tensor) -> None:
        """The cold-item protocol: never train on these items ((N+1,) bool) -- no ID information
        in any item table, no score in any training loss -- while evaluation still ranks them."""
        ...
