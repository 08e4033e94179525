"""recdata: datasets, the parquet data contract, leave-one-out splits, windows and the
DataModule."""

__version__ = "0.1.0"
