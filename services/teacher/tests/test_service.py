"""The teacher service over HTTP (a real `bentoml serve` subprocess): top-K equal to the teacher
computed in-process, request validation (4xx with a message, nothing reaches the model), info,
item embeddings, health probes, and refusing to start on a missing or wrong checkpoint."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from ilora.checkpoint import load_item_embeddings
from ilora.inference import DIGEST_HEADER, teacher_digest, topk_with_history_masked
from recdata.atomic import sha256_file
from recdata.batching import SequenceStore
from recdata.datamodule import SplitDataset
from recdata.splits import split_keys
from teacher.service import MAX_BODY_BYTES, MAX_HISTORY, MAX_K, MAX_REQUESTS, TeacherService
from teacher.startup import ServiceStartupError, check_settings
from teacher.testing import REPO_ROOT, SERVICE_TARGET, free_port


def post(url: str, path: str, body=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body if body is not None else {}, timeout=120, **kwargs)


def parse(response: httpx.Response) -> tuple[list[list[int]], list[torch.Tensor]]:
    assert response.status_code == 200, response.text
    body = response.json()
    return [r["topk_items"] for r in body], [
        torch.tensor(r["topk_scores"], dtype=torch.float64).float() for r in body
    ]


def window(history: list[int], width: int) -> torch.Tensor:
    row = torch.zeros(width, dtype=torch.long)
    tail = history[-width:]
    row[width - len(tail) :] = torch.tensor(tail)
    return row


def training_histories(dataset, count: int) -> list[list[int]]:
    """Full prefixes of `count` training samples spread over the split (what precompute scores)."""
    keys = split_keys(dataset.lengths, "train")
    index = torch.linspace(0, len(keys) - 1, count).long().tolist()
    full = SplitDataset(SequenceStore(dataset), keys, 1, with_full_history=True).__getitems__(
        index
    )["full_history"]
    return [row[row > 0].tolist() for row in full]


def test_topk_equals_the_teacher_in_process(served, in_process):
    teacher, _, dataset = in_process
    width, n = teacher.student.config.max_seq_len, dataset.num_items
    histories = training_histories(dataset, 9)
    # longer than the window
    histories += [[(start + t) % n + 1 for t in range(30)] for start in (0, 17, 33)]
    requests = [
        {"history": h, "k": 7 if i % 3 else 3, "exclude_history": i % 2 == 0}
        for i, h in enumerate(histories)
    ]
    items, scores = parse(post(served.url, "/topk", {"requests": requests}))
    # one call, one model batch: the same rows in the same order as this in-process batch
    with torch.no_grad():
        expected_scores = teacher(torch.stack([window(h, width) for h in histories]))
    for i, r in enumerate(requests):
        full = torch.tensor([r["history"]]) if r["exclude_history"] else None
        top_items, top_scores = topk_with_history_masked(expected_scores[i : i + 1], full, r["k"])
        assert items[i] == top_items[0].tolist()
        # bitwise: float32 survives the JSON round trip
        assert torch.equal(scores[i], top_scores[0])
        if r["exclude_history"]:
            assert not set(items[i]) & set(r["history"])  # the whole history, not just the window
    assert all(torch.all(s[:-1] >= s[1:]) for s in scores)  # descending


def test_defaults_and_concurrent_calls(served, in_process):
    teacher, _, dataset = in_process
    histories = training_histories(dataset, 6)
    with torch.no_grad():
        rows = [teacher(window(h, teacher.student.config.max_seq_len)[None]) for h in histories]
    with ThreadPoolExecutor(len(histories)) as pool:  # merged by the adaptive batcher
        answers = list(
            pool.map(lambda h: post(served.url, "/topk", {"requests": [{"history": h}]}), histories)
        )
    for h, s, response in zip(histories, rows, answers, strict=True):
        items, scores = parse(response)
        # k=10, excluded
        expected_items, expected_scores = topk_with_history_masked(s, torch.tensor([h]), 10)
        assert items[0] == expected_items[0].tolist()
        # batch-dependent rounding only
        torch.testing.assert_close(scores[0], expected_scores[0], rtol=0, atol=1e-5)


def bad_requests(num_items: int) -> list[tuple[str, object, str]]:
    ok = {"history": [1, 2, 3]}
    return [
        ("malformed JSON", b'{"requests": [{"history": [1, 2', "Invalid JSON"),
        ("not an object", [ok], "Input should be an object"),
        ("no requests field", {}, "Field required"),
        ("no requests", {"requests": []}, "at least 1 item"),
        ("too many requests", {"requests": [ok] * (MAX_REQUESTS + 1)}, f"at most {MAX_REQUESTS}"),
        ("empty history", {"requests": [{"history": []}]}, "at least 1 item"),
        (
            "history too long",
            {"requests": [{"history": [1] * (MAX_HISTORY + 1)}]},
            f"at most {MAX_HISTORY}",
        ),
        (
            "item id 0",
            {"requests": [{"history": [1, 0]}]},
            f"unknown item ids [0]: item ids are 1..{num_items}",
        ),
        ("item id > N", {"requests": [{"history": [num_items + 1]}]}, "unknown item ids"),
        ("negative item id", {"requests": [{"history": [-3]}]}, "unknown item ids"),
        ("string item id", {"requests": [{"history": [1, "2"]}]}, "valid integer"),
        ("float item id", {"requests": [{"history": [1, 2.5]}]}, "valid integer"),
        ("bool item id", {"requests": [{"history": [1, True]}]}, "valid integer"),
        ("history not a list", {"requests": [{"history": "1 2 3"}]}, "valid array"),
        ("k = 0", {"requests": [{**ok, "k": 0}]}, "greater than or equal to 1"),
        ("k too large", {"requests": [{**ok, "k": MAX_K + 1}]}, f"less than or equal to {MAX_K}"),
        ("k not an int", {"requests": [{**ok, "k": "5"}]}, "valid integer"),
        (
            "k above the rankable items",
            {"requests": [{"history": [1, 2], "k": num_items - 1}]},
            "rankable items",
        ),
        (
            "exclude_history not a bool",
            {"requests": [{**ok, "exclude_history": "yes"}]},
            "valid boolean",
        ),
        (
            "a path",
            {"requests": [{**ok, "checkpoint": "/etc/passwd"}]},
            "Extra inputs are not permitted",
        ),
    ]


def test_bad_requests_get_a_4xx_with_a_message(served, in_process):
    num_items = in_process[2].num_items
    for name, body, message in bad_requests(num_items):
        if isinstance(body, bytes):
            response = httpx.post(
                f"{served.url}/topk",
                content=body,
                headers={"content-type": "application/json"},
                timeout=60,
            )
        else:
            response = post(served.url, "/topk", body)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert message in response.text, (name, response.text)
    # a bad request batched with good ones never fails them: validation happens per call
    assert (
        post(served.url, "/topk", {"requests": [{"history": [1, 2, 3], "k": 2}]}).status_code == 200
    )


def json_post(
    url: str, path: str, content, content_type: str | None = "application/json", **headers
):
    if content_type is not None:
        headers["content-type"] = content_type
    return httpx.post(f"{url}{path}", content=content, headers=headers, timeout=120)


def test_request_limits(served, in_process):
    """Refused before the body is parsed: not JSON (415), over the cap (413, whether it declares
    its length or is chunked), unknown top-level fields (400) on every endpoint."""
    ok = json.dumps({"requests": [{"history": [1, 2, 3]}]}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        response = json_post(served.url, "/topk", ok, content_type)
        assert response.status_code == 415 and "Content-Type: application/json" in response.text, (
            response.text
        )
    assert json_post(served.url, "/topk", ok, "application/json; charset=utf-8").status_code == 200

    oversized = b'{"requests": [' + b" " * MAX_BODY_BYTES + b"]}"
    too_large = f"exceeds the service's limit of {MAX_BODY_BYTES} bytes"
    declared = json_post(served.url, "/topk", oversized)
    chunked = json_post(
        served.url,
        "/topk",
        iter([oversized[: len(oversized) // 2], oversized[len(oversized) // 2 :]]),
    )
    for response in (declared, chunked):
        assert response.status_code == 413 and too_large in response.text, response.text

    for path, body in (
        ("/topk", {"requests": [{"history": [1, 2]}], "model": "x"}),
        ("/info", {"debug": True}),
    ):
        response = post(served.url, path, body)
        assert response.status_code == 400 and "Extra inputs are not permitted" in response.text, (
            response.text
        )


def test_the_cap_fits_the_largest_legitimate_call(served, in_process):
    """MAX_REQUESTS histories of MAX_HISTORY ids: served here (this dataset's ids are short), and
    under the cap even with 7-digit ids."""
    num_items = in_process[2].num_items
    history = [(t % num_items) + 1 for t in range(MAX_HISTORY)]
    largest = {"requests": [{"history": history, "k": 1, "exclude_history": False}] * MAX_REQUESTS}
    response = post(served.url, "/topk", largest)
    assert response.status_code == 200 and len(response.json()) == MAX_REQUESTS
    wide = {
        "requests": [{"history": [9_999_999] * MAX_HISTORY, "k": MAX_K, "exclude_history": True}]
        * MAX_REQUESTS
    }
    assert len(json.dumps(wide).encode()) < MAX_BODY_BYTES


def test_info_item_embeddings_and_probes(served, in_process, tiny_pipeline):
    teacher, ckpt, dataset = in_process
    info = post(served.url, "/info").json()
    assert info["teacher_digest"] == teacher_digest(tiny_pipeline["teacher"])
    assert info["data_fingerprint"] == dataset.fingerprint and info["dataset"] == dataset.name
    assert (
        info["num_items"] == dataset.num_items
        and info["max_seq_len"] == teacher.student.config.max_seq_len
    )
    assert (info["k_min"], info["k_max"], info["max_history"], info["max_requests"]) == (
        1,
        MAX_K,
        MAX_HISTORY,
        MAX_REQUESTS,
    )
    assert (
        info["llm_model_name"] == ckpt.hparams["teacher"]["llm_model_name"]
        and info["kind"] == "ilora-teacher"
    )
    body = post(served.url, "/item_embeddings").json()
    array = np.frombuffer(base64.b64decode(body["data"]), dtype="<f4").reshape(body["shape"])
    expected = load_item_embeddings(tiny_pipeline["teacher"])
    assert body["dtype"] == "float32" and list(array.shape) == [
        dataset.num_items + 1,
        info["embedding_dim"],
    ]
    assert torch.equal(torch.from_numpy(array.copy()), expected)
    for probe in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{served.url}{probe}", timeout=10).status_code == 200
    assert (
        post(served.url, "/topk", {"requests": [{"history": [1]}]}).headers[DIGEST_HEADER]
        == info["teacher_digest"]
    )
    # loopback unless --host says otherwise
    assert str(TeacherService.config["http"]["host"]) == "127.0.0.1"


def serve_until_exit(env_update: dict, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(BENTOML_DO_NOT_TRACK="True", **env_update)
    return subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET, "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def copy_teacher(tiny_pipeline, tmp_path, name: str = "teacher") -> Path:
    return Path(shutil.copytree(tiny_pipeline["teacher"], tmp_path / name))


@pytest.mark.parametrize("case", ["no checkpoint", "student checkpoint", "truncated weights"])
def test_refuses_to_start_without_a_teacher(case, tiny_pipeline, tmp_path):
    """Refused in the server process before any worker starts: one line, exit 1, no traceback
    (a truncated weights file used to crash-loop the worker, a traceback per respawn)."""
    env = {"TEACHER_DATA": str(tiny_pipeline["data"])}
    expected = {
        "no checkpoint": "'TEACHER_CHECKPOINT' is required",
        "student checkpoint": "not an ilora-teacher",
    }
    if case == "student checkpoint":
        env["TEACHER_CHECKPOINT"] = str(tiny_pipeline["student"])
    if case == "truncated weights":
        teacher = copy_teacher(tiny_pipeline, tmp_path)
        weights = teacher / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        env["TEACHER_CHECKPOINT"] = str(teacher)
        expected[case] = f"{weights} is not a readable safetensors file"
    result = serve_until_exit(env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert expected[case] in output and "Traceback" not in output


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:-7])
    elif how == "garbled header":
        path.write_bytes(b"\xff" * 8 + data[8:])
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize(
    ("file", "how"),
    [
        (file, how)
        for file in ("model.safetensors", "item_embeddings.safetensors")
        for how in ("truncated", "garbled header", "empty")
    ]
    + [("model.safetensors", "missing")],
)
def test_startup_check_refuses_unreadable_weights(file, how, tiny_pipeline, tmp_path):
    teacher = copy_teacher(tiny_pipeline, tmp_path)
    if how == "missing":
        (teacher / file).unlink()
    else:
        corrupt(teacher / file, how)
    with pytest.raises(
        ServiceStartupError, match=f"{teacher / file} is not a readable safetensors file"
    ):
        check_settings(str(teacher), str(tiny_pipeline["data"]))


def test_startup_check_refuses_weights_that_differ_from_their_card(tiny_pipeline, tmp_path):
    """Bytes flipped inside a tensor keep the header valid; the card's digest catches them."""
    teacher = copy_teacher(tiny_pipeline, tmp_path)
    card = json.loads((teacher / "card.json").read_text())
    listed = {
        name: sha256_file(teacher / name)
        for name in ("model.safetensors", "item_embeddings.safetensors")
    }
    # as cards of schema 2 list them
    (teacher / "card.json").write_text(json.dumps({**card, "weights": listed}))
    check_settings(str(teacher), str(tiny_pipeline["data"]))  # intact: accepted
    weights = teacher / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ServiceStartupError, match="does not match its card"):
        check_settings(str(teacher), str(tiny_pipeline["data"]))


def test_a_worker_that_cannot_load_the_teacher_stops_the_server_once(tiny_pipeline, tmp_path):
    """What only loading reveals (here: the student changed since the teacher was trained) fails
    in the worker; it stops the server instead of being respawned into the same failure."""
    teacher = copy_teacher(tiny_pipeline, tmp_path)
    card = json.loads((teacher / "card.json").read_text())
    card["student_checkpoint"]["weights_sha256"] = "0" * 64
    (teacher / "card.json").write_text(json.dumps(card))
    result = serve_until_exit(
        {"TEACHER_CHECKPOINT": str(teacher), "TEACHER_DATA": str(tiny_pipeline["data"])}
    )
    output = result.stdout + result.stderr
    assert output.count("cannot start the teacher service") == 1, output
    assert "changed since the teacher was trained" in output and "Traceback" not in output


def test_topk_of_one_history_is_the_batched_pass_at_its_last_position(served, in_process):
    """Sequence mode: /topk for a history == the one-pass window readout at its newest item."""
    teacher, _, dataset = in_process
    assert teacher.config.prompt_mode == "sequence"
    history = training_histories(dataset, 3)[-1]
    items, scores = parse(
        post(served.url, "/topk", {"requests": [{"history": history, "exclude_history": False}]})
    )
    tail = history[-teacher.window :]
    with torch.no_grad():
        last = teacher.score_all_positions(torch.tensor([tail]))[:, -1]
    expected_items, expected_scores = topk_with_history_masked(last, None, 10)
    assert items[0] == expected_items[0].tolist()
    torch.testing.assert_close(scores[0], expected_scores[0], rtol=0, atol=1e-5)


def test_topk_windows_reads_out_every_key_of_a_window(served, in_process):
    teacher, _, dataset = in_process
    history = training_histories(dataset, 3)[-1]
    body = post(
        served.url,
        "/topk_windows",
        {"requests": [{"history": history, "first_position": 2, "k": 4}]},
    )
    assert body.status_code == 200, body.text
    (answer,) = body.json()
    assert answer["positions"] == list(range(2, len(history) + 1))
    with torch.no_grad():
        scores = teacher.score_all_positions(torch.tensor([history[-teacher.window :]]))[0]
    for p, got in zip(answer["positions"], answer["topk_items"], strict=True):
        expected, _ = topk_with_history_masked(scores[p - 1 : p], torch.tensor([history[:p]]), 4)
        assert got == expected[0].tolist() and not set(got) & set(history[:p])
    refused = post(
        served.url, "/topk_windows", {"requests": [{"history": [1, 2], "first_position": 3}]}
    )
    assert refused.status_code == 400 and "first_position=3 must be in 1..2" in refused.text
