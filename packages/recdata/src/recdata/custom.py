"""A dataset of the user's own -> the data contract (`recdata prepare NAME --from PATH ...`).

Two kinds of input:

* RecBole atomic files: a directory holding NAME.inter (and optionally NAME.item), or the
  .inter file itself. The header is RecBole's typed one (`name:type`, type one of token,
  token_seq, float, float_seq), tab-separated and unquoted, so every dataset of RecBole's
  collection reads as it is.
* a plain table of interactions (CSV, TSV or Parquet) with the columns named by options, and an
  optional items table describing the items.

Ids are tokens (strings, e.g. Amazon ASINs). Dense ids follow the ascending order of the raw
ids, numeric when every raw id is an integer, else by string: MovieLens files read here get the
same dense ids as the built-in datasets. Item text is only what the chosen columns say; nothing
invents a title, and an item without text gets an empty one (the teacher shows "item <id>").
Everything is vectorised (pyarrow readers and compute, numpy); line numbers are worked out
only for an error (recdata.tables).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recdata import tables
from recdata.atomic import sha256_file
from recdata.contract import SCHEMA_VERSION, SPLIT_RULE, fingerprint, split_counts
from recdata.errors import DataError, UserError
from recdata.filters import Filters, apply_filters
from recdata.prepare import (
    Sequences,
    build_sequences,
    counts_meta,
    items_table_of,
    sequences_table_of,
    write_contract,
)
from recdata.sources import DATASETS
from recdata.tables import TableFile

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CustomSource:
    """Where a dataset of the user's own is and how to read it (the options of `recdata
    prepare`)."""

    path: Path
    format: str | None = None  # atomic | csv | tsv | parquet; None: from the path
    user_col: str = "user_id"  # RecBole's default field names
    item_col: str = "item_id"
    time_col: str | None = None  # None: "timestamp" when there is one, else file order
    rating_col: str | None = None  # None: "rating" when there is one, else every rating 1.0
    items_path: Path | None = None  # None: NAME.item next to NAME.inter (atomic files)
    item_id_col: str | None = None  # None: the interactions' item column name, else item_id
    text_cols: tuple[str, ...] | None = None  # None: every text column of the items table
    year_col: str | None = None
    genres_col: str | None = None
    genres_sep: str = "|"  # CSV/TSV genres cells; atomic token_seq cells split on spaces
    max_text_chars: int = 512
    allow_missing_items: bool = False  # rated items the items table lacks get empty text

    def __post_init__(self) -> None:
        if self.max_text_chars < 1:
            raise UserError(f"--max-text-chars must be >= 1, got {self.max_text_chars}")


def check_name(name: str) -> str:
    if name in DATASETS:
        raise UserError(f"{name!r} is a built-in dataset; give your own data another name")
    if not _NAME.match(name):
        raise UserError(
            f"dataset name {name!r} must be letters, digits, '.', '_' or '-' "
            "(it names a directory), starting with a letter or digit"
        )
    return name


# --- which files --------------------------------------------------------------------------------


def resolve_files(name: str, source: CustomSource) -> tuple[TableFile, TableFile | None]:
    """The interactions file and the items file (if any) that `source` names."""
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"--from {path}: no such file or directory")
    if path.is_dir():
        if source.format not in (None, "atomic"):
            raise DataError(
                f"--from {path}: a directory is read as RecBole atomic files; give the "
                f"{source.format} file itself"
            )
        inter = TableFile(path / f"{name}.inter", "atomic")
        if not inter.path.is_file():
            found = sorted(p.name for p in path.glob("*.inter"))
            hint = (
                f"; found {', '.join(found[:5])} (the file name must be the dataset name)"
                if found
                else ""
            )
            raise DataError(
                f"{path}: no {name}.inter (RecBole atomic files are named after the dataset){hint}"
            )
    else:
        inter = TableFile(path, tables.format_of(path, source.format))
    items_path = source.items_path
    if (
        items_path is None
        and inter.format == "atomic"
        and inter.path.with_suffix(".item").is_file()
    ):
        items_path = inter.path.with_suffix(".item")
    if items_path is None:
        return inter, None
    items_path = Path(items_path)
    items_format = "atomic" if items_path.suffix == ".item" else None
    if items_format is None and items_path.suffix.lower() not in (
        ".csv",
        ".tsv",
        ".tab",
        ".parquet",
        ".pq",
    ):
        items_format = inter.format
    items = TableFile(items_path, tables.format_of(items_path, items_format))
    items.check_exists("items")
    return inter, items


# --- columns of a file --------------------------------------------------------------------------


@dataclass
class Fields:
    """The columns of one file: name -> (column name in the file, RecBole type or None)."""

    file: TableFile
    header: list[str]
    columns: dict[str, tuple[str, str | None]]

    @classmethod
    def of(cls, file: TableFile) -> Fields:
        header = file.header()
        if file.format != "atomic":
            return cls(file, header, {name: (name, None) for name in header})
        columns = {}
        for k, text in enumerate(header, start=1):
            name, sep, kind = text.partition(":")
            if not sep:
                raise DataError(
                    f"{file.path}:1: column {k} {text!r} has no type; a RecBole atomic "
                    f"header names every column name:type, type one of {', '.join(ATOMIC_TYPES)}"
                )
            if kind not in ATOMIC_TYPES:
                raise DataError(
                    f"{file.path}:1: column {k} {text!r} has the unknown type {kind!r}; "
                    f"RecBole's types are {', '.join(ATOMIC_TYPES)}"
                )
            columns[name] = (text, kind)
        return cls(file, header, columns)

    def pick(
        self, name: str | None, option: str, *, required: bool, types: tuple[str, ...] = ()
    ) -> str | None:
        """The file column of field `name`, checked against RecBole types for atomic files."""
        if name is None:
            return None
        if name not in self.columns:
            if not required:
                return None
            listed = ", ".join(self.columns)
            raise DataError(
                f"{self.file.path}: no column {name!r} (set {option}); its columns are: {listed}"
            )
        column, kind = self.columns[name]
        if types and kind is not None and kind not in types:
            raise DataError(
                f"{self.file.path}:1: column {column!r} is {kind}, expected {' or '.join(types)} "
                f"for {option}"
            )
        return column

    def type_of(self, name: str) -> str | None:
        return self.columns[name][1]


def _read(fields: Fields, wanted: dict[str, str]) -> pa.Table:
    """Read the file columns in `wanted` (field name -> file column), named by field name."""
    columns = list(dict.fromkeys(wanted.values()))
    table = fields.file.read(fields.header, columns)
    return pa.table({name: table.column(column) for name, column in wanted.items()})


# --- interactions -------------------------------------------------------------------------------


@dataclass
class Interactions:
    """Interactions in file order; ids as strings."""

    file: TableFile
    users: pa.Array
    items: pa.Array
    times: np.ndarray | None  # int64 seconds
    ratings: np.ndarray | None  # float32
    columns: dict[str, str | None]  # user, item, time, rating -> field name used

    def __len__(self) -> int:
        return len(self.users)


def read_interactions(file: TableFile, source: CustomSource) -> Interactions:
    file.check_exists("interactions")
    fields = Fields.of(file)
    if source.user_col == source.item_col:
        raise UserError(f"--user-col and --item-col both name {source.user_col!r}")
    names = {
        "user": source.user_col,
        "item": source.item_col,
        "time": source.time_col or "timestamp",
        "rating": source.rating_col or "rating",
    }
    # time and rating are optional unless named; RecBole types them float, ids token
    found = {
        "user": fields.pick(names["user"], "--user-col", required=True, types=("token",)),
        "item": fields.pick(names["item"], "--item-col", required=True, types=("token",)),
        "time": fields.pick(
            names["time"], "--time-col", required=source.time_col is not None, types=("float",)
        ),
        "rating": fields.pick(
            names["rating"],
            "--rating-col",
            required=source.rating_col is not None,
            types=("float",),
        ),
    }
    used = {key: names[key] if column else None for key, column in found.items()}
    # by field name
    table = _read(fields, {used[key]: column for key, column in found.items() if column})
    return Interactions(
        file=file,
        users=tables.ids(file, table, used["user"], "user"),
        items=tables.ids(file, table, used["item"], "item"),
        times=tables.times(file, table, used["time"]) if used["time"] else None,
        ratings=tables.numbers(file, table, used["rating"]).astype(np.float32)
        if used["rating"]
        else None,
        columns=used,
    )


def encode_ids(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(vocabulary in ascending order, code of each value). The order is numeric when every id
    is an integer (equal numbers, e.g. "7" and "007", then by text), else by string."""
    encoded = values.dictionary_encode()
    vocab, indices = encoded.dictionary, encoded.indices.to_numpy()
    try:
        numbers = vocab.cast(pa.int64())
        order = pc.sort_indices(
            pa.table({"n": numbers, "s": vocab}), sort_keys=[("n", "ascending"), ("s", "ascending")]
        )
    except pa.ArrowInvalid:
        order = pc.sort_indices(vocab)
    order = order.to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return vocab.take(pa.array(order)), rank[indices]


# --- items --------------------------------------------------------------------------------------


@dataclass
class ItemTable:
    file: TableFile
    ids: pa.Array  # string, unique
    text: pa.Array  # string, "" when the item has none
    years: pa.Array | None  # int16
    genres: pa.Array | None  # list<string>
    text_columns: list[str]
    id_column: str


def read_items(file: TableFile, source: CustomSource, item_field: str) -> ItemTable:
    fields = Fields.of(file)
    id_name = source.item_id_col or _default_item_id(fields, item_field)
    id_column = fields.pick(id_name, "--item-id-col", required=True, types=("token",))
    year = fields.pick(source.year_col, "--year-col", required=True)
    genres = fields.pick(source.genres_col, "--genres-col", required=True)
    mapped = {id_name, source.year_col, source.genres_col}
    if source.text_cols is not None:
        text_names = [n for n in source.text_cols if fields.pick(n, "--text-cols", required=True)]
    else:
        text_names = [
            n
            for n in fields.columns
            if n not in mapped and fields.type_of(n) in (None, "token", "token_seq")
        ]
    wanted = {"__id": id_column, **{f"text:{n}": fields.columns[n][0] for n in text_names}}
    wanted |= {"__year": year} if year else {}
    wanted |= {"__genres": genres} if genres else {}
    table = _read(fields, wanted)
    ids = tables.ids(file, pa.table({id_name: table.column("__id")}), id_name, "item")
    _refuse_duplicate_ids(file, ids, id_name)
    text_values = [(n, tables.column(table, f"text:{n}")) for n in text_names]
    if (
        source.text_cols is None and file.format != "atomic"
    ):  # numbers (prices, counts) are not text
        text_values = [(n, v) for n, v in text_values if not _all_numbers(v)]
    return ItemTable(
        file=file,
        ids=ids,
        text=item_text(text_values, source.max_text_chars),
        years=_years(tables.column(table, "__year")) if year else None,
        genres=_genres(
            tables.column(table, "__genres"), fields.type_of(source.genres_col), source.genres_sep
        )
        if genres
        else None,
        text_columns=[n for n, _ in text_values],
        id_column=id_name,
    )


def _default_item_id(fields: Fields, item_field: str) -> str:
    """The interactions' item column name, else RecBole's item_id."""
    return (
        item_field if item_field in fields.columns or "item_id" not in fields.columns else "item_id"
    )


def _refuse_duplicate_ids(file: TableFile, ids: pa.Array, name: str) -> None:
    codes = ids.dictionary_encode().indices.to_numpy()
    _, first = np.unique(codes, return_index=True)  # codes are 0..K-1 in order of appearance
    if len(first) == len(ids):
        return
    is_first = np.zeros(len(ids), dtype=bool)
    is_first[first] = True
    row = int(np.flatnonzero(~is_first)[0])
    first_row = int(first[codes[row]])
    again = (
        f"row {first_row + 1}" if file.format == "parquet" else f"line {file.line_of(first_row)}"
    )
    raise DataError(
        f"{file.where(row, name)}: item id {ids[row].as_py()!r} appears again (first on {again})"
    )


def _all_numbers(values: pa.Array) -> bool:
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return True
    if not pa.types.is_string(values.type):
        return False
    try:
        pc.cast(pc.drop_null(values).filter(pc.not_equal(pc.drop_null(values), "")), pa.float64())
    except pa.ArrowInvalid:
        return False
    return True


def _as_text(values: pa.Array) -> pa.Array:
    """One line of text per row: list values joined with ", ", whitespace runs made one space."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.binary_join(values.cast(pa.list_(pa.string())), ", ")
    elif not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    values = pc.fill_null(values.cast(pa.string()), "")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(values, r"\s+", " "))


def item_text(columns: list[tuple[str, pa.Array]], max_chars: int) -> pa.Array:
    """The readable text of each item: one column's value alone, or "name: value; name: value"
    for several (empty values left out), cut at a word boundary to at most `max_chars`."""
    if not columns:
        return pa.array([], pa.string())
    n = len(columns[0][1])
    if len(columns) == 1:
        text = _as_text(columns[0][1])
    else:
        # no nulls here: pyarrow drops rows whose pieces are all null with null_handling="skip"
        pieces = []
        for name, values in columns:
            value = _as_text(values)
            piece = pc.binary_join_element_wise(f"; {name}: ", value, "")
            pieces.append(pc.if_else(pc.equal(value, ""), "", piece))
        text = pc.replace_substring_regex(pc.binary_join_element_wise(*pieces, ""), "^; ", "")
    assert len(text) == n
    return _cap(text, max_chars)


def _cap(text: pa.Array, max_chars: int) -> pa.Array:
    long = pc.greater(pc.utf8_length(text), max_chars)
    if not pc.any(long).as_py():
        return text
    # One character more than the budget shows whether the cut falls between words.
    cut = pc.replace_substring_regex(
        pc.utf8_slice_codeunits(text, 0, max_chars + 1), r"\s*\S*$", ""
    )
    cut = pc.utf8_rtrim(cut, characters=" ;:,")
    hard = pc.utf8_slice_codeunits(text, 0, max_chars)  # one word longer than the budget
    return pc.if_else(long, pc.if_else(pc.equal(cut, ""), hard, cut), text)


def _years(values: pa.Array) -> pa.Array:
    """Years 1..9999 as int16; anything else (unknown, a date) is null."""
    if not pa.types.is_integer(values.type):
        text = pc.utf8_trim_whitespace(_as_text(values))
        values = pc.if_else(pc.match_substring_regex(text, r"^[0-9]{1,4}$"), text, None).cast(
            pa.int64()
        )
    ok = pc.and_(pc.greater_equal(values, 1), pc.less_equal(values, 9999))
    return pc.if_else(ok, values, None).cast(pa.int16())


def _genres(values: pa.Array, atomic_type: str | None, sep: str) -> pa.Array:
    """A list of genres per item: a list column as it is, a token_seq split on whitespace, text
    split on `sep`; empty entries dropped."""
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        lists = values.cast(pa.list_(pa.string()))
    else:
        text = _as_text(values)
        split_whitespace = atomic_type in ("token_seq", "float_seq")
        lists = pc.utf8_split_whitespace(text) if split_whitespace else pc.split_pattern(text, sep)
    lists = pc.fill_null(lists, pa.scalar([], pa.list_(pa.string())))
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    counts = np.bincount(parents[keep], minlength=len(lists))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def align_items(items: ItemTable | None, item_raw: pa.Array, allow_missing: bool, inter_path: Path):
    """(titles, years, genres, items without a row) for the dense items, from the items table."""
    n = len(item_raw)
    if items is None:
        return pa.array([""] * n, pa.string()), pa.nulls(n, pa.int16()), _empty_lists(n), 0
    pos = pc.index_in(item_raw, value_set=items.ids)
    missing = pc.is_null(pos).to_numpy(zero_copy_only=False)
    if missing.any() and not allow_missing:
        absent = item_raw.filter(pa.array(missing)).to_pylist()
        raise DataError(
            f"{items.file.path}: {len(absent)} rated item(s) of {inter_path} have no row here, "
            f"e.g. {absent[:5]} (add them, or pass --allow-missing-items for empty text)"
        )
    titles = pc.fill_null(items.text.take(pos), "")
    years = items.years.take(pos) if items.years is not None else pa.nulls(n, pa.int16())
    genres = items.genres.take(pos) if items.genres is not None else _empty_lists(n)
    genres = pc.fill_null(genres, pa.scalar([], pa.list_(pa.string())))
    return titles, years, genres, int(missing.sum())


def _empty_lists(n: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))


# --- the contract -------------------------------------------------------------------------------


def build_custom_contract(
    name: str,
    source: CustomSource,
    out_dir: Path,
    filters: Filters | None = None,
    *,
    use: list[str] | None = None,
) -> dict:
    """Read the user's files, filter, write the contract to `out_dir` atomically, return meta.
    `use` is what a command needs to find the dataset (Hydra overrides), kept in meta.json."""
    filters = filters or Filters()
    check_name(name)
    inter_file, items_file = resolve_files(name, source)
    inter = read_interactions(inter_file, source)
    items = read_items(items_file, source, inter.columns["item"]) if items_file else None
    if filters.rating_threshold is not None and inter.ratings is None:
        raise UserError(
            f"--rating-threshold needs ratings, and {inter_file.path} has no column "
            f"{source.rating_col or 'rating'!r} (set --rating-col)"
        )

    user_vocab, user_codes = encode_ids(inter.users)
    item_vocab, item_codes = encode_ids(inter.items)
    times = inter.times if inter.times is not None else np.zeros(len(inter), np.int64)
    ratings = inter.ratings if inter.ratings is not None else np.ones(len(inter), np.float32)
    rows, report = apply_filters(user_codes, item_codes, times, ratings, filters, name)
    seqs = build_sequences(
        user_codes[rows],
        item_codes[rows],
        times[rows],
        ratings[rows],
        len(user_vocab),
        len(item_vocab),
    )
    if inter.times is None:  # file order is the order; timestamps are positions 0..L-1
        seqs.times = _positions(seqs)
    del user_codes, item_codes, times, ratings, rows

    item_raw, user_raw = (
        item_vocab.take(pa.array(seqs.item_index)),
        user_vocab.take(pa.array(seqs.user_index)),
    )
    titles, years, genres, without_row = align_items(
        items, item_raw, source.allow_missing_items, inter_file.path
    )
    fp = fingerprint(
        item_raw.to_pylist(),
        titles.to_pylist(),
        user_raw.to_pylist(),
        seqs.offsets,
        seqs.items,
        seqs.times,
        seqs.ratings,
    )
    meta = {
        "schema_version": SCHEMA_VERSION,
        "dataset": name,
        "source": _source_meta(inter, items, source),
        "order": _order_meta(inter),
        "item_text": _text_meta(items, titles, without_row, source.max_text_chars),
        "counts": {
            **counts_meta(report, len(user_raw), len(item_raw), len(seqs.items), len(user_vocab)),
            "raw_items": len(item_vocab),
            "dropped_items": len(item_vocab) - len(item_raw),
        },
        "filters": report.meta(filters, full=True),
        "split": {"rule": SPLIT_RULE, "samples": split_counts(seqs.lengths)},
        "fingerprint": fp,
        "use": use or [f"dataset.name={name}"],
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_contract(
        out_dir,
        items_table_of(item_raw, titles, years, genres),
        sequences_table_of(user_raw, seqs),
        meta,
    )
    return meta


def _positions(seqs: Sequences) -> np.ndarray:
    starts = np.repeat(seqs.offsets[:-1], seqs.lengths)
    return np.arange(len(seqs.items), dtype=np.int64) - starts


def _source_meta(inter: Interactions, items: ItemTable | None, source: CustomSource) -> dict:
    files = {str(inter.file.path.resolve()): sha256_file(inter.file.path)}
    if items is not None:
        files[str(items.file.path.resolve())] = sha256_file(items.file.path)
    kind = (
        "RecBole atomic files" if inter.file.format == "atomic" else f"a {inter.file.format} table"
    )
    return {
        "description": f"your own data ({kind})",
        "format": inter.file.format,
        "files": files,
        "columns": inter.columns,
        "items": None
        if items is None
        else {"id": items.id_column, "year": source.year_col, "genres": source.genres_col},
    }


def _order_meta(inter: Interactions) -> str:
    if inter.times is None:
        return "file order (no time column); timestamps are each user's positions 0..L-1"
    return f"time column {inter.columns['time']} (seconds), ties in file order"


def _text_meta(
    items: ItemTable | None, titles: pa.Array, without_row: int, max_chars: int
) -> dict | None:
    if items is None or not items.text_columns:
        return None
    with_text = int(pc.sum(pc.not_equal(titles, "")).as_py() or 0)
    return {
        "columns": items.text_columns,
        "max_chars": max_chars,
        "items_with_text": with_text,
        "items_without_row": without_row,
    }
