"""Nested dicts (configs, protocols) as flat dotted keys."""

from __future__ import annotations


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted keys -> leaf values; an empty dict is a leaf of its own."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
