"""The models eval-all compares: which checkpoint each entry evaluates (configured, or the newest
complete run of its kind) and how it scores (its kind's scorer, from runkit's registry)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from recdata.errors import UserError
from runkit.checkpoint import CARD_FILE, CheckpointError, check_card, read_card
from runkit.runs import find_newest_checkpoint

log = logging.getLogger(__name__)
# (entry key, checkpoint kind, eval.* option naming its path)
MODELS = (
    ("baseline_student", "sasrec", "baseline_checkpoint_path"),
    ("distilled_student", "sasrec-distilled", "distilled_checkpoint_path"),
    ("teacher_model", "ilora-teacher", "teacher_checkpoint_path"),
)


@dataclass
class ComparedModel:
    """One entry of the comparison: its checkpoint and card, or why it cannot be evaluated."""

    key: str
    kind: str
    path: Path | None = None
    card: dict | None = None
    error: str | None = None
    reuse_declined: str | None = None  # why the run's stored test predictions were not reused


def resolve_checkpoint(
    configured: str | None, kind: str, result_dir: Path, fingerprint: str
) -> Path:
    """The configured checkpoint directory (a run directory is accepted for its
    checkpoints/best), or the newest of this kind under result_dir built on this dataset."""
    if not configured:
        path = find_newest_checkpoint(result_dir, (kind,), fingerprint=fingerprint)
        log.info("%s: using the newest checkpoint on this dataset %s", kind, path)
        return path
    path = Path(configured)
    if not (path / CARD_FILE).is_file() and (path / "checkpoints" / "best" / CARD_FILE).is_file():
        return path / "checkpoints" / "best"
    return path


def resolve_model(
    cfg: DictConfig, key: str, kind: str, option: str, fingerprint: str
) -> ComparedModel:
    target = ComparedModel(key, kind)
    try:
        result_dir = Path(cfg.paths.result_dir)
        target.path = resolve_checkpoint(cfg.eval.get(option), kind, result_dir, fingerprint)
        if not target.path.exists():
            raise CheckpointError(f"checkpoint {target.path} does not exist (eval.{option})")
        target.card = read_card(target.path)
        check_card(target.card, target.path, kinds=(kind,), fingerprint=None, num_items=None)
    except UserError as error:
        target.error = str(error)
    return target


def history_window(cfg: DictConfig, targets: list[ComparedModel]) -> int:
    """The history length fed to every model: at least what each was trained with (each model
    truncates to its own window, so a longer one changes nothing for it)."""
    window = int(cfg.student.max_seq_len)
    for t in targets:
        hp = (t.card or {}).get("hparams", {})
        for part in ("model", "student"):  # a student's own config; the teacher's student
            if isinstance(hp.get(part), dict):
                window = max(window, int(hp[part].get("max_seq_len", 0)))
        if isinstance(hp.get("teacher"), dict):
            window = max(window, int(hp["teacher"].get("max_history", 0)))
    return window
