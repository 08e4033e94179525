"""Session-wide fixtures shared by every package's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """Tiny cyclic data + a trained tiny student and tiny-LLM teacher, built once per session:
    {"data", "llm", "student", "teacher"}."""
    from ilora.testing import train_tiny_pipeline

    return train_tiny_pipeline(tmp_path_factory.mktemp("tiny-pipeline"))
