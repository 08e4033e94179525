"""A `bentoml serve teacher.service:TeacherService` subprocess on a free localhost port, for the
service tests, the distill client tests and bench.speed.service (the tiny teacher they serve comes
from the session fixture `tiny_pipeline`, i.e. `ilora.testing.train_tiny_pipeline`)."""

from __future__ import annotations

from pathlib import Path

from serving.testing import REPO_ROOT, ServerProcess, free_port

SERVICE_TARGET = "teacher.service:TeacherService"
__all__ = ["REPO_ROOT", "SERVICE_TARGET", "ServiceProcess", "free_port"]


class ServiceProcess(ServerProcess):
    """The teacher service serving `checkpoint` on `data` (see `serving.testing.ServerProcess`:
    ready once /readyz answers 200; `kill()` + `start()` is a crash and a restart on the same
    port)."""

    def __init__(
        self,
        checkpoint: Path,
        data: Path,
        *,
        port: int | None = None,
        env: dict | None = None,
        log_file: Path | None = None,
        startup_timeout: float = 180.0,
    ):
        settings = {"TEACHER_CHECKPOINT": str(checkpoint), "TEACHER_DATA": str(data), **(env or {})}
        super().__init__(
            SERVICE_TARGET, settings, port=port, log_file=log_file, startup_timeout=startup_timeout
        )
