"""A user's table files (CSV, TSV, RecBole atomic files, Parquet) read with pyarrow, and errors
that name the file, the line (as numbered in the file, 1-based) and the column of a bad value.

Reading and converting is vectorised. Line numbers are only worked out when something is wrong:
then a slow scan (Python's csv module) walks the file up to the bad row, so a good file never
pays for error reporting and a bad one is named exactly, blank lines and quoted line breaks
included.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from recdata.errors import DataError

# atomic: RecBole's typed tab-separated files, never quoted (RecBole reads them that way).
# tsv is read unquoted too: a title like `12" Single` is common there and quoting is not.
FORMATS = ("atomic", "csv", "tsv", "parquet")
_EXTENSIONS = {
    ".inter": "atomic",
    ".item": "atomic",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_BLOCK_SIZE = 16 << 20  # bytes per parse block: fewer, larger blocks read faster


def format_of(path: Path, given: str | None = None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise DataError(f"--format must be one of {', '.join(FORMATS)}, got {given!r}")
        return given
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {Path(path).suffix!r}; "
            f"name it with --format ({', '.join(FORMATS)})"
        )
    return fmt


@dataclass(frozen=True)
class TableFile:
    path: Path
    format: str

    @property
    def delimiter(self) -> str:
        return "," if self.format == "csv" else "\t"

    @property
    def quoted(self) -> bool:
        return self.format == "csv"

    def check_exists(self, what: str) -> None:
        if self.path.is_dir():
            raise DataError(f"{self.path}: is a directory, expected the {what} file")
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file ({what})")

    # --- the header ----------------------------------------------------------------------------

    def header(self) -> list[str]:
        """Column names: the first line of a text file, the schema of a Parquet file."""
        if self.format == "parquet":
            return list(self._parquet_schema().names)
        for _, fields in self._records():
            names = [name.strip() for name in fields]
            for k, name in enumerate(names):
                if name in names[:k]:
                    raise DataError(
                        f"{self.path}:1: column name {name!r} appears twice in the header"
                    )
            return names
        raise DataError(f"{self.path}: empty file")

    def _parquet_schema(self) -> pa.Schema:
        try:
            return pq.read_schema(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.path}: not a Parquet file ({_first_line(exc)})") from None

    # --- reading -------------------------------------------------------------------------------

    def read(self, header: list[str], columns: list[str]) -> pa.Table:
        """`columns` (names from `header`) of every row; text files give strings, converted by
        the caller so that a bad value can be named."""
        if self.format == "parquet":
            try:
                table = pq.read_table(self.path, columns=columns)
            except (pa.ArrowException, OSError) as exc:
                raise DataError(f"{self.path}: cannot read ({_first_line(exc)})") from None
        else:
            table = self._read_text(header, columns)
        if table.num_rows == 0:
            raise DataError(f"{self.path}: no rows after the header")
        return table

    def _read_text(self, header: list[str], columns: list[str]) -> pa.Table:
        # Values with line breaks (quoted CSV) slow arrow's parallel parse, so they are allowed
        # only on a second try, when the first one failed.
        attempts = (False, True) if self.quoted else (False,)
        for newlines in attempts:
            try:
                return pa_csv.read_csv(
                    self.path,
                    read_options=pa_csv.ReadOptions(
                        column_names=header, skip_rows=1, block_size=_BLOCK_SIZE
                    ),
                    parse_options=pa_csv.ParseOptions(
                        delimiter=self.delimiter,
                        quote_char='"' if self.quoted else False,
                        newlines_in_values=newlines,
                    ),
                    convert_options=pa_csv.ConvertOptions(
                        include_columns=columns,
                        column_types=dict.fromkeys(columns, pa.string()),
                        strings_can_be_null=False,
                        quoted_strings_can_be_null=False,
                        null_values=[],
                    ),
                )
            except pa.ArrowInvalid as exc:
                error = exc
        self._locate_bad_record(len(header))
        raise DataError(f"{self.path}: {_first_line(error)}")

    def _locate_bad_record(self, width: int) -> None:
        """The first line that is not UTF-8 or has the wrong number of fields, as a DataError."""
        name = {"csv": "comma", "tsv": "tab", "atomic": "tab"}[self.format]
        for lineno, fields in self._records(skip_header=True):
            if len(fields) != width:
                text = self.delimiter.join(fields)
                raise DataError(
                    f"{self.path}:{lineno}: expected {width} {name}-separated fields as in the "
                    f"header, got {len(fields)}: {text[:80]!r}"
                )

    def _records(self, skip_header: bool = False) -> Iterator[tuple[int, list[str]]]:
        """(first line number, fields) of every non-blank record, in file order."""
        csv.field_size_limit(1 << 30)  # long item descriptions exceed the default 128 KiB
        reader = csv.reader(
            self._lines(),
            delimiter=self.delimiter,
            quoting=csv.QUOTE_MINIMAL if self.quoted else csv.QUOTE_NONE,
        )
        start, first = 1, True
        for fields in reader:
            lineno, start = start, reader.line_num + 1
            if not fields:
                continue  # blank lines are skipped by arrow too
            if first and skip_header:
                first = False
                continue
            first = False
            yield lineno, fields

    def _lines(self) -> Iterator[str]:
        with open(self.path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{self.path}:{lineno}: not UTF-8 text ({exc.reason} at byte "
                        f"{exc.start} of the line)"
                    ) from None
                yield line.removeprefix("\ufeff") if lineno == 1 else line

    # --- naming a row --------------------------------------------------------------------------

    def where(self, row: int, column: str | None = None) -> str:
        """`path:line` (text) or `path: row N` (Parquet) of data row `row` (0-based), with the
        column when given."""
        place = (
            f"{self.path}: row {row + 1}"
            if self.format == "parquet"
            else f"{self.path}:{self.line_of(row)}"
        )
        return f"{place}: column {column!r}" if column is not None else place

    def line_of(self, row: int) -> int:
        for k, (lineno, _) in enumerate(self._records(skip_header=True)):
            if k == row:
                return lineno
        raise AssertionError(f"{self.path} has no data row {row}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- converting columns, naming the first bad value --------------------------------------------


def first_failure(values: pa.Array, convert: Callable[[pa.Array], object]) -> int:
    """Index of the first value `convert` fails on (it fails on the whole array): halve the
    range each step, converting about len(values) values in all."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(values.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowInvalid, ValueError):
            hi = mid
    return lo


def column(table: pa.Table, name: str) -> pa.Array:
    values = table.column(name)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def ids(file: TableFile, table: pa.Table, name: str, what: str) -> pa.Array:
    """Ids as strings (tokens, as RecBole reads them); integers become their decimal text."""
    values = column(table, name)
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.cast(kind.value_type), kind.value_type
    if pa.types.is_integer(kind) or pa.types.is_large_string(kind):
        values = values.cast(pa.string())
    elif not pa.types.is_string(kind):
        raise DataError(
            f"{file.path}: column {name!r} holds {kind} values; {what} ids must be "
            "integers or strings"
        )
    bad = pc.or_kleene(pc.is_null(values), pc.equal(values, "")).fill_null(True)
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{file.where(row, name)}: empty {what} id")
    return values


def numbers(file: TableFile, table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 (text is parsed; NaN and infinities are refused)."""
    values = column(table, name)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            values = values.cast(pa.float64())
        except (
            pa.ArrowInvalid
        ):  # spaces around a number are common after a comma: try again without
            values = _cast_or_name(
                file, pc.utf8_trim_whitespace(values), name, pa.float64(), "a number"
            )
    elif not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DataError(
            f"{file.path}: column {name!r} holds {values.type} values, expected numbers"
        )
    _refuse_nulls(file, values, name)
    out = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{file.where(row, name)}: expected a finite number, got {out[row]}")
    return out


def _cast_or_name(
    file: TableFile, values: pa.Array, name: str, to: pa.DataType, expected: str
) -> pa.Array:
    try:
        return values.cast(to)
    except pa.ArrowInvalid:
        row = first_failure(values, lambda part: part.cast(to))
        raise DataError(
            f"{file.where(row, name)}: expected {expected}, got {values[row].as_py()!r}"
        ) from None


def _refuse_nulls(file: TableFile, values: pa.Array, name: str) -> None:
    if values.null_count:
        row = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{file.where(row, name)}: missing value")


# Text times: Unix seconds (integer or decimal), or ISO 8601 dates/times (naive ones are UTC).
_TIME_KINDS: tuple[tuple[str, pa.DataType], ...] = (
    ("an integer (Unix time)", pa.int64()),
    ("a number (Unix time)", pa.float64()),
    ("an ISO 8601 date/time", pa.timestamp("ns")),
    ("an ISO 8601 date/time with a UTC offset", pa.timestamp("ns", tz="UTC")),
)


def times(file: TableFile, table: pa.Table, name: str) -> np.ndarray:
    """A time column as int64 seconds (fractions dropped: ties then keep file order). A text
    column takes the kind of its first value; a later value of another kind is named."""
    values = column(table, name)
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = _parse_times(file, values, name)
        kind = values.type
    _refuse_nulls(file, values, name)
    if pa.types.is_timestamp(kind):
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[kind.unit]
        return np.floor_divide(values.cast(pa.int64()).to_numpy(), per_second)
    if pa.types.is_date(kind):
        return values.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64) * 86_400
    if pa.types.is_integer(kind):
        return values.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(kind):
        out = values.to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(out)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{file.where(row, name)}: expected a finite time, got {out[row]}")
        return np.floor(out).astype(np.int64)
    raise DataError(f"{file.path}: column {name!r} holds {kind} values, expected times")


def _parse_times(file: TableFile, values: pa.Array, name: str) -> pa.Array:
    for attempt in range(2):
        if attempt:  # spaces around a value are common after a comma: try again without
            values = pc.utf8_trim_whitespace(values)
        for _, to in _TIME_KINDS:
            try:
                return values.cast(to)
            except pa.ArrowInvalid:
                continue
    # No kind fits every value: name the first value that is not of the first value's kind
    # (integers are located as numbers, so a decimal after integers is not the culprit).
    first = values[0].as_py()
    for expected, to in _TIME_KINDS[1:]:
        try:
            values.slice(0, 1).cast(to)
        except pa.ArrowInvalid:
            continue
        row = first_failure(values, lambda part, to=to: part.cast(to))
        raise DataError(
            f"{file.where(row, name)}: expected {expected} like the first value "
            f"{first!r}, got {values[row].as_py()!r}"
        )
    raise DataError(
        f"{file.where(0, name)}: expected a time (Unix seconds or an ISO 8601 date/time), "
        f"got {first!r}"
    )
