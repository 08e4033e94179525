"""Starting a service so that it fails once, and cleanly.

`bentoml serve` runs a service's `on_deployment` hook in its own process before it spawns a
worker: checks made there (`checkpoint_dir`, `check_weights`, the service's own) stop it with one
`Error:` line and exit 1. A worker would otherwise raise in its start-up, be respawned by the
process manager and raise again, forever. What only loading the model reveals goes through
`fail_startup`, which stops the whole server from the worker, also once.

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

log = logging.getLogger("serving.startup")
SERVER_PID = "SERVING_SERVER_PID"  # set by the server process for its workers (they inherit it)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ServiceStartupError(BentoMLException):
    """The service cannot start: a missing or invalid checkpoint or dataset (`bentoml serve`
    prints it as one `Error:` line and exits 1)."""


def checkpoint_dir(value: str | None, variable: str, example: str) -> Path:
    """The checkpoint directory an environment variable names, or a ServiceStartupError that
    says how to set it (`example`: a whole `bentoml serve` command line)."""
    if not value:
        raise ServiceStartupError(
            f"{variable} is not set: point it at a checkpoint directory, e.g. {example}"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ServiceStartupError(f"{variable}={value!r} is not a directory")
    return path


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
                "re-export or re-train the model"
            ) from None
    for name, expected in (card.get("weights") or {}).items():
        if (digest := sha256_file(path / name)) != expected:
            raise ServiceStartupError(
                f"{path / name} does not match its card (sha256 {digest[:12]}…, card.json "
                f"lists {str(expected)[:12]}…): the file changed after it was written"
            )


def mark_server() -> None:
    """In the `bentoml serve` process, before it spawns workers: tell them who their server is."""
    os.environ[SERVER_PID] = str(os.getpid())


def server_pid() -> int | None:
    """The pid of the `bentoml serve` process this worker belongs to (None outside a server)."""
    value = os.environ.get(SERVER_PID)
    return int(value) if value and value.isdigit() else None


def exit_with_server(service: str) -> None:
    """Make this worker of `service` die when its server process dies.

    A worker runs in its own session and holds the listening socket it inherited, so without this
    a `kill -9` of `bentoml serve` leaves the worker answering on the port with a model nobody
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
        log.error("the %s server (pid %d) is gone; this worker exits", service, server)
        os._exit(1)


def _exit_when_orphaned(server: int) -> None:
    while os.getppid() == server:
        time.sleep(0.5)
    os._exit(1)


def fail_startup(error: Exception, service: str) -> NoReturn:
    """A worker cannot load its model: log one line and stop the whole server, instead of
    raising into a respawn loop (every respawn would fail the same way). The worker exits when the
    stopping server asks it to, so the server never respawns it."""
    log.error("cannot start the %s service: %s", service, error)
    logging.shutdown()
    server = server_pid()
    if server is not None:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(2))
        os.kill(server, signal.SIGTERM)
        time.sleep(60)  # a server that ignored the signal: exit anyway
    os._exit(2)
