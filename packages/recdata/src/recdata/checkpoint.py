"""The checkpoint contract (DESIGN §3.2): a directory of *.safetensors plus card.json.

Loading validates kind, data fingerprint and item count before any tensor is used; nothing
is unpickled.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from recdata.atomic import atomic_directory, write_json
from recdata.errors import CheckpointError

CARD_FILE, WEIGHTS_FILE = "card.json", "model.safetensors"
SCHEMA_VERSION = 1
KINDS = ("sasrec", "sasrec-distilled", "ilora-teacher")


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    from recdata import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).parent, timeout=5,
        ).stdout.strip()  # fmt: skip
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
    directory: Path, *, kind: str, tensors: dict[str, torch.Tensor], hparams: dict,
    data: dict, metrics: dict | None = None, extra: dict | None = None,
    files: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:  # fmt: skip
    """Write the contract atomically. `data` holds dataset, fingerprint and num_items; `files`
    adds further named safetensors files (e.g. the teacher's item embeddings)."""
    if kind not in KINDS:
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
    with atomic_directory(Path(directory)) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / WEIGHTS_FILE
        )
        for name, extra_tensors in (files or {}).items():
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()}, tmp / name
            )
        write_json(tmp / CARD_FILE, card)
    return Path(directory)


def read_card(directory: Path) -> dict:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint directory (no {CARD_FILE})")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg})") from None
    if card.get("schema_version") != SCHEMA_VERSION or "kind" not in card:
        raise CheckpointError(
            f"{path}: unsupported checkpoint card (schema_version {card.get('schema_version')})"
        )
    return card


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
            f"{str(data.get('fingerprint'))[:12]}…) than the current dataset (fingerprint {fingerprint[:12]}…)"
        )
    if num_items is not None and data.get("num_items") != num_items:
        raise CheckpointError(
            f"{where} scores {data.get('num_items')} items; the dataset has {num_items}"
        )


def load_checkpoint(
    directory: Path, *, kinds: str | tuple[str, ...], fingerprint: str | None = None,
    num_items: int | None = None,
) -> Checkpoint:  # fmt: skip
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    card = read_card(directory)
    check_card(card, directory, kinds=kinds, fingerprint=fingerprint, num_items=num_items)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    return Checkpoint(directory, card, load_file(weights))


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
