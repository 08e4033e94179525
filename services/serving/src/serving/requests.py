"""The base of every request model: a call's top-level JSON object, strictly parsed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictBody(BaseModel):
    """A call's top-level JSON object: unknown fields are refused (400), not ignored."""

    model_config = ConfigDict(extra="forbid")


def shorten(values: list, limit: int = 5) -> str:
    """`[a, b, c, d, e] ...`: the first few of a list for an error message."""
    return f"{values[:limit]}{' ...' if len(values) > limit else ''}"
