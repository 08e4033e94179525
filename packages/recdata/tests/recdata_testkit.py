"""Test data for the recdata tests: one small hand-made dataset written in each of the three
raw layouts, and random prepared datasets (imported by the tests; fixtures are in conftest.py).

The small dataset (file order matters: it breaks timestamp ties):

    raw user 2: items 7(t50) 3(t60) 30(t70) 42(t70)               -> dense user 1
    raw user 5: items 3(t90) 12(t100) 7(t100) 30(t150) 21(t200)   -> dense user 2
    raw user 9: items 15(t400) 7(t400) 42(t450) 3(t500) 12(t600)  -> dense user 3
    raw user 14: 2 ratings -> dropped (< 3 interactions)
    raw items 3 7 12 15 21 30 42 -> dense 1..7 (ascending raw id); item 50 is never rated.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from recdata.parse import ML100K_GENRES
from recdata.prepare import build_contract
from recdata.sources import dataset_spec

# Timestamps below are seconds after T0, written as T0 + t: prepare refuses Unix times before
# MovieLens existed (a cut-short timestamp looks like one).
T0 = 883_612_800  # 1998-01-01

# (raw user, raw item, rating, timestamp - T0) in file order.
RATINGS = [
    (9, 3, 4, 500),
    (5, 12, 4, 100),
    (2, 7, 5, 50),
    (5, 3, 5, 90),
    (14, 3, 1, 10),
    (9, 15, 3, 400),
    (5, 7, 3, 100),
    (2, 3, 4, 60),
    (9, 42, 2, 450),
    (14, 7, 2, 20),
    (5, 21, 2, 200),
    (2, 30, 3, 70),
    (9, 12, 5, 600),
    (5, 30, 1, 150),
    (2, 42, 5, 70),
    (9, 7, 4, 400),
]

# raw id -> (title as the files spell it, year, genres in u.genre order)
MOVIES = {
    3: ("Toy Story", 1995, ["Animation", "Children's", "Comedy"]),
    7: ("Usual Suspects, The", 1995, ["Crime", "Thriller"]),
    12: ("City of Lost Children, The (Cité des enfants perdus, La)", 1995, ["Adventure", "Sci-Fi"]),
    15: ("Shawshank Redemption, The", 1994, ["Drama"]),
    21: ("Appartement, L'", 1996, ["Drama", "Mystery"]),
    30: ("Big Blue, The (Grand bleu, Le)", 1988, ["Adventure", "Romance"]),
    42: ("Heat", 1995, ["Action", "Crime", "Thriller"]),
    50: ("American in Paris, An", 1951, ["Musical", "Romance"]),
}

CLEAN_TITLES = {
    3: "Toy Story",
    7: "The Usual Suspects",
    12: "The City of Lost Children (Cité des enfants perdus, La)",
    15: "The Shawshank Redemption",
    21: "L'Appartement",
    30: "The Big Blue (Grand bleu, Le)",
    42: "Heat",
    50: "An American in Paris",
}

# Expected prepared form.
ITEM_RAW = [3, 7, 12, 15, 21, 30, 42]  # dense id = index + 1
USER_RAW = [2, 5, 9]
SEQUENCES = {1: [2, 1, 6, 7], 2: [1, 3, 2, 6, 5], 3: [4, 2, 7, 1, 3]}
TIMESTAMPS = {1: [50, 60, 70, 70], 2: [90, 100, 100, 150, 200], 3: [400, 400, 450, 500, 600]}
TIMESTAMPS = {u: [T0 + t for t in ts] for u, ts in TIMESTAMPS.items()}
RATING_SEQS = {1: [5, 4, 3, 5], 2: [5, 4, 3, 1, 2], 3: [3, 4, 2, 4, 5]}

LAYOUTS = ("ml-1m", "recbole", "ml-100k-original")
DATASET_OF_LAYOUT = {"ml-1m": "ml-1m", "recbole": "ml-100k", "ml-100k-original": "ml-100k"}


def write_ml1m(raw_dir: Path, ratings=RATINGS, movies=MOVIES) -> Path:
    """ratings.dat / movies.dat ("::", latin-1) plus users.dat and README, as in the zip."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "ratings.dat").write_text(
        "".join(f"{u}::{i}::{r}::{T0 + t}\n" for u, i, r, t in ratings), encoding="latin-1"
    )
    (raw_dir / "movies.dat").write_text(
        "".join(
            f"{m}::{title} ({year})::{'|'.join(genres)}\n"
            for m, (title, year, genres) in movies.items()
        ),
        encoding="latin-1",
    )
    users = sorted({u for u, *_ in ratings})
    (raw_dir / "users.dat").write_text("".join(f"{u}::F::25::7::55117\n" for u in users))
    (raw_dir / "README").write_text("synthetic MovieLens-1M layout for tests\n")
    return raw_dir


def write_recbole(raw_dir: Path, ratings=RATINGS, movies=MOVIES) -> Path:
    """ml-100k.inter / ml-100k.item (tab-separated, typed header, utf-8), as in the wheel."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{r}\t{T0 + t}\n" for u, i, r, t in ratings)
    (raw_dir / "ml-100k.inter").write_text(inter, encoding="utf-8")
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    item += "".join(
        f"{m}\t{title}\t{year}\t{' '.join(genres)}\n" for m, (title, year, genres) in movies.items()
    )
    (raw_dir / "ml-100k.item").write_text(item, encoding="utf-8")
    return raw_dir


def write_original(raw_dir: Path, ratings=RATINGS, movies=MOVIES) -> Path:
    """u.data (tab-separated) / u.item ('|'-separated, 19 genre flags, latin-1)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "u.data").write_text(
        "".join(f"{u}\t{i}\t{r}\t{T0 + t}\n" for u, i, r, t in ratings), encoding="latin-1"
    )
    lines = []
    for m, (title, year, genres) in movies.items():
        flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
        url = f"http://us.imdb.com/M/title-exact?{title.replace(' ', '%20')}"
        lines.append(f"{m}|{title} ({year})|01-Jan-{year}||{url}|{flags}\n")
    (raw_dir / "u.item").write_text("".join(lines), encoding="latin-1")
    return raw_dir


WRITERS = {"ml-1m": write_ml1m, "recbole": write_recbole, "ml-100k-original": write_original}


def make_ml1m_zip(path: Path, raw_dir: Path) -> Path:
    """A zip with the GroupLens layout: ml-1m/ratings.dat, movies.dat, users.dat, README."""
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("ratings.dat", "movies.dat", "users.dat", "README"):
            zf.write(raw_dir / name, f"ml-1m/{name}")
    return path


def write_random_prepared(
    out_dir: Path, lengths, num_items: int, seed: int = 0, *, distinct: bool = True
) -> Path:
    """Prepare a random dataset (users with these sequence lengths) through build_contract."""
    rng = np.random.default_rng(seed)
    ratings = []
    for user, length in enumerate(lengths, start=1):
        chosen = (
            rng.choice(np.arange(1, num_items + 1), size=length, replace=False)
            if distinct
            else rng.integers(1, num_items + 1, size=length)
        )
        ratings += [(user, int(i), int(rng.integers(1, 6)), 1000 + t) for t, i in enumerate(chosen)]
    # every item needs metadata; unrated ones are simply left out of the vocabulary
    movies = {i: (f"Movie {i}", 2000, ["Drama"]) for i in range(1, num_items + 1)}
    raw = write_ml1m(out_dir.parent / f"{out_dir.name}-raw", ratings, movies)
    build_contract(dataset_spec("ml-1m"), raw, out_dir)
    return out_dir
