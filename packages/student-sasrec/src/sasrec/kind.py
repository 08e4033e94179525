"""The `sasrec` checkpoint kind: a plain SASRec state dict (registered with runkit's kinds)."""

from __future__ import annotations

from pathlib import Path

from runkit.kinds import CheckpointKind

KIND = CheckpointKind(name="sasrec", scorer="sasrec.kind:student_scorer")


def student_scorer(path: Path, dataset, *, device: str, cache_dir=None, precision: str = "auto"):
    """Scores of a SASRec checkpoint of any student kind (a distilled one is folded into a plain
    SASRec), for eval-all."""
    from runkit.checkpoint import read_card
    from sasrec.module import load_sasrec

    kind = read_card(path)["kind"]
    model, _ = load_sasrec(
        path, fingerprint=dataset.fingerprint, num_items=dataset.num_items, kinds=(kind,)
    )
    model.to(device)
    return lambda batch: model.score(batch["history"].to(device)).float().cpu()
