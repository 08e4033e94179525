"""The tiny teacher served by `bentoml serve` for the whole session (the root conftest's
`teacher_service`), and the same teacher loaded in-process for reference."""

from __future__ import annotations

import pytest


@pytest.fixture
def served(teacher_service):
    return teacher_service


@pytest.fixture(scope="session")
def in_process(tiny_pipeline):
    """(teacher, checkpoint, dataset) loaded the way the service loads them."""
    from ilora.checkpoint import load_teacher
    from recdata.contract import load_prepared

    dataset = load_prepared(tiny_pipeline["data"])
    teacher, ckpt = load_teacher(tiny_pipeline["teacher"], dataset)
    return teacher, ckpt, dataset
