"""Session-wide fixtures shared by every package's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """Tiny cyclic data + a trained tiny student and tiny-LLM teacher, built once per session:
    {"data", "llm", "student", "teacher"}."""
    from ilora.testing import train_tiny_pipeline

    return train_tiny_pipeline(tmp_path_factory.mktemp("tiny-pipeline"))


@pytest.fixture(scope="session")
def teacher_service(tiny_pipeline, tmp_path_factory):
    """The tiny teacher served by a real `bentoml serve` for the whole session (one start-up,
    ~20 s, shared by the service and the distill client tests): `.url`, `.port`, `.kill()`,
    `.start()`; a test that kills it restarts it on the same port."""
    from teacher.testing import ServiceProcess

    log = tmp_path_factory.mktemp("teacher-service") / "serve.log"
    service = ServiceProcess(tiny_pipeline["teacher"], tiny_pipeline["data"], log_file=log)
    yield service
    service.stop()
