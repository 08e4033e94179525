"""Starting the teacher service so that it fails once, and cleanly.

`bentoml serve` runs `check_settings` in its own process before it spawns a worker (the service's
`on_deployment` hook): a bad setting or a corrupt checkpoint stops it with one `Error:` line and
exit 1. A worker would otherwise raise in its start-up, be respawned by the process manager and
raise again, forever. What only loading the model reveals (e.g. a base LLM missing from the cache)
goes through `fail_startup`, which stops the whole server from the worker, also once.

Workers die with the server (`exit_with_server`), so a `kill -9` of `bentoml serve` never leaves
an orphan serving on the port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from bentoml.exceptions import BentoMLException

log = logging.getLogger("teacher.service")
DEFAULT_DATA = "data/processed/ml-100k"
SERVER_PID = "TEACHER_SERVER_PID"  # set by the server process for its workers (they inherit it)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ServiceStartupError(BentoMLException):
    """The service cannot start: a missing or invalid checkpoint or dataset (`bentoml serve`
    prints it as one `Error:` line and exits 1)."""


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

    if not checkpoint:
        raise ServiceStartupError(
            "TEACHER_CHECKPOINT is not set: point it at a teacher checkpoint directory, e.g. "
            "TEACHER_CHECKPOINT=result/<run>/checkpoints/best bentoml serve "
            "teacher.service:TeacherService"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise ServiceStartupError(f"TEACHER_CHECKPOINT={checkpoint!r} is not a directory")
    try:
        card = read_card(path)
        dataset = load_prepared(Path(data).expanduser())
    except UserError as error:
        raise ServiceStartupError(
            f"cannot serve teacher {checkpoint!r} on data {data!r}: {error}"
        ) from error
    if card.get("kind") != "ilora-teacher":
        raise ServiceStartupError(
            f"TEACHER_CHECKPOINT={checkpoint!r} is a {card.get('kind')!r} checkpoint, not an ilora-teacher"
        )
    fingerprint = card.get("data", {}).get("fingerprint")
    if fingerprint != dataset.fingerprint:
        raise ServiceStartupError(
            f"teacher {checkpoint!r} was trained on other data (fingerprint {str(fingerprint)[:12]}…) "
            f"than TEACHER_DATA={data!r} ({dataset.fingerprint[:12]}…)"
        )
    check_weights(path, card)


def check_weights(path: Path, card: dict) -> None:
    """Every weights file of the checkpoint opens as safetensors (the header parses and its
    tensors exactly cover the file, which catches truncation and a garbled header), and each has
    the sha256 the card lists for it under "weights", when the card lists one (catches flipped
    bytes). Only headers and digests are read; nothing heavier than torch is imported here."""
    from safetensors import SafetensorError, safe_open

    from recdata.atomic import sha256_file
    from runkit.checkpoint import WEIGHTS_FILE

    for file in sorted({path / WEIGHTS_FILE, *path.glob("*.safetensors")}):
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ServiceStartupError(
                f"{file} is not a readable safetensors file ({error}); "
                "re-export or re-train the teacher"
            ) from None
    for name, expected in (card.get("weights") or {}).items():
        if (digest := sha256_file(path / name)) != expected:
            raise ServiceStartupError(
                f"{path / name} does not match its card (sha256 {digest[:12]}…, card.json "
                f"lists {str(expected)[:12]}…): the file changed after it was written"
            )


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
            f"{path}: item embeddings have {embeddings.shape[0]} rows, expected {dataset.num_items + 1}"
        )
    return teacher, ckpt, dataset, embeddings, digest


def mark_server() -> None:
    """In the `bentoml serve` process, before it spawns workers: tell them who their server is."""
    os.environ[SERVER_PID] = str(os.getpid())


def server_pid() -> int | None:
    """The pid of the `bentoml serve` process this worker belongs to (None outside a server)."""
    value = os.environ.get(SERVER_PID)
    return int(value) if value and value.isdigit() else None


def exit_with_server() -> None:
    """Make this worker die when its server process dies.

    A worker runs in its own session and holds the listening socket it inherited, so without this
    a `kill -9` of `bentoml serve` leaves the worker answering on the port with a teacher nobody
    manages any more. On Linux the kernel delivers SIGKILL the moment the parent exits
    (PR_SET_PDEATHSIG: no polling, and it works while the worker is busy in a long forward pass or
    holds the GIL); the parent is the server's event-loop thread, which lives as long as the
    server. Elsewhere a daemon thread polls the parent pid twice a second. Either way a server
    that died before this call is noticed by comparing the parent pid with the one it announced.
    """
    server = server_pid()
    if server is None:  # not a worker of `bentoml serve` (e.g. the class built in-process)
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_exit_when_orphaned, args=(server,), daemon=True).start()
    if os.getppid() != server:
        log.error("the teacher server (pid %d) is gone; this worker exits", server)
        os._exit(1)


def _exit_when_orphaned(server: int) -> None:
    while os.getppid() == server:
        time.sleep(0.5)
    os._exit(1)


def fail_startup(error: Exception) -> NoReturn:
    """A worker cannot load the teacher: log one line and stop the whole server, instead of
    raising into a respawn loop (every respawn would fail the same way). The worker exits when the
    stopping server asks it to, so the server never respawns it."""
    log.error("cannot start the teacher service: %s", error)
    logging.shutdown()
    server = server_pid()
    if server is not None:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(2))
        os.kill(server, signal.SIGTERM)
        time.sleep(60)  # a server that ignored the signal: exit anyway
    os._exit(2)
