"""Starting the teacher service so that it fails once, and cleanly (the mechanics, shared with
every service, are in `serving.startup`).

`bentoml serve` runs `check_settings` in its own process before it spawns a worker (the service's
`on_deployment` hook): a bad setting or a corrupt checkpoint stops it with one `Error:` line and
exit 1. What only loading the model reveals (e.g. a base LLM missing from the cache) goes through
`fail_startup`, which stops the whole server from the worker, also once. Workers die with the
server (`exit_with_server`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NoReturn

from serving import startup as shared
from serving.startup import ServiceStartupError, check_weights, mark_server, server_pid

__all__ = [
    "ServiceStartupError",
    "check_settings",
    "check_weights",
    "exit_with_server",
    "fail_startup",
    "load_state",
    "mark_server",
    "server_pid",
    "settings",
]

log = logging.getLogger("teacher.service")
DEFAULT_DATA = "data/processed/ml-100k"


def settings() -> dict[str, str | None]:
    return {
        "checkpoint": os.environ.get("TEACHER_CHECKPOINT") or None,
        "data": os.environ.get("TEACHER_DATA") or DEFAULT_DATA,
        "device": os.environ.get("TEACHER_DEVICE") or "cpu",
        "cache_dir": os.environ.get("TEACHER_CACHE_DIR") or os.environ.get("ILORA_CACHE") or None,
    }


def check_settings(checkpoint: str | None, data: str) -> None:
    """Cheap checks (no model load) so a misconfigured `bentoml serve` fails before it spawns
    workers: the checkpoint is an intact ilora-teacher built on this dataset."""
    from recdata.contract import load_prepared
    from recdata.errors import UserError
    from runkit.checkpoint import read_card

    path = shared.checkpoint_dir(
        checkpoint,
        "TEACHER_CHECKPOINT",
        "TEACHER_CHECKPOINT=result/<run>/checkpoints/best bentoml serve "
        "teacher.service:TeacherService",
    )
    try:
        card = read_card(path)
        dataset = load_prepared(Path(data).expanduser())
    except UserError as error:
        raise ServiceStartupError(
            f"cannot serve teacher {checkpoint!r} on data {data!r}: {error}"
        ) from error
    if card.get("kind") != "ilora-teacher":
        raise ServiceStartupError(
            f"TEACHER_CHECKPOINT={checkpoint!r} is a {card.get('kind')!r} checkpoint, "
            "not an ilora-teacher"
        )
    fingerprint = card.get("data", {}).get("fingerprint")
    if fingerprint != dataset.fingerprint:
        raise ServiceStartupError(
            f"teacher {checkpoint!r} was trained on other data "
            f"(fingerprint {str(fingerprint)[:12]}…) "
            f"than TEACHER_DATA={data!r} ({dataset.fingerprint[:12]}…)"
        )
    check_weights(path, card)


def load_state(checkpoint: str | None, data: str, device: str, cache_dir: str | None):
    """Load and validate everything the service serves; raises ServiceStartupError."""
    from ilora.checkpoint import load_item_embeddings, load_teacher
    from ilora.inference import teacher_digest
    from recdata.contract import load_prepared
    from recdata.errors import UserError

    check_settings(checkpoint, data)
    path = Path(checkpoint).expanduser()
    try:
        dataset = load_prepared(Path(data).expanduser())
        teacher, ckpt = load_teacher(
            path,
            dataset,
            device=device,
            cache_dir=Path(cache_dir).expanduser() if cache_dir else None,
        )
        embeddings = load_item_embeddings(ckpt.path).float().contiguous()
        digest = teacher_digest(path)
    except (UserError, OSError, KeyError, ValueError) as error:
        raise ServiceStartupError(
            f"cannot serve teacher {checkpoint!r} on data {data!r}: {error}"
        ) from error
    if embeddings.shape[0] != dataset.num_items + 1:
        raise ServiceStartupError(
            f"{path}: item embeddings have {embeddings.shape[0]} rows, "
            f"expected {dataset.num_items + 1}"
        )
    return teacher, ckpt, dataset, embeddings, digest


def exit_with_server() -> None:
    """This worker dies with its `bentoml serve` process (see `serving.startup`)."""
    shared.exit_with_server("teacher")


def fail_startup(error: Exception) -> NoReturn:
    """Stop the whole server once, from a worker that cannot load the teacher."""
    shared.fail_startup(error, "teacher")
