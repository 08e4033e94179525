"""`recdata prepare|stats NAME` for a dataset of one's own: the printed stats, and bad input that
ends in one `error:` line naming the file, line and column, exit code 2 and nothing written."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from custom_testkit import write_atomic, write_csv, write_parquet

from recdata.cli import main

CSV_ARGS = ["--user-col", "user", "--item-col", "item", "--time-col", "ts"]


def run_cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def roots(tmp_path):
    return ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]


def stats_rows(out: str) -> dict[str, str]:
    """'label<padding>  value' rows of format_stats (labels and values may contain spaces)."""
    rows = {}
    for line in out.splitlines():
        if "  " in line and not line.startswith(("prepared ", "use it ")):
            label, value = line.split("  ", 1)
            rows[label.strip()] = value.strip()
    return rows


def test_prepare_and_stats_of_a_csv_dataset(tmp_path, capsys):
    inter, items = write_csv(tmp_path / "src")
    code, out, err = run_cli(
        [
            "prepare",
            "shop",
            "--from",
            str(inter),
            "--items",
            str(items),
            *CSV_ARGS,
            *roots(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    processed = tmp_path / "data" / "processed" / "shop"
    rows = stats_rows(out)
    assert rows == {
        "dataset": "shop",
        "users": "3",
        "items": "4",
        "interactions": "9",
        "avg sequence length": "3.0",
        "density": "75.0000%",
        "dropped users (all filters)": "1",
        "k-core rounds (users >= 3, items >= 1)": "1: -1 users -0 items -2 interactions",
        "dropped items": "0",
        "order": "time column ts (seconds), ties in file order",
        "item text": "title, categories (3 items with text)",
        "train samples": "0",
        "valid samples": "3",
        "test samples": "3",
        "fingerprint": json.loads((processed / "meta.json").read_text())["fingerprint"][:16],
    }
    assert f"prepared shop into {processed} in " in out
    assert (
        out.splitlines()[-1]
        == f"use it in every command with: dataset.name=shop dataset.processed_dir={processed}"
    )
    assert not (tmp_path / "data" / "shop").exists()  # the user's files are read where they are

    code, out2, err = run_cli(["stats", "shop", *roots(tmp_path)], capsys)
    assert code == 0, err
    assert stats_rows(out2) == rows


def test_prepare_atomic_directory_with_filters(tmp_path, capsys):
    src = write_atomic(tmp_path / "src", name="shop")
    code, out, err = run_cli(
        [
            "prepare",
            "shop",
            "--from",
            str(src),
            "--duplicates",
            "keep-first",
            "--rating-threshold",
            "2",
            "--text-cols",
            "title",
            *roots(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    rows = stats_rows(out)
    # rating < 2: u_a's B010 (1); u_a is then left with 2 and dropped
    assert rows["dropped by rating < 2"] == "1 interactions"
    assert rows["dropped duplicates (keep-first)"] == "0 interactions"
    assert (
        rows["users"] == "2"
        and rows["interactions"] == "6"
        and rows["item text"] == "title (3 items with text)"
    )
    meta = json.loads((tmp_path / "data" / "processed" / "shop" / "meta.json").read_text())
    # u_a and u_d
    assert meta["filters"]["k_core_rounds"] == [{"users": 2, "items": 0, "interactions": 4}]


def test_prepare_parquet_to_out(tmp_path, capsys):
    inter, items = write_parquet(tmp_path / "src")
    out_dir = tmp_path / "elsewhere"
    code, out, err = run_cli(
        [
            "prepare",
            "shop",
            "--from",
            str(inter),
            "--items",
            str(items),
            *CSV_ARGS,
            "--out",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((out_dir / "meta.json").read_text())["use"] == [
        "dataset.name=shop",
        f"dataset.processed_dir={out_dir}",
    ]
    assert stats_rows(out)["users"] == "3"


# --- bad input ----------------------------------------------------------------------------------


def _csv(src, text, name="interactions.csv"):
    (src / name).write_text(text)


def _replace_line(path, number, line):
    lines = path.read_text().splitlines()
    lines[number - 1] = line
    path.write_text("\n".join(lines) + "\n")


HEADER = "user,item,rating,ts\n"
GOOD = [
    "u_b,B002,5,100",
    "u_a,B001,4,50",
    "u_b,B010,3,100",
    "u_a,B002,2,60",
    "u_c,B001,5,10",
    "u_a,B010,1,70",
    "u_b,B001,4,90",
    "u_c,B002,3,20",
    "u_c,B003,4,30",
]


def _lines(*replace: tuple[int, str], extra: str = "") -> str:
    """The good CSV with some data lines (numbered as in the file: the header is line 1)
    replaced."""
    lines = list(GOOD)
    for number, text in replace:
        lines[number - 2] = text
    return HEADER + "\n".join(lines) + "\n" + extra


# (what, writes files into src and returns the extra args, expected message; {src} is the dir)
BAD_INPUT = [
    (
        "missing column",
        lambda s: _csv(s, _lines()) or ["--user-col", "userId"],
        "{src}/interactions.csv: no column 'userId' (set --user-col); its "
        "columns are: user, item, rating, ts",
    ),
    (
        "misnamed time column",
        lambda s: _csv(s, _lines()) or ["--time-col", "time"],
        "{src}/interactions.csv: no column 'time' (set --time-col); its "
        "columns are: user, item, rating, ts",
    ),
    (
        "text time in a numeric column",
        lambda s: _csv(s, _lines((5, "u_a,B002,2,yesterday"))) or [],
        "{src}/interactions.csv:5: column 'ts': expected a number (Unix time) like the "
        "first value '100', got 'yesterday'",
    ),
    (
        "mixed kinds of time",
        lambda s: _csv(s, _lines((7, "u_a,B010,1,2020-01-01"))) or [],
        "{src}/interactions.csv:7: column 'ts': expected a number (Unix time) like the "
        "first value '100', got '2020-01-01'",
    ),
    (
        "text in the rating column",
        lambda s: _csv(s, _lines((3, "u_a,B001,four,50"))) or [],
        "{src}/interactions.csv:3: column 'rating': expected a number, got 'four'",
    ),
    (
        "NaN rating",
        lambda s: _csv(s, _lines((4, "u_b,B010,nan,100"))) or [],
        "{src}/interactions.csv:4: column 'rating': expected a finite number, got nan",
    ),
    (
        "empty user id",
        lambda s: _csv(s, _lines((6, ",B001,5,10"))) or [],
        "{src}/interactions.csv:6: column 'user': empty user id",
    ),
    (
        "ragged row",
        lambda s: _csv(s, _lines((5, "u_a,B002,2"))) or [],
        "{src}/interactions.csv:5: expected 4 comma-separated fields as in "
        "the header, got 3: 'u_a,B002,2'",
    ),
    (
        "ragged row after a blank line",
        lambda s: _csv(s, _lines() + "\nu_z,B001,1,5,extra\n") or [],
        "{src}/interactions.csv:12: expected 4 comma-separated fields as in the "
        "header, got 5: 'u_z,B001,1,5,extra'",
    ),
    (
        "line numbers count quoted line breaks",
        lambda s: _csv(s, _lines((2, 'u_b,"B0\n02",5,100'), (4, "u_b,B010,3,x"))) or [],
        "{src}/interactions.csv:5: column 'ts': expected a number (Unix time) like "
        "the first value '100', got 'x'",
    ),
    (
        "not UTF-8",
        lambda s: [
            (s / "interactions.csv").write_bytes(
                _lines().encode().replace(b"u_c,B001", b"u_\xe9,B001")
            )
        ][1:],
        "{src}/interactions.csv:6: not UTF-8 text (invalid "
        "continuation byte at byte 2 of the line)",
    ),
    ("empty file", lambda s: _csv(s, "") or [], "{src}/interactions.csv: empty file"),
    (
        "header only",
        lambda s: _csv(s, HEADER) or [],
        "{src}/interactions.csv: no rows after the header",
    ),
    (
        "nonexistent path",
        lambda s: ["--from", str(s / "nope.csv")],
        "--from {src}/nope.csv: no such file or directory",
    ),
    (
        "unknown extension",
        lambda s: _csv(s, _lines(), "data.txt") or ["--from", str(s / "data.txt")],
        "{src}/data.txt: cannot tell the format from the extension '.txt'; name it with "
        "--format (atomic, csv, tsv, parquet)",
    ),
    (
        "duplicate header name",
        lambda s: _csv(s, "user,item,item,ts\nu,a,b,1\n") or [],
        "{src}/interactions.csv:1: column name 'item' appears twice in the header",
    ),
    (
        "emptied by the filters",
        lambda s: _csv(s, _lines()) or ["--min-item-interactions", "4"],
        "shop: the dataset is empty after filtering: the item filter (>= 4 interactions per item) "
        "in k-core round 1 left no interactions",
    ),
    (
        "threshold without ratings",
        lambda s: _csv(s, "user,item,ts\na,b,1\n") or ["--rating-threshold", "3"],
        "--rating-threshold needs ratings, and {src}/interactions.csv has no "
        "column 'rating' (set --rating-col)",
    ),
    (
        "items table lacks rated items",
        lambda s: (
            (_csv(s, _lines()), _csv(s, "item_id,title\nB001,x\nB003,y\n", "items.csv"))
            and ["--items", str(s / "items.csv")]
        ),
        "{src}/items.csv: 2 rated item(s) of {src}/interactions.csv have no row here, e.g. "
        "['B002', 'B010'] (add them, or pass --allow-missing-items for empty text)",
    ),
    (
        "duplicate item id",
        lambda s: (
            (
                _csv(s, _lines()),
                _csv(s, "item_id,title\nB001,x\nB002,y\nB010,z\nB001,w\nB003,v\n", "items.csv"),
            )
            and ["--items", str(s / "items.csv")]
        ),
        "{src}/items.csv:5: column 'item_id': item id 'B001' appears again (first on line 2)",
    ),
    (
        "items id column missing",
        lambda s: (
            (_csv(s, _lines()), _csv(s, "asin,title\nB001,x\n", "items.csv"))
            and ["--items", str(s / "items.csv")]
        ),
        "{src}/items.csv: no column 'item' (set --item-id-col); its columns are: asin, title",
    ),
    (
        "text column missing",
        lambda s: (
            (_csv(s, _lines()), _csv(s, "item_id,title\nB001,x\n", "items.csv"))
            and ["--items", str(s / "items.csv"), "--text-cols", "title,description"]
        ),
        "{src}/items.csv: no column 'description' (set --text-cols); "
        "its columns are: item_id, title",
    ),
]


@pytest.mark.parametrize(("what", "damage", "message"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_csv_input(tmp_path, capsys, what, damage, message):
    src = tmp_path / "src"
    src.mkdir()
    extra = damage(src)
    args = ["--from", str(src / "interactions.csv")] if "--from" not in extra else []
    code, out, err = run_cli(
        ["prepare", "shop", *args, *CSV_ARGS, *extra, *roots(tmp_path)], capsys
    )
    assert code == 2, out
    assert err == f"error: {message.format(src=src)}\n"
    assert not (tmp_path / "data").exists()  # no processed directory, no temporary one


def _atomic(s, inter_header=None, inter_lines=None, item_text=None):
    write_atomic(s, "shop")
    if inter_header is not None:
        lines = (s / "shop.inter").read_text().splitlines()
        lines[0] = inter_header
        (s / "shop.inter").write_text("\n".join(lines) + "\n")
    for number, text in inter_lines or []:
        _replace_line(s / "shop.inter", number, text)
    if item_text is not None:
        (s / "shop.item").write_text(item_text)


BAD_ATOMIC = [
    (
        "column without a type",
        lambda s: _atomic(s, "user_id\titem_id:token\trating:float\ttimestamp:float"),
        "{src}/shop.inter:1: column 1 'user_id' has no type; a RecBole atomic header names every "
        "column name:type, type one of token, token_seq, float, float_seq",
    ),
    (
        "unknown type",
        lambda s: _atomic(s, "user_id:token\titem_id:token\trating:int\ttimestamp:float"),
        "{src}/shop.inter:1: column 3 'rating:int' has the unknown type 'int'; RecBole's types are "
        "token, token_seq, float, float_seq",
    ),
    (
        "id of the wrong type",
        lambda s: _atomic(s, "user_id:float\titem_id:token\trating:float\ttimestamp:float"),
        "{src}/shop.inter:1: column 'user_id:float' is float, expected token for --user-col",
    ),
    (
        "ragged line",
        lambda s: _atomic(s, inter_lines=[(4, "u_b\tB010\t3")]),
        "{src}/shop.inter:4: expected 4 tab-separated fields as in the "
        "header, got 3: 'u_b\\tB010\\t3'",
    ),
    (
        "bad timestamp",
        lambda s: _atomic(s, inter_lines=[(9, "u_c\tB002\t3\t20s")]),
        "{src}/shop.inter:9: column 'timestamp': expected a number (Unix time) like "
        "the first value '100', got '20s'",
    ),
    (
        "bad item header",
        lambda s: _atomic(s, item_text="item_id:token\ttitle\nB001\tx\n"),
        "{src}/shop.item:1: column 2 'title' has no type; a RecBole atomic header names every "
        "column name:type, type one of token, token_seq, float, float_seq",
    ),
    ("empty .item", lambda s: _atomic(s, item_text=""), "{src}/shop.item: empty file"),
    (
        "no NAME.inter",
        lambda s: write_atomic(s, "other") and None,
        "{src}: no shop.inter (RecBole atomic files are named after the dataset); found "
        "other.inter (the file name must be the dataset name)",
    ),
]


@pytest.mark.parametrize(("what", "damage", "message"), BAD_ATOMIC, ids=[b[0] for b in BAD_ATOMIC])
def test_bad_atomic_input(tmp_path, capsys, what, damage, message):
    src = tmp_path / "src"
    src.mkdir()
    damage(src)
    code, out, err = run_cli(["prepare", "shop", "--from", str(src), *roots(tmp_path)], capsys)
    assert code == 2, out
    assert err == f"error: {message.format(src=src)}\n"
    assert not (tmp_path / "data").exists()


def test_bad_parquet_input_names_the_row(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"user": ["a", "b", None], "item": ["x", "y", "z"]}), src / "r.parquet")
    code, _, err = run_cli(
        [
            "prepare",
            "shop",
            "--from",
            str(src / "r.parquet"),
            "--user-col",
            "user",
            "--item-col",
            "item",
            *roots(tmp_path),
        ],
        capsys,
    )
    assert (code, err) == (2, f"error: {src}/r.parquet: row 3: column 'user': empty user id\n")
    pq.write_table(pa.table({"user_id": [1.0, 2.0], "item_id": ["x", "y"]}), src / "f.parquet")
    code, _, err = run_cli(
        ["prepare", "shop", "--from", str(src / "f.parquet"), *roots(tmp_path)], capsys
    )
    assert (code, err) == (
        2,
        f"error: {src}/f.parquet: column 'user_id' holds double values; user ids must be "
        "integers or strings\n",
    )
    (src / "bad.parquet").write_text("not parquet")
    code, _, err = run_cli(
        ["prepare", "shop", "--from", str(src / "bad.parquet"), *roots(tmp_path)], capsys
    )
    assert code == 2 and err.startswith(f"error: {src}/bad.parquet: not a Parquet file (")
    assert len(err.splitlines()) == 1 and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["prepare", "mine"],
            "unknown dataset 'mine'; known datasets: ml-100k, ml-1m; for your own data: "
            "recdata prepare mine --from PATH ... (docs/data.md)",
        ),
        (
            ["prepare", "ml-1m", "--from", "x", "--user-col", "u", "--text-cols", "t"],
            "--user-col, --text-cols: only for your own data; ml-1m is built in (prepare your copy "
            "under another name to read it your way)",
        ),
        (
            ["prepare", "../x", "--from", "x.csv"],
            "dataset name '../x' must be letters, digits, '.', '_' or '-' "
            "(it names a directory), starting with a letter or digit",
        ),
        (
            ["prepare", "mine", "--from", "x.csv", "--min-user-interactions", "1"],
            "--min-user-interactions must be >= 3 (leave-one-out needs a train, a valid "
            "and a test item per user), got 1",
        ),
        (
            ["stats", "mine"],
            "is not a prepared dataset (no meta.json); run `recdata prepare <dataset>`",
        ),
    ],
)
def test_usage_errors_for_ones_own_data(tmp_path, capsys, args, message):
    code, _, err = run_cli([*args, *roots(tmp_path)], capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_prepare_never_imports_torch():
    """`recdata prepare` stays torch-free (~5 s and ~600 MiB saved), generic readers included."""
    import subprocess
    import sys

    code = (
        "import sys, recdata.cli, recdata.custom, recdata.synthetic; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
