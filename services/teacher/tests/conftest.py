"""The tiny teacher (root conftest's session fixture `tiny_pipeline`) served by `bentoml serve`
in a subprocess for the whole session, and the same teacher loaded in-process for reference."""

from __future__ import annotations

import pytest

from teacher.testing import ServiceProcess


@pytest.fixture(scope="session")
def served(tiny_pipeline, tmp_path_factory):
    """A running service: `.url`; stopped (with its workers) when the session ends."""
    log = tmp_path_factory.mktemp("teacher-service") / "serve.log"
    service = ServiceProcess(tiny_pipeline["teacher"], tiny_pipeline["data"], log_file=log)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def in_process(tiny_pipeline):
    """(teacher, checkpoint, dataset) loaded the way the service loads them."""
    from ilora.checkpoint import load_teacher
    from recdata.contract import load_prepared

    dataset = load_prepared(tiny_pipeline["data"])
    teacher, ckpt = load_teacher(tiny_pipeline["teacher"], dataset)
    return teacher, ckpt, dataset
