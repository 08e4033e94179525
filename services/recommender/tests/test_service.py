"""The recommender service over HTTP (a real `bentoml serve` subprocess): its top-K equals the
`recommend` command's and the student's evaluation ranking; the popularity fallback; similar
items; every bad request gets a 4xx naming what is wrong; probes, info and the digest header;
refusing to start on a checkpoint that is not a student."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from recommender.service import DIGEST_HEADER, MAX_BODY_BYTES, MAX_K, MAX_REQUESTS
from recommender.startup import check_settings
from sasrec.recommend import FALLBACK, Query, main
from serving.startup import ServiceStartupError
from serving.testing import REPO_ROOT, free_port


def post(url: str, path: str, body=None) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body if body is not None else {}, timeout=120)


def answers(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-5 for x, y in zip(a, b, strict=True))


def test_recommend_equals_the_evaluation_ranking(recommender_service, in_process, tiny_pipeline):
    """Every user's test history, sent as raw ids: the top-20 the student's run stored."""
    run_dir = Path(tiny_pipeline["student"]).parents[1]
    stored = pq.read_table(run_dir / "test_predictions.parquet").to_pylist()
    protocol = json.loads((run_dir / "test_metrics.json").read_text())["protocol"]
    c = in_process.catalogue
    requests = [
        {
            "history": c.raw(c.user_history(c.user_raw[r["user_id"] - 1])[:-1]),
            "k": 20,
            "exclude_history": protocol["full_ranking"]["mask_history"],
        }
        for r in stored
    ]
    got = answers(post(recommender_service.url, "/recommend", {"requests": requests}))
    assert [g["items"] for g in got] == [c.raw(r["topk_items"]) for r in stored]


def test_recommend_equals_the_command(recommender_service, in_process, tiny_pipeline, capsys):
    base = [str(tiny_pipeline["student"]), "--data", str(tiny_pipeline["data"]), "--json"]
    cases = [
        (["--user", "4"], {"user": "4"}),
        (
            ["--user", "9", "-k", "3", "--keep-history"],
            {"user": "9", "k": 3, "exclude_history": False},
        ),
        (
            ["--history", "7,8,9", "--candidates", "1,2,3,10,11", "--exclude", "10"],
            {
                "history": ["7", "8", "9"],
                "candidates": ["1", "2", "3", "10", "11"],
                "exclude": ["10"],
            },
        ),
        (["--history", "12,nope"], {"history": ["12", "nope"]}),
    ]
    served = answers(
        post(
            recommender_service.url,
            "/recommend",
            {"requests": [{**r, "titles": True} for _, r in cases]},
        )
    )
    for (argv, _), answer in zip(cases, served, strict=True):
        main([*base, *argv])
        expected = json.loads(capsys.readouterr().out)
        assert answer["items"] == expected["items"] and answer["titles"] == expected["titles"]
        assert close(answer["scores"], expected["scores"]) and answer["fallback"] is None
    assert served[-1]["ignored"] == ["nope"]


def test_concurrent_calls_are_answered_as_in_process(recommender_service, in_process):
    c = in_process.catalogue
    users = c.user_raw
    with ThreadPoolExecutor(len(users)) as pool:  # merged by the adaptive batcher
        responses = list(
            pool.map(
                lambda u: post(
                    recommender_service.url, "/recommend", {"requests": [{"user": u, "k": 5}]}
                ),
                users,
            )
        )
    expected = in_process.rank([Query(c.user_history(u), 5) for u in users])
    for response, ranked in zip(responses, expected, strict=True):
        (answer,) = answers(response)
        assert answer["items"] == c.raw(ranked.items) and close(answer["scores"], ranked.scores)


def test_new_users_get_the_popularity_fallback(recommender_service, in_process):
    requests = [{"history": [], "k": 5}, {"history": ["x1", "x2"], "k": 5, "titles": True}]
    empty, unknown = answers(post(recommender_service.url, "/recommend", {"requests": requests}))
    (ranked,) = in_process.rank([Query([], 5)])
    for answer in (empty, unknown):
        assert answer["fallback"] == FALLBACK and answer["items"] == in_process.catalogue.raw(
            ranked.items
        )
        assert answer["scores"] == ranked.scores  # the training-split counts
    assert (
        unknown["ignored"] == ["x1", "x2"]
        and empty["titles"] is None
        and len(unknown["titles"]) == 5
    )


def test_similar_items(recommender_service, in_process):
    body = {"items": ["5", "17"], "k": 4, "titles": True}
    got = answers(post(recommender_service.url, "/similar_items", body))
    for answer, raw, ranked in zip(got, body["items"], in_process.similar([5, 17], 4), strict=True):
        assert answer["item"] == raw and answer["items"] == in_process.catalogue.raw(ranked.items)
        assert close(answer["scores"], ranked.scores) and len(answer["titles"]) == 4


def bad_requests() -> list[tuple[str, str, object, int, str]]:
    ok = {"history": ["1", "2"]}
    r = "/recommend"
    return [
        ("malformed JSON", r, b'{"requests": [{"history": ["1"', 400, "Invalid JSON"),
        ("not an object", r, [ok], 400, "Input should be an object"),
        ("no requests field", r, {}, 400, "Field required"),
        ("no requests", r, {"requests": []}, 400, "at least 1 item"),
        (
            "too many requests",
            r,
            {"requests": [ok] * (MAX_REQUESTS + 1)},
            400,
            f"at most {MAX_REQUESTS}",
        ),
        ("unknown user", r, {"requests": [{"user": "u-404"}]}, 400, "unknown user id 'u-404'"),
        ("user and history", r, {"requests": [{**ok, "user": "1"}]}, 400, "either 'user'"),
        ("neither", r, {"requests": [{"k": 3}]}, 400, "either 'user'"),
        (
            "new-item slot never fitted",
            r,
            {"requests": [{**ok, "new_item_slot": True}]},
            400,
            "this student has no new-item slot: fit one",
        ),
        (
            "unknown candidate",
            r,
            {"requests": [{**ok, "candidates": ["3", "c-9"]}]},
            400,
            "unknown item ids in candidates: ['c-9']",
        ),
        (
            "unknown exclusion",
            r,
            {"requests": [{**ok, "exclude": ["e-1"]}]},
            400,
            "unknown item ids in exclude: ['e-1']",
        ),
        ("integer item id", r, {"requests": [{"history": [1, 2]}]}, 400, "valid string"),
        ("history not a list", r, {"requests": [{"history": "1,2"}]}, 400, "valid array"),
        ("empty item id", r, {"requests": [{"history": [""]}]}, 400, "at least 1 character"),
        ("k = 0", r, {"requests": [{**ok, "k": 0}]}, 400, "greater than or equal to 1"),
        (
            "k too large",
            r,
            {"requests": [{**ok, "k": MAX_K + 1}]},
            400,
            f"less than or equal to {MAX_K}",
        ),
        ("k a string", r, {"requests": [{**ok, "k": "5"}]}, 400, "valid integer"),
        ("flag a string", r, {"requests": [{**ok, "exclude_history": "no"}]}, 400, "valid boolean"),
        (
            "unknown field",
            r,
            {"requests": [{**ok, "checkpoint": "/etc/passwd"}]},
            400,
            "Extra inputs",
        ),
        (
            "unknown similar item",
            "/similar_items",
            {"items": ["5", "s-7"]},
            400,
            "unknown item ids in items: ['s-7']",
        ),
        ("similar without items", "/similar_items", {"k": 3}, 400, "Field required"),
        ("info with a field", "/info", {"debug": True}, 400, "Extra inputs"),
    ]


def test_bad_requests_get_a_4xx_naming_the_problem(recommender_service):
    for name, path, body, status, message in bad_requests():
        if isinstance(body, bytes):
            response = httpx.post(
                f"{recommender_service.url}{path}",
                content=body,
                headers={"content-type": "application/json"},
                timeout=60,
            )
        else:
            response = post(recommender_service.url, path, body)
        assert response.status_code == status, (name, response.status_code, response.text)
        assert message in response.text, (name, response.text)
    assert (
        post(recommender_service.url, "/recommend", {"requests": [{"user": "1"}]}).status_code
        == 200
    )


def test_request_limits_are_the_shared_ones(recommender_service):
    url = f"{recommender_service.url}/recommend"
    ok = json.dumps({"requests": [{"user": "1"}]}).encode()
    for content_type in ("text/plain", None):
        headers = {"content-type": content_type} if content_type else {}
        response = httpx.post(url, content=ok, headers=headers, timeout=60)
        assert response.status_code == 415 and "Content-Type: application/json" in response.text
    huge = b'{"requests": [' + b" " * MAX_BODY_BYTES + b"]}"
    response = httpx.post(
        url, content=huge, headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 413 and f"limit of {MAX_BODY_BYTES} bytes" in response.text


def test_info_probes_and_digest(recommender_service, in_process):
    info = answers(post(recommender_service.url, "/info"))
    assert info["digest"] == in_process.info["digest"] and info["kind"] == "sasrec"
    assert info["data_fingerprint"] == in_process.info["data_fingerprint"]
    assert (info["num_items"], info["k_max"], info["max_requests"]) == (
        in_process.catalogue.num_items,
        MAX_K,
        MAX_REQUESTS,
    )
    for probe in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{recommender_service.url}{probe}", timeout=10).status_code == 200
    response = post(recommender_service.url, "/recommend", {"requests": [{"history": []}]})
    assert response.headers[DIGEST_HEADER] == info["digest"]


def test_startup_checks(tiny_pipeline, tmp_path, monkeypatch):
    """In-process (what `bentoml serve` runs before any worker): no checkpoint, a teacher, other
    data, no data where the card says."""
    from recdata.testing import cyclic_sequences, make_prepared

    student, data = str(tiny_pipeline["student"]), str(tiny_pipeline["data"])
    other = make_prepared(tmp_path / "other", cyclic_sequences(num_users=6))
    cases = [
        ((None, data), "STUDENT_CHECKPOINT is not set"),
        ((str(tiny_pipeline["teacher"]), data), "recommendations come from a SASRec student"),
        ((student, str(other)), "was trained on other data"),
        ((student, None), "pass the directory it was prepared to"),
    ]
    monkeypatch.chdir(tmp_path)  # no data/processed/<dataset> here
    for arguments, message in cases:
        with pytest.raises(ServiceStartupError, match=message):
            check_settings(*arguments)


def test_refuses_to_start_on_a_teacher(tiny_pipeline):
    """One `Error:` line and exit 1 from `bentoml serve`, no traceback, no worker started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDENT_")}
    env.update(
        BENTOML_DO_NOT_TRACK="True",
        STUDENT_CHECKPOINT=str(tiny_pipeline["teacher"]),
        STUDENT_DATA=str(tiny_pipeline["data"]),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "recommender.service:RecommenderService",
            "--port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "is a 'ilora-teacher' checkpoint" in output, output
    assert "Traceback" not in output
