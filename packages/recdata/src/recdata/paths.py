"""Default locations, shared by the recdata CLI and the Hydra configs (conf/config.yaml)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where fetched wheels, downloads and converted models live (reused across runs)."""
    return Path(os.environ.get("ILORA_CACHE", Path.home() / ".cache" / "ilora-dllm2rec"))


def raw_dir(data_root: Path, dataset: str) -> Path:
    return Path(data_root) / dataset


def processed_dir(data_root: Path, dataset: str) -> Path:
    return Path(data_root) / "processed" / dataset
