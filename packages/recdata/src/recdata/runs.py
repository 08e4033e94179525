"""Run directories and the Hydra entry points shared by every command.

A run directory is `result/result_{YYYYmmdd_HHMMSS}/` (Hydra's run dir): the resolved config,
TensorBoard logs, checkpoints/best|last (the checkpoint contract), Lightning's last.ckpt and the
metrics files. Commands print `run_dir: <path>` as their last line.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from recdata.checkpoint import CARD_FILE, read_card
from recdata.errors import CheckpointError, UserError, report_and_exit

log = logging.getLogger(__name__)
CONF_ENV = "ILORA_CONF_DIR"


def config_dir() -> str:
    """The shared `conf/` tree: $ILORA_CONF_DIR, else the nearest `conf/config.yaml` above the
    working directory, else the checkout this package is installed from (editable install)."""
    if os.environ.get(CONF_ENV):
        return str(Path(os.environ[CONF_ENV]).resolve())
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "conf" / "config.yaml").is_file():
            return str(parent / "conf")
    return str(Path(__file__).resolve().parents[4] / "conf")


def hydra_entry(config_name: str) -> Callable:
    """Decorate `task(cfg) -> None` as a Hydra command whose UserErrors exit with code 2."""
    import hydra

    def decorate(task: Callable) -> Callable:
        @functools.wraps(task)
        def guarded(cfg):
            try:
                return task(cfg)
            except UserError as error:
                report_and_exit(error)

        return hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(
            guarded
        )

    return decorate


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def announce_run_dir(run_dir: Path) -> None:
    print(f"run_dir: {run_dir}", flush=True)


def find_newest_checkpoint(result_dir: Path, kinds: tuple[str, ...], which: str = "best") -> Path:
    """The `checkpoints/<which>` directory of the newest run under `result_dir` of these kinds."""
    found: list[tuple[str, float, Path]] = []
    for card_path in Path(result_dir).glob(f"**/checkpoints/{which}/{CARD_FILE}"):
        try:
            card = read_card(card_path.parent)
        except CheckpointError:
            continue
        if card["kind"] in kinds:
            found.append((card.get("created_at", ""), card_path.stat().st_mtime, card_path.parent))
    if not found:
        raise CheckpointError(
            f"no {' or '.join(kinds)} checkpoint found under {result_dir}/; train one first"
        )
    return max(found)[2]


def checkpoint_or_newest(configured: str | None, result_dir: Path, kind: str, key: str) -> Path:
    """The checkpoint at config key `key`, or when unset the newest run of `kind` (logged)."""
    if configured:
        return Path(configured)
    path = find_newest_checkpoint(Path(result_dir), (kind,))
    log.info("%s not set: using the newest %s checkpoint %s", key, kind, path)
    return path
