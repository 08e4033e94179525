"""Run directories once they hold results: the completion marker, and "the newest complete run
of a kind" that every step uses when it is not given a checkpoint.

A run directory holds the resolved config, TensorBoard logs, checkpoints/best|last (the
checkpoint contract), Lightning's last.ckpt, the metrics files and, written last,
`run_complete.json`.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recdata.atomic import write_json
from runkit.checkpoint import CARD_FILE, CheckpointError, read_card
from runkit.data import dataset_fingerprint

log = logging.getLogger(__name__)
COMPLETE_FILE, TEST_METRICS_FILE = "run_complete.json", "test_metrics.json"


# -- complete runs and "the newest run of a kind" ------------------------------------------------
def mark_incomplete(run_dir: Path) -> None:
    """Called when a run starts (or resumes): until it ends, no lookup may pick it."""
    (Path(run_dir) / COMPLETE_FILE).unlink(missing_ok=True)


def mark_complete(run_dir: Path, **details) -> None:
    """Written last, after the test metrics: the run's checkpoints and figures are final."""
    finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_json(Path(run_dir) / COMPLETE_FILE, {"finished_at": finished, **details})


def incomplete_reason(run_dir: Path) -> str | None:
    """Why `run_dir` is not a complete run, or None when it is."""
    for name, why in (
        (TEST_METRICS_FILE, "no test metrics"),
        (COMPLETE_FILE, "no completion marker"),
    ):
        if not (Path(run_dir) / name).is_file():
            return f"{why}: killed, failed or still running"
    return None


def find_newest_checkpoint(
    result_dir: Path, kinds: tuple[str, ...], which: str = "best", *, fingerprint: str | None = None
) -> Path:
    """The `checkpoints/<which>` directory of the newest complete run under `result_dir` of these
    kinds, built on the dataset of `fingerprint` when given (several datasets share one result
    dir). Incomplete runs (killed, failed, still running) are skipped and logged."""
    found: list[tuple[str, float, Path]] = []
    skipped: list[str] = []
    other_data = 0
    for card_path in Path(result_dir).glob(f"**/checkpoints/{which}/{CARD_FILE}"):
        run_dir = card_path.parents[2]
        try:
            card = read_card(card_path.parent)
        except CheckpointError as error:
            skipped.append(f"{run_dir} ({error})")
            continue
        if card["kind"] not in kinds:
            continue
        if fingerprint is not None and card.get("data", {}).get("fingerprint") != fingerprint:
            other_data += 1
            continue
        if reason := incomplete_reason(run_dir):
            skipped.append(f"{run_dir} ({reason})")
            continue
        found.append((card.get("created_at", ""), card_path.stat().st_mtime, card_path.parent))
    what = " or ".join(kinds)
    if skipped:
        log.warning(
            "looking for the newest %s run: skipped %d: %s",
            what,
            len(skipped),
            "; ".join(sorted(skipped)),
        )
    if other_data:
        log.info(
            "looking for the newest %s run: %d built on other datasets left out", what, other_data
        )
    if not found:
        hints = [f"skipped {len(skipped)} incomplete or unreadable"] if skipped else []
        hints += [f"{other_data} built on other datasets"] if other_data else []
        hint = f" ({'; '.join(hints)})" if hints else ""
        dataset = f" on this dataset (fingerprint {fingerprint[:12]}…)" if fingerprint else ""
        raise CheckpointError(
            f"no complete {what} run{dataset} found under {result_dir}/{hint}; train one first"
        )
    return max(found)[2]


def checkpoint_or_newest(cfg: DictConfig, key: str, kind: str) -> Path:
    """The checkpoint at config key `key`, or when unset the newest complete run of `kind` built on
    the configured dataset (logged, and written into `cfg` so config.yaml and a resume name
    exactly that checkpoint)."""
    configured = OmegaConf.select(cfg, key)
    if configured:
        return Path(configured)
    fingerprint = dataset_fingerprint(cfg)
    path = find_newest_checkpoint(Path(cfg.paths.result_dir), (kind,), fingerprint=fingerprint)
    log.info("%s not set: using the newest %s checkpoint on this dataset %s", key, kind, path)
    OmegaConf.update(cfg, key, str(path))
    return path
