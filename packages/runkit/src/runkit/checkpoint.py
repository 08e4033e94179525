"""The checkpoint contract: a directory of *.safetensors plus card.json.

The card records the sha256 of every weights file and what its kind requires (a distilled
student names the teacher labels it learned from, a teacher its base LLM and student). Loading
checks the card, its kind, data fingerprint, item count and the weights' digests before any
tensor is used; nothing is unpickled.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recdata.atomic import atomic_directory, atomic_file, sha256_file, write_json
from recdata.errors import UserError
from runkit.kinds import checkpoint_kind, kind_names

CARD_FILE, WEIGHTS_FILE = "card.json", "model.safetensors"
# 2: the card lists the sha256 of its weights files ("weights"). Cards of schema 1 (no digests)
# still load: their kind requirements are checked, their weights cannot be.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


class CheckpointError(UserError):
    """A checkpoint is missing, of the wrong kind, or built on other data."""


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    from runkit import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


@dataclass
class Checkpoint:
    path: Path
    card: dict
    tensors: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        return self.card["kind"]

    @property
    def hparams(self) -> dict:
        return self.card["hparams"]


def save_checkpoint(
    directory: Path,
    *,
    kind: str,
    tensors: dict[str, torch.Tensor],
    hparams: dict,
    data: dict,
    metrics: dict | None = None,
    extra: dict | None = None,
    files: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the contract atomically. `data` holds dataset, fingerprint and num_items; `files`
    adds further named safetensors files (e.g. the teacher's item embeddings)."""
    if checkpoint_kind(kind) is None:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    card = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "hparams": hparams,
        "data": data,
        "metrics": metrics or {},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        **(extra or {}),
    }
    if missing := missing_requirement(card):
        raise ValueError(f"a {kind} checkpoint must record {missing}")
    with atomic_directory(Path(directory)) as tmp:
        card["weights"] = {}
        for name, file_tensors in {WEIGHTS_FILE: tensors, **(files or {})}.items():
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in file_tensors.items()}, tmp / name
            )
            card["weights"][name] = sha256_file(tmp / name)
        write_json(tmp / CARD_FILE, card)
    return Path(directory)


def add_weights_file(directory: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Add a safetensors file to an exported checkpoint and record its digest in the card."""
    directory = Path(directory)
    card = read_card(directory)
    with atomic_file(directory / name) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        digest = sha256_file(tmp)
    card.setdefault("weights", {})[name] = digest
    write_json(directory / CARD_FILE, card)
    return directory / name


def read_card(directory: Path) -> dict:
    """The card, checked for what every reader relies on: a JSON object of a readable schema,
    a known kind and the entries that kind requires."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint directory (no {CARD_FILE})")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.reason})") from None
    if not isinstance(card, dict):
        raise CheckpointError(
            f"{path}: not a checkpoint card (a JSON {type(card).__name__}, expected an object)"
        )
    if card.get("schema_version") not in READABLE_SCHEMAS or "kind" not in card:
        raise CheckpointError(
            f"{path}: unsupported checkpoint card (schema_version {card.get('schema_version')})"
        )
    if checkpoint_kind(card["kind"]) is None:
        raise CheckpointError(
            f"{path}: unknown checkpoint kind {card['kind']!r} (known: {', '.join(kind_names())})"
        )
    if missing := missing_requirement(card):
        raise CheckpointError(
            f"{path}: a {card['kind']} card must record {missing}; this one does not "
            "(was its kind edited by hand?)"
        )
    if card["schema_version"] >= 2 and not isinstance(card.get("weights"), dict):
        raise CheckpointError(f"{path}: the card lists no weights digests")
    return card


def missing_requirement(card: dict) -> str | None:
    """The first `entry.field` the card's kind requires and the card lacks (a card whose kind was
    edited by hand lacks them), or None."""
    for entry, field in checkpoint_kind(card["kind"]).requires.items():
        value = card.get(entry)
        if not isinstance(value, dict) or not value.get(field):
            return f"{entry}.{field}"
    return None


def verify_weights(card: dict, directory: Path) -> None:
    """Every weights file the card lists is there with the digest it was exported with."""
    for name, expected in card.get("weights", {}).items():
        path = Path(directory) / name
        if not path.is_file():
            raise CheckpointError(f"{directory} has no {name}")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(
                f"{path}: sha256 {actual[:12]}… differs from its card's {expected[:12]}…; "
                "the weights were changed or replaced after export"
            )


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """load_file, with a truncated or corrupt file reported as one CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def check_card(
    card: dict,
    where: Path,
    *,
    kinds: tuple[str, ...],
    fingerprint: str | None,
    num_items: int | None,
) -> None:
    if card["kind"] not in kinds:
        raise CheckpointError(
            f"{where} is a {card['kind']!r} checkpoint; expected {' or '.join(kinds)}"
        )
    data = card.get("data", {})
    if fingerprint is not None and data.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{where} was built on other data (dataset {data.get('dataset')!r}, fingerprint "
            f"{str(data.get('fingerprint'))[:12]}…) than the current dataset "
            f"(fingerprint {fingerprint[:12]}…)"
        )
    if num_items is not None and data.get("num_items") != num_items:
        raise CheckpointError(
            f"{where} scores {data.get('num_items')} items; the dataset has {num_items}"
        )


def load_checkpoint(
    directory: Path,
    *,
    kinds: str | tuple[str, ...],
    fingerprint: str | None = None,
    num_items: int | None = None,
) -> Checkpoint:
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    card = read_card(directory)
    check_card(card, directory, kinds=kinds, fingerprint=fingerprint, num_items=num_items)
    if not (directory / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    tensors = read_tensors(directory / WEIGHTS_FILE)  # a truncated file is named as unreadable
    verify_weights(card, directory)
    return Checkpoint(directory, card, tensors)


def load_state_strict(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path
) -> None:
    """load_state_dict, with shape/key mismatches reported as one clear CheckpointError."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            detail.append(
                f"{k} has shape {tuple(tensors[k].shape)}, model expects {tuple(expected[k].shape)}"
            )
        raise CheckpointError(f"{where} does not match the model: {'; '.join(detail)}")
    module.load_state_dict(tensors, strict=True)
