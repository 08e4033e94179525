"""recdata: datasets, the parquet data contract, splits, DataModule, metrics, run artefacts."""

__version__ = "0.1.0"
