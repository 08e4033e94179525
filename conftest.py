"""Session-wide fixtures and hooks shared by every package's tests."""

from __future__ import annotations

import os

import pytest

# bench/gpu_check.sh sets this: on the GPU machine a skipped CUDA test would pass the check unseen
REQUIRE_CUDA = "ILORA_REQUIRE_CUDA"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip cleanly where no CUDA device is visible (CI, this CPU)."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get(REQUIRE_CUDA) == "1":
        raise pytest.UsageError(
            f"{REQUIRE_CUDA}=1 but torch {torch.__version__} sees no CUDA device"
        )
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in cuda_items:
        item.add_marker(skip)


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


@pytest.fixture
def one_thread():
    """This process on one thread, as `recdata.testing.fork_cli` children are: bit-identical
    arithmetic between a killed child's epochs and the rest of a run done here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
