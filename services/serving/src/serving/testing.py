"""A `bentoml serve TARGET` subprocess on a free localhost port, for service tests and benchmarks
of any service of the project (its settings passed as environment variables); each service's
`testing` module names its target and settings (e.g. `teacher.testing.ServiceProcess`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[4]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`bentoml serve TARGET --port P` with `env` added to this environment, in a subprocess
    (own process group), ready once /readyz answers 200. Use as a context manager or call
    `stop()`; `kill()` + `start()` is a crash and a restart on the same port."""

    def __init__(
        self,
        target: str,
        env: dict[str, str],
        *,
        port: int | None = None,
        log_file: Path | None = None,
        startup_timeout: float = 180.0,
        cwd: Path = REPO_ROOT,
    ):
        self.target, self.cwd = target, cwd
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file, self.startup_timeout = log_file, startup_timeout
        self.environ = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", **env}
        self._log = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        self.start()

    def start(self) -> None:
        command = [sys.executable, "-m", "bentoml", "serve", self.target, "--port", str(self.port)]
        self.process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=self.environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL the server process only, as `kill -9 <pid of bentoml serve>` would."""
        self.process.kill()
        self.process.wait(timeout=20)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.target} exited with code {self.process.returncode} before it was "
                    f"ready{self._tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.25)
        raise TimeoutError(
            f"{self.target} not ready on {self.url} after {timeout:.0f}s{self._tail()}"
        )

    def _tail(self) -> str:
        if self.log_file and Path(self.log_file).is_file():
            lines = Path(self.log_file).read_text(errors="replace").splitlines()[-30:]
            return "; log tail:\n" + "\n".join(lines)
        return ""

    def stop(self) -> None:
        """SIGTERM to the server (it stops its workers), SIGKILL after 20 s; then SIGKILL any
        of its worker processes still alive (they run in their own sessions)."""
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
