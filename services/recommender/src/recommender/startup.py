"""Settings of the recommender service and the checks that stop a misconfigured `bentoml serve`
once, before any worker starts (the mechanics are `serving.startup`'s)."""

from __future__ import annotations

import os
from pathlib import Path

from serving.startup import ServiceStartupError, check_weights, checkpoint_dir

EXAMPLE = (
    "STUDENT_CHECKPOINT=result/<run>/checkpoints/best bentoml serve "
    "recommender.service:RecommenderService"
)


def settings() -> dict[str, str | None]:
    return {
        "checkpoint": os.environ.get("STUDENT_CHECKPOINT") or None,
        "data": os.environ.get("STUDENT_DATA") or None,  # None: data/processed/<card's dataset>
        "device": os.environ.get("STUDENT_DEVICE") or "cpu",
    }


def check_settings(checkpoint: str | None, data: str | None) -> tuple[Path, Path]:
    """Cheap checks (no model load): the checkpoint is an intact SASRec student built on this
    dataset. -> (checkpoint dir, data dir)."""
    from recdata.errors import UserError
    from sasrec.recommend import dataset_as_trained, default_data, student_checkpoint

    path = checkpoint_dir(checkpoint, "STUDENT_CHECKPOINT", EXAMPLE)
    try:
        path, card = student_checkpoint(path)
        data_dir = Path(data).expanduser() if data else default_data(card)
        dataset = dataset_as_trained(data_dir, card.get("data"))
    except UserError as error:
        raise ServiceStartupError(
            f"cannot serve student {checkpoint!r} (STUDENT_DATA={data!r}): {error}"
        ) from error
    fingerprint = card.get("data", {}).get("fingerprint")
    if fingerprint != dataset.fingerprint:
        raise ServiceStartupError(
            f"student {checkpoint!r} was trained on other data (fingerprint "
            f"{str(fingerprint)[:12]}…) than {data_dir} ({dataset.fingerprint[:12]}…); "
            "set STUDENT_DATA to the dataset it was trained on"
        )
    check_weights(path, card)
    return path, data_dir


def load_recommender(checkpoint: str | None, data: str | None, device: str):
    """The Recommender the service serves; raises ServiceStartupError."""
    from recdata.errors import UserError
    from sasrec.recommend import Recommender

    path, data_dir = check_settings(checkpoint, data)
    try:
        return Recommender.load(path, data_dir, device=device)
    except (UserError, OSError, KeyError, ValueError) as error:
        raise ServiceStartupError(f"cannot serve student {checkpoint!r}: {error}") from error
