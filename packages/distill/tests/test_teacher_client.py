"""`distill.teacher_client`: soft labels from the running teacher service equal the precomputed
ones for the same teacher and keys, also across a real kill -9 and restart of the service and
across an interrupted fetch (resumed from its shard cache); a service on other data or with
another teacher is refused; transient failures are retried for a time budget, a 4xx is not."""

from __future__ import annotations

import base64
import functools
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from distill import precompute
from distill.soft_labels import SoftLabelError, read_soft_labels
from distill.teacher_client import TeacherClient, TeacherServiceError, fetch_soft_labels
from ilora.inference import DIGEST_HEADER, teacher_digest
from recdata.datamodule import SequentialDataModule
from recdata.testing import cyclic_sequences, make_prepared
from runkit.testing import run_cli, tiny_run_overrides
from teacher.testing import free_port

K, BATCH, MAX_SEQ_LEN = 10, 2, 16  # MAX_SEQ_LEN: student.max_seq_len of tiny_run_overrides
# the tiny teacher reads 10 user windows: 5 shards of one call each, as precompute cuts them
SHARD = 2


@pytest.fixture
def served(teacher_service):
    return teacher_service


@pytest.fixture(scope="module")
def precomputed(tiny_pipeline, tmp_path_factory):
    """`precompute-soft-labels` of every training sample in shards of SHARD (the reference a
    fetch must equal)."""
    root = tmp_path_factory.mktemp("precomputed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precompute, "SHARD_SIZE", SHARD)
        run_cli(
            precompute.main,
            tiny_run_overrides(
                tiny_pipeline["data"],
                root / "run",
                f"distill.teacher_checkpoint_path={tiny_pipeline['teacher']}",
                f"distill.soft_labels_dir={root / 'soft'}",
                "distill.soft_label_samples=all",
                f"distill.candidate_topk={K}",
                f"distill.teacher_batch_size={BATCH}",
            ),
        )
    return root / "soft"


def datamodule(data) -> SequentialDataModule:
    dm = SequentialDataModule(data, max_seq_len=MAX_SEQ_LEN, train_mode="prefixes")
    dm.setup()
    return dm


FIELDS = ("user_ids", "positions", "topk_items", "topk_scores", "item_embeddings")


def assert_same_labels(labels, reference) -> None:
    for field in FIELDS:
        assert torch.equal(getattr(labels, field), getattr(reference, field)), field  # bitwise


def test_served_soft_labels_equal_precomputed(served, tiny_pipeline, precomputed):
    dm = datamodule(tiny_pipeline["data"])
    reference = read_soft_labels(precomputed, fingerprint=dm.fingerprint)
    keys = precompute.training_keys(dm, "all")

    labels = fetch_soft_labels(
        served.url, dm, keys, k=K, batch_size=BATCH, shard_size=SHARD, samples="all"
    )
    assert_same_labels(labels, reference)
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


def test_refuses_a_service_with_another_teacher(served, tiny_pipeline):
    dm = datamodule(tiny_pipeline["data"])
    with pytest.raises(
        SoftLabelError, match=r"serves teacher \w+… \(.*\), not the expected 0123456789ab… \(mine\)"
    ):
        fetch_soft_labels(
            served.url,
            dm,
            precompute.training_keys(dm, "all"),
            k=K,
            expected_digest="0123456789abcdef",
            expected_from="mine",
        )


class Forward(httpx.BaseTransport):
    """The real service over HTTP, counting successful scoring calls (/topk, /topk_windows);
    `before_topk(n)` runs before the n-th is sent (1-based) and may raise to fail it."""

    def __init__(self, before_topk=None):
        self.http, self.before_topk, self.calls, self.answered = (
            httpx.HTTPTransport(),
            before_topk,
            0,
            0,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        scoring = request.url.path in ("/topk", "/topk_windows")
        if scoring:
            self.calls += 1
            if self.before_topk:
                self.before_topk(self.calls)
        response = self.http.handle_request(request)
        self.answered += scoring and response.status_code == 200
        return response


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def calls_of_a_whole_fetch(served, dm, keys, tmp_path) -> int:
    uninterrupted = Forward()
    fetch_soft_labels(
        served.url,
        dm,
        keys,
        k=K,
        batch_size=BATCH,
        shard_size=SHARD,
        cache_dir=tmp_path / "uninterrupted",
        transport=uninterrupted,
    )
    assert uninterrupted.answered >= 4  # room to fail mid-way
    return uninterrupted.answered


def test_a_service_killed_and_restarted_mid_fetch_loses_nothing(
    served, tiny_pipeline, precomputed, tmp_path
):
    """kill -9 of `bentoml serve` during a fetch: its worker dies with it (the port is free within
    seconds), the fetch keeps retrying while the service restarts (15-25 s) and then ends with
    labels bitwise equal to the precomputed ones; no call is answered twice."""
    dm = datamodule(tiny_pipeline["data"])
    keys = precompute.training_keys(dm, "all")
    calls = calls_of_a_whole_fetch(served, dm, keys, tmp_path)
    freed, restart = [], threading.Thread(target=served.start)

    def kill_before_the_third_call(n: int) -> None:  # mid-fetch: shards 0 and 1 are done
        if n == 3:
            served.kill()
            start = time.monotonic()
            while not port_is_free(served.port) and time.monotonic() - start < 10:
                time.sleep(0.05)
            freed.append(time.monotonic() - start if port_is_free(served.port) else None)
            restart.start()

    transport = Forward(kill_before_the_third_call)
    labels = fetch_soft_labels(
        served.url,
        dm,
        keys,
        k=K,
        batch_size=BATCH,
        shard_size=SHARD,
        timeout=120,
        retry_budget=180,
        cache_dir=tmp_path / "cache",
        transport=transport,
    )
    restart.join()
    assert freed[0] is not None and freed[0] < 5, f"port still taken {freed} s after the kill"
    assert_same_labels(labels, read_soft_labels(precomputed, fingerprint=dm.fingerprint))
    assert transport.answered == calls and transport.calls > calls  # retried, nothing refetched


def test_an_interrupted_fetch_resumes_from_its_cache(served, tiny_pipeline, precomputed, tmp_path):
    """A fetch that gave up (service unreachable past the budget) keeps its finished shards; the
    next fetch of the same job asks only for the rest (and for a shard whose file is damaged),
    and a fetch of another job (other K) reuses nothing."""
    dm = datamodule(tiny_pipeline["data"])
    keys = precompute.training_keys(dm, "all")
    calls = calls_of_a_whole_fetch(served, dm, keys, tmp_path)
    fetch = functools.partial(
        fetch_soft_labels,
        served.url,
        dm,
        keys,
        batch_size=BATCH,
        shard_size=SHARD,
        cache_dir=tmp_path / "cache",
    )

    def outage_from_the_fourth_call(n: int) -> None:
        if n >= 4:
            raise httpx.ConnectError("connection refused")

    with pytest.raises(TeacherServiceError, match="still failing after 1 attempts"):
        fetch(k=K, retry_budget=0, transport=Forward(outage_from_the_fourth_call))
    (shard_dir,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in shard_dir.glob("shard_*.parquet")) == [
        f"shard_{i:06d}.parquet" for i in range(3)
    ]
    damaged = shard_dir / "shard_000001.parquet"
    damaged.write_bytes(damaged.read_bytes()[:50])

    resumed = Forward()
    labels = fetch(k=K, transport=resumed)
    assert_same_labels(labels, read_soft_labels(precomputed, fingerprint=dm.fingerprint))
    assert resumed.answered == calls - 3 + 1  # shards 0 and 2 were kept, shard 1 is fetched again

    other = Forward()
    fetch(k=K - 5, transport=other)
    assert other.answered == calls


def test_a_4xx_raises_the_servers_message_without_retrying(served):
    with (
        TeacherClient(served.url, retry_budget=30, backoff=0.0) as client,
        pytest.raises(TeacherServiceError, match=r"HTTP 400.*unknown item ids \[999\]"),
    ):
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
        "http://teacher.test", retry_budget=30, backoff=0.0, transport=transport
    ) as client:
        items, scores = client.topk([[1, 2], [3]], k=2, exclude_history=True)
    assert calls == ["/topk"] * 4
    assert items.tolist() == [[1, 2], [1, 2]] and scores.dtype == torch.float32


def test_retries_for_the_time_budget_then_gives_up():
    """Bounded by time, not by a count: 0.5 s of 500s with 0.05 s first backoff (doubling)."""
    transport, calls = fake_service([500] * 100)
    start = time.monotonic()
    with (
        TeacherClient(
            "http://teacher.test", retry_budget=0.5, backoff=0.05, transport=transport
        ) as client,
        pytest.raises(
            TeacherServiceError,
            match=r"still failing after \d+ attempts in 0 s \(distill.retry_budget\): HTTP 500",
        ),
    ):
        client.topk([[1]], k=1, exclude_history=True)
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 5 and 4 <= len(calls) <= 6  # at 0, .05, .15, .35, .5 s


def test_no_retry_on_4xx():
    transport, calls = fake_service([422, 500])
    with (
        TeacherClient(
            "http://teacher.test", retry_budget=30, backoff=0.0, transport=transport
        ) as client,
        pytest.raises(TeacherServiceError, match=r"HTTP 422\): status 422: requests.0: nope"),
    ):
        client.topk([[1]], k=1, exclude_history=True)
    assert len(calls) == 1


def test_unreachable_service_is_a_user_error():
    with (
        TeacherClient(
            f"http://127.0.0.1:{free_port()}", retry_budget=0.2, backoff=0.05, timeout=5
        ) as client,
        pytest.raises(
            TeacherServiceError, match="still failing after .* ConnectError.*is it running"
        ),
    ):
        client.info()


def test_an_answer_from_another_teacher_is_refused():
    """The service restarted with another TEACHER_CHECKPOINT between two calls."""
    transport, _ = fake_service([])
    digests = iter(["a" * 64, "b" * 64])

    def handle(request):
        response = transport.handle_request(request)
        response.headers[DIGEST_HEADER] = next(digests)
        return response

    with TeacherClient(
        "http://teacher.test", digest="a" * 64, transport=httpx.MockTransport(handle)
    ) as client:
        client.topk([[1]], k=1, exclude_history=True)
        with pytest.raises(
            TeacherServiceError, match="now serves teacher bbbbbbbbbbbb…, not aaaaaaaaaaaa…"
        ):
            client.topk([[1]], k=1, exclude_history=True)


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


def test_a_prefix_mode_fetch_keys_every_answer_to_its_sample(tiny_pipeline, tmp_path):
    """A prefix-mode teacher is asked key by key through /topk (a fake service here whose answer
    is the length of the history it was sent, i.e. the key's position): every label lands on its
    own key, and a second fetch is served from the cached shards without a call."""
    dm = datamodule(tiny_pipeline["data"])
    keys = precompute.training_keys(dm, "all")
    info = {
        "teacher_digest": "f" * 64,
        "data_fingerprint": dm.fingerprint,
        "num_items": dm.num_items,
        "prompt_mode": "prefix",
        "max_seq_len": MAX_SEQ_LEN,
        "k_min": 1,
        "k_max": 100,
        "max_requests": 256,
    }
    embeddings = base64.b64encode(np.zeros((dm.num_items + 1, 2), dtype="<f4").tobytes()).decode()
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json=info)
        if request.url.path == "/item_embeddings":
            return httpx.Response(
                200, json={"shape": [dm.num_items + 1, 2], "dtype": "float32", "data": embeddings}
            )
        calls.append(request.url.path)
        requests = json.loads(request.content)["requests"]
        return httpx.Response(
            200,
            json=[
                {"topk_items": [len(r["history"])] * r["k"], "topk_scores": [0.5] * r["k"]}
                for r in requests
            ],
        )

    fetch = functools.partial(
        fetch_soft_labels,
        "http://teacher.test",
        dm,
        keys,
        k=3,
        batch_size=4,
        shard_size=8,
        cache_dir=tmp_path,
        transport=httpx.MockTransport(handle),
    )
    labels = fetch()
    assert set(calls) == {"/topk"} and len(calls) == sum(
        -(-min(8, len(keys) - lo) // 4) for lo in range(0, len(keys), 8)
    )
    assert torch.equal(labels.user_ids, keys.user_ids) and torch.equal(
        labels.topk_items[:, 0], keys.positions
    )
    calls.clear()
    assert torch.equal(fetch().topk_items, labels.topk_items) and calls == []
