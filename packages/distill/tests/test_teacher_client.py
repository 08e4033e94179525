"""`distill.teacher_client`: soft labels from the running teacher service equal the precomputed
ones for the same teacher and keys; a service on other data is refused; transient failures are
retried with backoff, a 4xx is not."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import torch

from distill import precompute
from distill.soft_labels import SoftLabelError, read_soft_labels
from distill.teacher_client import TeacherClient, TeacherServiceError, fetch_soft_labels
from ilora.inference import teacher_digest
from recdata.datamodule import SequentialDataModule
from recdata.testing import cyclic_sequences, make_prepared, run_cli, tiny_run_overrides
from teacher.testing import ServiceProcess, free_port

K, BATCH, MAX_SEQ_LEN = 10, 8, 16  # MAX_SEQ_LEN: student.max_seq_len of tiny_run_overrides


@pytest.fixture(scope="module")
def served(tiny_pipeline, tmp_path_factory):
    service = ServiceProcess(tiny_pipeline["teacher"], tiny_pipeline["data"],
                             log_file=tmp_path_factory.mktemp("client-service") / "serve.log")  # fmt: skip
    yield service
    service.stop()


def datamodule(data) -> SequentialDataModule:
    dm = SequentialDataModule(data, max_seq_len=MAX_SEQ_LEN, train_mode="prefix")
    dm.setup()
    return dm


def test_served_soft_labels_equal_precomputed(served, tiny_pipeline, tmp_path):
    out = tmp_path / "soft"
    run_cli(precompute.main, tiny_run_overrides(
        tiny_pipeline["data"], tmp_path / "run", f"distill.teacher_checkpoint_path={tiny_pipeline['teacher']}",
        f"distill.soft_labels_dir={out}", "distill.soft_label_samples=all", f"distill.candidate_topk={K}",
        f"distill.teacher_batch_size={BATCH}"))  # fmt: skip
    dm = datamodule(tiny_pipeline["data"])
    reference = read_soft_labels(out, fingerprint=dm.fingerprint)
    keys = precompute.training_keys(dm, "all")

    labels = fetch_soft_labels(served.url, dm, keys, k=K, batch_size=BATCH, samples="all")
    for field in ("user_ids", "positions", "topk_items", "topk_scores", "item_embeddings"):
        assert torch.equal(getattr(labels, field), getattr(reference, field)), field  # bitwise
    card = labels.card
    assert (
        card["teacher_digest"]
        == teacher_digest(tiny_pipeline["teacher"])
        == reference.card["teacher_digest"]
    )
    assert (
        card["data_fingerprint"] == dm.fingerprint and card["dataset"] == reference.card["dataset"]
    )
    assert (card["source"], card["teacher_url"], card["history_masked"], card["samples"]) == (
        "service",
        served.url,
        True,
        "all",
    )

    # other batch boundaries: same ranking, scores up to float32 rounding of batch-dependent matmuls
    other = fetch_soft_labels(served.url, dm, keys, k=K, batch_size=5)
    assert torch.equal(other.topk_items, reference.topk_items)
    torch.testing.assert_close(other.topk_scores, reference.topk_scores, rtol=0, atol=1e-5)


def test_refuses_a_service_on_other_data(served, tmp_path):
    dm = datamodule(make_prepared(tmp_path / "other", cyclic_sequences(num_users=8)))
    with pytest.raises(SoftLabelError, match="trained on other data"):
        fetch_soft_labels(served.url, dm, precompute.training_keys(dm, "all"), k=K)


def test_a_4xx_raises_the_servers_message_without_retrying(served):
    with TeacherClient(served.url, retries=3, backoff=0.0) as client, \
            pytest.raises(TeacherServiceError, match=r"HTTP 400.*unknown item ids \[999\]"):  # fmt: skip
        client.topk([[1, 999]], k=5, exclude_history=True)


def fake_service(failures: list):
    """An httpx transport answering like the service; `failures` are served first, one per call
    (an exception is raised, an int is returned as that HTTP status)."""
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(
                failure,
                json={
                    "error": f"status {failure}",
                    "detail": [{"loc": ["requests", 0], "msg": "nope"}],
                },
            )
        if request.url.path == "/topk":
            requests = json.loads(request.content)["requests"]
            return httpx.Response(
                200,
                json=[
                    {"topk_items": list(range(1, r["k"] + 1)), "topk_scores": [1.5] * r["k"]}
                    for r in requests
                ],
            )
        raise AssertionError(request.url.path)

    return httpx.MockTransport(handle), calls


def test_retries_transient_failures_then_succeeds():
    transport, calls = fake_service([httpx.ConnectError("refused"), 503, httpx.ReadTimeout("slow")])
    with TeacherClient(
        "http://teacher.test", retries=3, backoff=0.0, transport=transport
    ) as client:
        items, scores = client.topk([[1, 2], [3]], k=2, exclude_history=True)
    assert calls == ["/topk"] * 4
    assert items.tolist() == [[1, 2], [1, 2]] and scores.dtype == torch.float32


def test_gives_up_after_the_retries():
    transport, calls = fake_service([500] * 10)
    with TeacherClient("http://teacher.test", retries=2, backoff=0.0, transport=transport) as client, \
            pytest.raises(TeacherServiceError, match=r"failed after 3 attempts: HTTP 500"):  # fmt: skip
        client.topk([[1]], k=1, exclude_history=True)
    assert len(calls) == 3


def test_no_retry_on_4xx():
    transport, calls = fake_service([422, 500])
    with TeacherClient("http://teacher.test", retries=3, backoff=0.0, transport=transport) as client, \
            pytest.raises(TeacherServiceError, match=r"HTTP 422\): status 422: requests.0: nope"):  # fmt: skip
        client.topk([[1]], k=1, exclude_history=True)
    assert len(calls) == 1


def test_unreachable_service_is_a_user_error():
    with TeacherClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.0, timeout=5) as client, \
            pytest.raises(TeacherServiceError, match="failed after 2 attempts: ConnectError.*is it running"):  # fmt: skip
        client.info()


def test_item_embeddings_decode_bitwise():
    array = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)

    def handle(request):
        return httpx.Response(
            200,
            json={
                "shape": [5, 3],
                "dtype": "float32",
                "data": base64.b64encode(array.tobytes()).decode(),
            },
        )

    with TeacherClient("http://teacher.test", transport=httpx.MockTransport(handle)) as client:
        assert torch.equal(client.item_embeddings(), torch.from_numpy(array))
