"""The tiny student of the session's `tiny_pipeline` served by a real `bentoml serve` once for
the whole session, and the same student loaded in-process for reference."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def recommender_service(tiny_pipeline, tmp_path_factory):
    from serving.testing import ServerProcess

    log = tmp_path_factory.mktemp("recommender-service") / "serve.log"
    env = {
        "STUDENT_CHECKPOINT": str(tiny_pipeline["student"]),
        "STUDENT_DATA": str(tiny_pipeline["data"]),
    }
    with ServerProcess("recommender.service:RecommenderService", env, log_file=log) as service:
        yield service


@pytest.fixture(scope="session")
def in_process(tiny_pipeline):
    from sasrec.recommend import Recommender

    return Recommender.load(tiny_pipeline["student"], tiny_pipeline["data"])
