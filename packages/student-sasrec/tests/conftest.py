from pathlib import Path

import pytest

from recdata.testing import cyclic_sequences, make_prepared


@pytest.fixture(scope="session")
def cyclic_data(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("cyclic"), cyclic_sequences())
