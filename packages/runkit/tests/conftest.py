"""Fixtures for the runkit tests."""

from __future__ import annotations

import numpy as np
import pytest

from recdata.contract import load_prepared
from recdata.testing import make_prepared


@pytest.fixture
def random_prepared(tmp_path):
    """A prepared random dataset: 40 users with 3..30 distinct items among 60."""
    rng = np.random.default_rng(123)
    lengths = rng.integers(3, 31, size=40).tolist()
    lengths[0] = 30
    items = np.random.default_rng(7)
    sequences = [items.choice(np.arange(1, 61), size=n, replace=False).tolist() for n in lengths]
    return load_prepared(make_prepared(tmp_path / "rand", sequences))
