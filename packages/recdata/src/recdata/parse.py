"""Parsers for the raw MovieLens layouts into one in-memory form, and the checks of the values.

Every malformed line, implausible value (a negative or cut-short timestamp, a rating off the
dataset's scale, NaN) and repeated item id is reported with its file and line number.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recdata.errors import DataError
from recdata.sources import DatasetSpec

# Genres of the original ML-100K u.item, in the order of its 19 flag columns (u.genre).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
# "Usual Suspects, The" -> "The Usual Suspects"; keeps a trailing "(original title)".
_TRAILING_ARTICLE = re.compile(
    r"^(?P<main>.+?), (?P<article>The|A|An|Les|Le|La|L'|Il|Das|Der|Die|El|Los|Las)"
    r"(?P<rest>\s*\(.*\))?$"
)


@dataclass
class RawItem:
    title: str
    year: int | None
    genres: list[str]


@dataclass
class RawInteractions:
    """Interactions in file order (file order breaks timestamp ties)."""

    users: np.ndarray  # raw user ids, int64
    items: np.ndarray  # raw item ids, int64
    ratings: np.ndarray  # float32
    timestamps: np.ndarray  # int64
    lines: np.ndarray  # line number of each interaction in its file, int64

    def select(self, keep: np.ndarray) -> RawInteractions:
        return RawInteractions(
            self.users[keep],
            self.items[keep],
            self.ratings[keep],
            self.timestamps[keep],
            self.lines[keep],
        )


def clean_title(title: str) -> str:
    title = title.strip()
    match = _TRAILING_ARTICLE.match(title)
    if match:
        article = match["article"]
        sep = "" if article.endswith("'") else " "
        title = f"{article}{sep}{match['main']}{match['rest'] or ''}"
    return title


def split_title_year(text: str) -> tuple[str, int | None]:
    match = _TITLE_YEAR.match(text.strip())
    if match:
        return clean_title(match["title"]), int(match["year"])
    return clean_title(text), None


def _read_lines(path: Path, encoding: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not {encoding} text ({exc.reason} at byte {exc.start})") from None
    # Split on "\n" only: str.splitlines() also breaks at \x85, \x1c-\x1e, \x0b, \x0c, which
    # latin-1 text may contain inside a field, and would shift every reported line number.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _parse_interaction_lines(
    path: Path, lines: list[str], sep: str, expected: str, first_line: int
) -> RawInteractions:
    users, items, ratings, stamps, linenos = [], [], [], [], []
    for lineno, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        fields = line.split(sep)
        try:
            if len(fields) != 4:
                raise ValueError
            user, item, rating, stamp = fields
            users.append(int(user))
            items.append(int(item))
            ratings.append(float(rating))
            stamps.append(int(float(stamp)))
            linenos.append(lineno)
        except (ValueError, OverflowError):  # OverflowError: int(float("inf"))
            raise DataError(f"{path}:{lineno}: expected {expected}, got {line[:80]!r}") from None
    if not users:
        raise DataError(f"{path}: no interactions")
    return RawInteractions(
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        ratings=np.asarray(ratings, dtype=np.float32),
        timestamps=np.asarray(stamps, dtype=np.int64),
        lines=np.asarray(linenos, dtype=np.int64),
    )


def _parse_interactions_fast(path: Path, sep: str, skip_rows: int) -> RawInteractions | None:
    """The common case in one vectorised pass (pyarrow's CSV reader): every line exactly
    `int<sep>int<sep>number<sep>int`. Returns None on anything else (a malformed line, a float
    timestamp, stray whitespace lines, an empty file), and the caller falls back to the line
    loop, which accepts the same well-formed files and names the file and line of a bad one."""
    # "::" is split on ":" and the fields between the separators must then be empty.
    names = ["user", "item", "rating", "stamp"]
    if sep == "::":
        names = ["user", "_1", "item", "_2", "rating", "_3", "stamp"]
    elif len(sep) != 1:
        return None
    types = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "stamp": pa.int64()}
    types.update({name: pa.string() for name in names if name.startswith("_")})
    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=skip_rows),
            # an empty line fails the column count, so every row is exactly one line
            parse_options=pa_csv.ParseOptions(
                delimiter=sep[0], quote_char=False, ignore_empty_lines=False
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=types,
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, OSError):
        return None
    if table.num_rows == 0 or any(column.null_count for column in table.columns):
        return None
    for name in names:
        if name.startswith("_") and pc.sum(pc.binary_length(table.column(name))).as_py():
            return None
    return RawInteractions(
        users=table.column("user").to_numpy().astype(np.int64, copy=False),
        items=table.column("item").to_numpy().astype(np.int64, copy=False),
        ratings=table.column("rating").to_numpy().astype(np.float32),
        timestamps=table.column("stamp").to_numpy().astype(np.int64, copy=False),
        lines=np.arange(skip_rows + 1, skip_rows + 1 + table.num_rows, dtype=np.int64),
    )


def _parse_interactions(
    path: Path, sep: str, expected: str, encoding: str, first_line: int = 1
) -> RawInteractions:
    """Fast path first; on any irregularity the line loop finds and reports the bad line."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    fast = _parse_interactions_fast(path, sep, skip_rows=first_line - 1)
    if fast is not None:
        return fast
    lines = _read_lines(path, encoding)[first_line - 1 :]
    return _parse_interaction_lines(path, lines, sep, expected, first_line)


def _int_field(path: Path, lineno: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}:{lineno}: expected an integer {what}, got {value!r}") from None


def _add_item(
    items: dict[int, RawItem],
    first_seen: dict[int, int],
    path: Path,
    lineno: int,
    item_id: int,
    item: RawItem,
) -> None:
    if item_id in first_seen:
        raise DataError(
            f"{path}:{lineno}: item id {item_id} appears again (first "
            f"on line {first_seen[item_id]})"
        )
    first_seen[item_id] = lineno
    items[item_id] = item


# --- MovieLens-1M: ratings.dat / movies.dat ("::"-separated, latin-1) -------------------------


def parse_ml1m(raw_dir: Path) -> tuple[RawInteractions, dict[int, RawItem]]:
    ratings_path, movies_path = raw_dir / "ratings.dat", raw_dir / "movies.dat"
    interactions = _parse_interactions(
        ratings_path, "::", "UserID::MovieID::Rating::Timestamp", "latin-1"
    )
    items: dict[int, RawItem] = {}
    seen: dict[int, int] = {}
    for lineno, line in enumerate(_read_lines(movies_path, "latin-1"), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            raise DataError(
                f"{movies_path}:{lineno}: expected MovieID::Title (Year)::Genre|Genre, "
                f"got {line[:80]!r}"
            )
        item_id = _int_field(movies_path, lineno, fields[0], "MovieID")
        title, year = split_title_year(fields[1])
        genres = [g for g in fields[2].split("|") if g]
        _add_item(
            items,
            seen,
            movies_path,
            lineno,
            item_id,
            RawItem(title=title, year=year, genres=genres),
        )
    return interactions, items


# --- MovieLens-100K as shipped by RecBole: ml-100k.inter / ml-100k.item (tab-separated) -------


def _first_line(path: Path, encoding: str) -> str | None:
    """The first line of `path` (None for an empty file), without reading the rest."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    with open(path, "rb") as handle:
        raw = handle.readline()
    if not raw:
        return None
    try:
        return raw.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not {encoding} text ({exc.reason} at byte {exc.start})") from None


def _check_header(path: Path, header: str, expected_prefix: list[str]) -> None:
    columns = [c.split(":")[0] for c in header.split("\t")]
    if columns[: len(expected_prefix)] != expected_prefix:
        raise DataError(
            f"{path}:1: expected a header starting with {expected_prefix}, got {columns}"
        )


def parse_recbole_ml100k(raw_dir: Path) -> tuple[RawInteractions, dict[int, RawItem]]:
    inter_path, item_path = raw_dir / "ml-100k.inter", raw_dir / "ml-100k.item"
    header = _first_line(inter_path, "utf-8")
    if header is None:
        raise DataError(f"{inter_path}: empty file")
    _check_header(inter_path, header, ["user_id", "item_id", "rating", "timestamp"])
    interactions = _parse_interactions(
        inter_path, "\t", "user_id<TAB>item_id<TAB>rating<TAB>timestamp", "utf-8", first_line=2
    )
    item_lines = _read_lines(item_path, "utf-8")
    if not item_lines:
        raise DataError(f"{item_path}: empty file")
    _check_header(item_path, item_lines[0], ["item_id", "movie_title", "release_year", "class"])
    items: dict[int, RawItem] = {}
    seen: dict[int, int] = {}
    for lineno, line in enumerate(item_lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise DataError(
                f"{item_path}:{lineno}: expected item_id<TAB>movie_title<TAB>release_year"
                f"<TAB>class, got {line[:80]!r}"
            )
        item_id = _int_field(item_path, lineno, fields[0], "item_id")
        year = int(fields[2]) if fields[2].isdigit() else None
        genres = [g for g in fields[3].split() if g and g != "unknown"]
        _add_item(
            items,
            seen,
            item_path,
            lineno,
            item_id,
            RawItem(title=clean_title(fields[1]), year=year, genres=genres),
        )
    return interactions, items


# --- MovieLens-100K original layout: u.data / u.item ------------------------------------------


def parse_original_ml100k(raw_dir: Path) -> tuple[RawInteractions, dict[int, RawItem]]:
    data_path, item_path = raw_dir / "u.data", raw_dir / "u.item"
    interactions = _parse_interactions(
        data_path, "\t", "user id<TAB>item id<TAB>rating<TAB>timestamp", "latin-1"
    )
    items: dict[int, RawItem] = {}
    seen: dict[int, int] = {}
    for lineno, line in enumerate(_read_lines(item_path, "latin-1"), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5 + len(ML100K_GENRES):
            raise DataError(
                f"{item_path}:{lineno}: expected 24 '|'-separated fields (id|title|release "
                f"date|video date|url|19 genre flags), got {len(fields)}"
            )
        item_id = _int_field(item_path, lineno, fields[0], "movie id")
        title, year = split_title_year(fields[1])
        if year is None and fields[2][-4:].isdigit():
            year = int(fields[2][-4:])
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError(f"{item_path}:{lineno}: expected 0/1 genre flags, got {flags}")
        genres = [
            g
            for g, flag in zip(ML100K_GENRES, flags, strict=True)
            if flag == "1" and g != "unknown"
        ]
        _add_item(
            items, seen, item_path, lineno, item_id, RawItem(title=title, year=year, genres=genres)
        )
    return interactions, items


LAYOUTS = {
    "ml-1m": (("ratings.dat", "movies.dat"), parse_ml1m),
    "recbole": (("ml-100k.inter", "ml-100k.item"), parse_recbole_ml100k),
    "ml-100k-original": (("u.data", "u.item"), parse_original_ml100k),
}


def detect_layout(raw_dir: Path, allowed: tuple[str, ...]) -> str:
    for layout in allowed:
        files, _ = LAYOUTS[layout]
        if all((raw_dir / name).is_file() for name in files):
            return layout
    expected = " or ".join("+".join(LAYOUTS[layout][0]) for layout in allowed)
    raise DataError(f"{raw_dir}: no dataset files found (expected {expected})")


def parse_raw(
    raw_dir: Path, allowed: tuple[str, ...]
) -> tuple[str, RawInteractions, dict[int, RawItem]]:
    layout = detect_layout(raw_dir, allowed)
    interactions, items = LAYOUTS[layout][1](raw_dir)
    return layout, interactions, items


def read_raw(raw_dir: Path, spec: DatasetSpec) -> tuple[str, RawInteractions, dict[int, RawItem]]:
    """parse_raw, then refuse values a rating of this dataset cannot have."""
    layout, interactions, items = parse_raw(raw_dir, spec.layouts)
    check_values(raw_dir / LAYOUTS[layout][0][0], interactions, spec)
    return layout, interactions, items


def check_values(path: Path, inter: RawInteractions, spec: DatasetSpec) -> None:
    """The first interaction (in file order) with an implausible timestamp or rating, as one
    error naming its line. A timestamp before the dataset's earliest is what a line cut short
    in its last field looks like (a 9-digit Unix time missing a digit is in 1973)."""
    low, high = spec.rating_scale
    latest = time.time() + 86_400
    bad = (inter.timestamps < spec.earliest_timestamp) | (inter.timestamps > latest)
    bad |= ~((inter.ratings >= low) & (inter.ratings <= high))  # NaN included
    if not bad.any():
        return
    row = int(np.argmax(bad))
    where, stamp, rating = (
        f"{path}:{int(inter.lines[row])}",
        int(inter.timestamps[row]),
        float(inter.ratings[row]),
    )
    if stamp < 0:
        raise DataError(f"{where}: timestamp {stamp} is negative")
    if stamp < spec.earliest_timestamp:
        earliest = dt.datetime.fromtimestamp(spec.earliest_timestamp, dt.UTC).date()
        raise DataError(
            f"{where}: timestamp {stamp} is before {earliest}, earlier than any {spec.name} rating "
            "(is the line cut short?)"
        )
    if stamp > latest:
        raise DataError(
            f"{where}: timestamp {stamp} is in the future (expected Unix time in seconds)"
        )
    scale = f"{spec.name}'s rating scale {low:g}..{high:g}"
    raise DataError(
        f"{where}: rating is NaN, not on {scale}"
        if np.isnan(rating)
        else f"{where}: rating {rating:g} is outside {scale}"
    )
