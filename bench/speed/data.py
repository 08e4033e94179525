"""Prepare time and peak RSS of `recdata` on (a) the real ML-100K and (b) a synthetic
MovieLens-1M-sized dataset written in the ML-1M layout (6040 users, 3706 items, 1,000,209
ratings, every user >= 20 ratings, latin-1 movies.dat).

Each prepare runs in its own child process; its wall time is measured inside the child
(parse + write, no interpreter start-up) and its peak RSS is read from the child's own rusage
(`os.wait4`), so one measurement never leaks into the next.

    uv run python -m bench.speed.data [--keep DIR] [--only ml-100k|ml-1m]

Targets for (b): under 30 s and under 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recdata.parse import ML100K_GENRES

ML1M_USERS, ML1M_ITEMS, ML1M_RATINGS = 6040, 3706, 1_000_209
MIN_PER_USER = 20
TARGET_SECONDS, TARGET_BYTES = 30.0, 2 * 1024**3
GENRES = ML100K_GENRES[1:]  # without "unknown"
WORDS = (
    "Cité",
    "Perdus",
    "Amélie",
    "Noël",
    "Über",
    "Señor",
    "Crème",
    "Night",
    "River",
    "Dream",
    "Story",
    "Return",
    "Lost",
    "City",
    "Garçon",
    "Kingdom",
    "Île",
    "Année",
)
ARTICLES = ("The", "A", "An", "La", "Le", "Les", "L'")


def per_user_counts(rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed counts (like ML-1M: min 20, median ~96, max ~2300) summing exactly."""
    raw = MIN_PER_USER + rng.lognormal(mean=4.2, sigma=1.1, size=ML1M_USERS)
    raw = np.minimum(raw, ML1M_ITEMS)
    extra = raw - MIN_PER_USER
    target_extra = ML1M_RATINGS - MIN_PER_USER * ML1M_USERS
    counts = MIN_PER_USER + np.floor(extra * target_extra / extra.sum()).astype(np.int64)
    counts = np.minimum(counts, ML1M_ITEMS)
    short = ML1M_RATINGS - counts.sum()
    while short > 0:  # hand the rounding remainder to users with room left
        room = np.flatnonzero(counts < ML1M_ITEMS)[:short]
        counts[room] += 1
        short -= len(room)
    assert counts.sum() == ML1M_RATINGS and counts.min() >= MIN_PER_USER
    return counts


def write_synthetic_ml1m(raw_dir: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    raw_dir.mkdir(parents=True, exist_ok=True)
    # Movie ids with gaps, as in ML-1M (ids 1..3952, 3706 of them rated).
    movie_ids = np.sort(rng.choice(np.arange(1, 3953), size=ML1M_ITEMS, replace=False))
    user_ids = np.arange(1, ML1M_USERS + 1)
    counts = per_user_counts(rng)
    log_pop = -0.9 * np.log(np.arange(1, ML1M_ITEMS + 1))  # Zipf-like popularity
    rng.shuffle(log_pop)

    users, items, stamps = [], [], []
    for user, count in zip(user_ids, counts, strict=True):
        # Gumbel top-k: `count` distinct items drawn by popularity, without replacement.
        keys = log_pop + rng.gumbel(size=ML1M_ITEMS)
        chosen = np.argpartition(-keys, count - 1)[:count]
        start = rng.integers(956_703_932, 1_040_000_000)
        gaps = rng.choice([0, 1, 5, 60, 3600], size=count, p=[0.15, 0.25, 0.3, 0.2, 0.1])
        times = start + np.cumsum(gaps)  # some equal timestamps: ties broken by file order
        order = rng.permutation(count)  # file order is not chronological within a user
        users.append(np.full(count, user))
        items.append(chosen[order])
        stamps.append(times[order])
    users, items, stamps = np.concatenate(users), np.concatenate(items), np.concatenate(stamps)
    missing = np.setdiff1d(np.arange(ML1M_ITEMS), items)
    # Make every movie rated at least once: overwrite ratings of users who lack that movie.
    for item in missing:
        row = int(rng.integers(len(items)))
        while item in items[users == users[row]]:
            row = int(rng.integers(len(items)))
        items[row] = item
    ratings = rng.integers(1, 6, size=len(items))
    lines = "\n".join(
        f"{u}::{m}::{r}::{t}"
        for u, m, r, t in zip(
            users.tolist(),
            movie_ids[items].tolist(),
            ratings.tolist(),
            stamps.tolist(),
            strict=True,
        )
    )
    (raw_dir / "ratings.dat").write_text(lines + "\n", encoding="latin-1")

    movies = []
    for movie_id in movie_ids.tolist():
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        title = f"{words} {movie_id}"
        if rng.random() < 0.1:
            title = f"{title}, {rng.choice(ARTICLES)}"
        if rng.random() < 0.05:
            title = f"{title} (Le {rng.choice(WORDS)})"
        year = int(rng.integers(1919, 2001))
        genres = "|".join(rng.choice(GENRES, size=int(rng.integers(1, 4)), replace=False))
        movies.append(f"{movie_id}::{title} ({year})::{genres}")
    (raw_dir / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    (raw_dir / "users.dat").write_text(
        "\n".join(f"{u}::M::25::4::12345" for u in user_ids.tolist()) + "\n", encoding="latin-1"
    )
    (raw_dir / "README").write_text("synthetic MovieLens-1M-sized data for bench/speed/data.py\n")


def child(dataset: str, raw_dir: str, out_dir: str) -> None:
    """Runs in the measured subprocess: import, then time build_contract alone."""
    t0 = time.perf_counter()
    from recdata.prepare import build_contract
    from recdata.sources import dataset_spec

    t1 = time.perf_counter()
    meta = build_contract(dataset_spec(dataset), Path(raw_dir), Path(out_dir))
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": t1 - t0,
                "prepare_s": t2 - t1,
                "counts": meta["counts"],
                "samples": meta["split"]["samples"],
            }
        )
    )


def measure(dataset: str, raw_dir: Path, out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "bench.speed.data", "--child", dataset, str(raw_dir), str(out_dir)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"prepare {dataset} failed with exit code {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return result


def report(label: str, result: dict, targets: bool = False) -> None:
    rss_mib = result["peak_rss_bytes"] / 1024**2
    c = result["counts"]
    print(f"{label}")
    print(
        f"  users {c['users']}  items {c['items']}  interactions {c['interactions']}  "
        f"samples {result['samples']}"
    )
    print(
        f"  prepare {result['prepare_s']:.2f} s  (process total {result['wall_s']:.2f} s, "
        f"imports {result['import_s']:.2f} s)  peak RSS {rss_mib:.0f} MiB"
    )
    if targets:
        ok_t = result["wall_s"] < TARGET_SECONDS
        ok_m = result["peak_rss_bytes"] < TARGET_BYTES
        print(
            f"  targets: time < {TARGET_SECONDS:.0f} s {'OK' if ok_t else 'MISSED'}, "
            f"RSS < 2 GiB {'OK' if ok_m else 'MISSED'}"
        )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench.speed.data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--only", choices=("ml-100k", "ml-1m"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recdata-bench-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "ml-100k"):
            from recdata import paths
            from recdata.fetch import fetch
            from recdata.sources import dataset_spec

            raw = fetch(dataset_spec("ml-100k"), work / "ml-100k", paths.cache_dir())
            report(
                "(a) ML-100K (recbole wheel)",
                measure("ml-100k", raw, work / "processed" / "ml-100k"),
            )
        if args.only in (None, "ml-1m"):
            raw = work / "ml-1m"
            t0 = time.perf_counter()
            if not (raw / "ratings.dat").is_file():
                write_synthetic_ml1m(raw)
            print(f"(synthetic ML-1M files ready in {time.perf_counter() - t0:.1f} s)")
            report(
                "(b) synthetic ML-1M size (ml-1m layout)",
                measure("ml-1m", raw, work / "processed" / "ml-1m"),
                targets=True,
            )


if __name__ == "__main__":
    main()
