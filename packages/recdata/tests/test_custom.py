"""`recdata prepare NAME --from PATH`: a dataset of one's own read from RecBole atomic files, CSV,
TSV or Parquet into the same contract, values checked one by one (custom_testkit.py)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from custom_testkit import (
    CSV_TITLES,
    ITEM_IDS,
    PARQUET_TITLES,
    RATINGS,
    ROWS,
    SEQUENCES,
    TIMES,
    USERS,
    write_atomic,
    write_csv,
    write_parquet,
)

from recdata.contract import ITEMS_SCHEMA, SEQUENCES_SCHEMA, SPLIT_RULE, load_prepared
from recdata.custom import CustomSource, build_custom_contract, encode_ids, item_text
from recdata.errors import DataError, UserError
from recdata.prepare import ensure_prepared

CSV_OPTIONS = {"user_col": "user", "item_col": "item", "time_col": "ts"}


def _tables(out):
    return pq.read_table(out / "items.parquet"), pq.read_table(out / "sequences.parquet")


def _check_sequences(seqs, times=TIMES):
    assert seqs.schema.equals(SEQUENCES_SCHEMA)
    assert seqs.column("user_id").to_pylist() == [1, 2, 3]
    assert seqs.column("raw_user_id").to_pylist() == USERS
    assert seqs.column("item_ids").to_pylist() == SEQUENCES
    assert seqs.column("timestamps").to_pylist() == times
    assert seqs.column("ratings").to_pylist() == RATINGS


def test_csv_with_an_items_table(tmp_path):
    inter, items = write_csv(tmp_path / "src")
    source = CustomSource(inter, items_path=items, **CSV_OPTIONS)
    meta = build_custom_contract("shop", source, tmp_path / "out")
    item_table, seqs = _tables(tmp_path / "out")
    _check_sequences(seqs)
    assert item_table.schema.equals(ITEMS_SCHEMA)
    assert item_table.column("item_id").to_pylist() == [1, 2, 3, 4]
    assert item_table.column("raw_id").to_pylist() == ITEM_IDS  # B099 never rated: left out
    assert item_table.column("title").to_pylist() == CSV_TITLES  # price (numbers) is not text
    assert item_table.column("year").to_pylist() == [None] * 4
    assert item_table.column("genres").to_pylist() == [[]] * 4

    assert meta["dataset"] == "shop" and meta["schema_version"] == 1
    assert meta["counts"] == {
        "users": 3,
        "items": 4,
        "interactions": 9,
        "raw_interactions": 11,
        "dropped_users": 1,
        "dropped_interactions": 2,
        "raw_items": 4,
        "dropped_items": 0,
    }
    assert meta["filters"] == {
        "min_user_interactions": 3,
        "min_item_interactions": 1,
        "duplicates": "keep-all",
        "rating_threshold": None,
        "dropped": {"rating_threshold": 0, "duplicates": 0},
        "k_core_rounds": [{"users": 1, "items": 0, "interactions": 2}],
    }
    assert meta["split"] == {"rule": SPLIT_RULE, "samples": {"train": 0, "valid": 3, "test": 3}}
    assert meta["order"] == "time column ts (seconds), ties in file order"
    assert meta["item_text"] == {
        "columns": ["title", "categories"],
        "max_chars": 512,
        "items_with_text": 3,
        "items_without_row": 0,
    }
    assert meta["source"]["format"] == "csv"
    assert meta["source"]["columns"] == {
        "user": "user",
        "item": "item",
        "time": "ts",
        "rating": "rating",
    }
    assert list(meta["source"]["files"]) == [str(inter.resolve()), str(items.resolve())]
    assert meta["use"] == ["dataset.name=shop"]
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta
    assert load_prepared(tmp_path / "out").titles == ["", *CSV_TITLES]


def test_tsv_parquet_and_atomic_files_give_the_same_sequences(tmp_path):
    tsv, tsv_items = write_csv(tmp_path / "tsv", sep="\t")
    build_custom_contract(
        "a", CustomSource(tsv, items_path=tsv_items, **CSV_OPTIONS), tmp_path / "tsv-out"
    )
    parquet, parquet_items = write_parquet(tmp_path / "pq")
    build_custom_contract(
        "b", CustomSource(parquet, items_path=parquet_items, **CSV_OPTIONS), tmp_path / "pq-out"
    )
    build_custom_contract(
        "shop", CustomSource(write_atomic(tmp_path / "atomic")), tmp_path / "atomic-out"
    )
    for name in ("tsv-out", "pq-out", "atomic-out"):
        _check_sequences(_tables(tmp_path / name)[1])
    assert _tables(tmp_path / "tsv-out")[0].column("title").to_pylist() == CSV_TITLES
    assert _tables(tmp_path / "pq-out")[0].column("title").to_pylist() == PARQUET_TITLES
    atomic_titles = _tables(tmp_path / "atomic-out")[0].column("title").to_pylist()
    assert atomic_titles == [t.replace("|", " ") for t in CSV_TITLES]  # token_seq: kept as written


def test_atomic_directory_or_inter_file_and_field_options(tmp_path):
    src = write_atomic(tmp_path / "src", name="shop")
    meta = build_custom_contract("other-name", CustomSource(src / "shop.inter"), tmp_path / "out")
    # shop.item found
    assert meta["source"]["format"] == "atomic" and len(meta["source"]["files"]) == 2
    assert meta["source"]["columns"] == {
        "user": "user_id",
        "item": "item_id",
        "time": "timestamp",
        "rating": "rating",
    }
    # another dataset's RecBole field names, no time field: file order
    (src / "clicks.inter").write_text(
        "session:token\tproduct:token\tscore:float\n"
        + "".join(f"{u}\t{i}\t{r}\n" for u, i, r, _ in ROWS)
    )
    meta = build_custom_contract(
        "clicks",
        CustomSource(src, user_col="session", item_col="product", rating_col="score"),
        tmp_path / "fields",
    )
    seqs = pq.read_table(tmp_path / "fields" / "sequences.parquet")
    assert seqs.column("item_ids").to_pylist() == [[1, 2, 4], [2, 4, 1], [1, 2, 3]]
    assert seqs.column("ratings").to_pylist() == [[4, 2, 1], [5, 3, 4], [5, 3, 4]]
    assert meta["source"]["columns"] == {
        "user": "session",
        "item": "product",
        "time": None,
        "rating": "score",
    }
    assert meta["item_text"] is None and len(meta["source"]["files"]) == 1  # no clicks.item
    # atomic item text from one column is the value alone
    build_custom_contract(
        "shop", CustomSource(src, text_cols=("title",), max_text_chars=6), tmp_path / "t"
    )
    titles = pq.read_table(tmp_path / "t" / "items.parquet").column("title").to_pylist()
    assert titles == ["Red", "Blue", "", "Green,"[:5]]  # cut between words to <= 6 characters


def test_file_order_without_a_time_column(tmp_path):
    inter = tmp_path / "clicks.csv"
    inter.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i, _, _ in ROWS))
    meta = build_custom_contract(
        "shop", CustomSource(inter, user_col="user", item_col="item"), tmp_path / "out"
    )
    seqs = pq.read_table(tmp_path / "out" / "sequences.parquet")
    # each user's rows in file order: u_a B001 B002 B010; u_b B002 B010 B001; u_c B001 B002 B003
    assert seqs.column("item_ids").to_pylist() == [[1, 2, 4], [2, 4, 1], [1, 2, 3]]
    assert seqs.column("timestamps").to_pylist() == [[0, 1, 2]] * 3
    assert seqs.column("ratings").to_pylist() == [[1.0] * 3] * 3  # no rating column: 1 each
    assert (
        meta["order"] == "file order (no time column); timestamps are each user's positions 0..L-1"
    )
    assert meta["item_text"] is None and meta["source"]["columns"]["time"] is None
    assert pq.read_table(tmp_path / "out" / "items.parquet").column("title").to_pylist() == [""] * 4


def test_dense_ids_follow_numeric_order_only_when_every_id_is_an_integer():
    vocab, codes = encode_ids(pa.array(["10", "9", "100", "9", "007", "7"]))
    assert vocab.to_pylist() == ["007", "7", "9", "10", "100"]  # equal numbers: by text
    assert codes.tolist() == [3, 2, 4, 2, 0, 1]
    vocab, _ = encode_ids(pa.array(["10", "9", "a", "B"]))
    assert vocab.to_pylist() == ["10", "9", "B", "a"]  # by string (code point) order
    vocab, _ = encode_ids(pa.array(["-3", "2"]))
    assert vocab.to_pylist() == ["-3", "2"]


def test_integer_ids_and_year_genres_mapping(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "r.csv").write_text(
        "uid,iid,when\n"
        + "".join(
            f"{u},{i},{t}\n"
            for u, i, t in [
                (10, 5, 3),
                (9, 20, 1),
                (10, 100, 2),
                (9, 5, 5),
                (9, 100, 4),
                (10, 20, 9),
            ]
        )
    )
    (src / "m.csv").write_text(
        "iid,name,year,genre\n5,Five,1995,Drama|Comedy\n20,Twenty,unknown,\n"
        "100,Hundred,2001,Drama\n"
    )
    source = CustomSource(
        src / "r.csv",
        user_col="uid",
        item_col="iid",
        time_col="when",
        items_path=src / "m.csv",
        year_col="year",
        genres_col="genre",
    )
    meta = build_custom_contract("ints", source, tmp_path / "out")
    items, seqs = _tables(tmp_path / "out")
    assert items.column("raw_id").to_pylist() == ["5", "20", "100"]  # numeric order
    assert items.column("title").to_pylist() == [
        "Five",
        "Twenty",
        "Hundred",
    ]  # year/genre mapped, not text
    assert items.column("year").to_pylist() == [1995, None, 2001]
    assert items.column("genres").to_pylist() == [["Drama", "Comedy"], [], ["Drama"]]
    assert seqs.column("raw_user_id").to_pylist() == ["9", "10"]
    assert seqs.column("item_ids").to_pylist() == [[2, 3, 1], [3, 1, 2]]
    assert meta["item_text"]["columns"] == ["name"]


def test_iso_times_and_quoted_line_breaks(tmp_path):
    path = tmp_path / "r.csv"
    rows = [("a", "x", "2020-01-02"), ("a", "y", "2020-01-01 00:00:01"), ("a", "z", "2020-01-01")]
    path.write_text("user_id,item_id,timestamp\n" + "".join(",".join(r) + "\n" for r in rows))
    items = tmp_path / "items.csv"
    items.write_text('item_id,description\nx,"two\nlines"\ny,plain\nz,"  spaced   out "\n')
    build_custom_contract("iso", CustomSource(path, items_path=items), tmp_path / "out")
    item_table, seqs = _tables(tmp_path / "out")
    assert seqs.column("item_ids").to_pylist() == [[3, 2, 1]]
    assert seqs.column("timestamps").to_pylist() == [[1577836800, 1577836801, 1577923200]]
    assert item_table.column("title").to_pylist() == ["two lines", "plain", "spaced out"]


def test_item_text_joins_columns_and_caps_between_words():
    text = item_text(
        [("title", pa.array(["A b", None, ""])), ("tags", pa.array([["x", "y"], ["z"], []]))], 100
    )
    assert text.to_pylist() == ["title: A b; tags: x, y", "tags: z", ""]
    capped = item_text([("d", pa.array(["one two three", "one two", "abcdefghij", "ab cd"]))], 7)
    assert capped.to_pylist() == ["one two", "one two", "abcdefg", "ab cd"]
    assert item_text([("d", pa.array(["one two, three"]))], 9).to_pylist() == ["one two"]


def test_missing_item_rows_can_be_allowed(tmp_path):
    inter, items = write_csv(tmp_path / "src")
    items.write_text("\n".join(items.read_text().splitlines()[:2]) + "\n")  # B001 only
    source = CustomSource(inter, items_path=items, allow_missing_items=True, **CSV_OPTIONS)
    meta = build_custom_contract("shop", source, tmp_path / "out")
    assert _tables(tmp_path / "out")[0].column("title").to_pylist() == [CSV_TITLES[0], "", "", ""]
    assert meta["item_text"]["items_without_row"] == 3 and meta["item_text"]["items_with_text"] == 1


def test_ensure_prepared_finds_a_custom_dataset_and_names_the_command_otherwise(tmp_path):
    inter, items = write_csv(tmp_path / "src")
    out = tmp_path / "processed" / "shop"
    build_custom_contract("shop", CustomSource(inter, items_path=items, **CSV_OPTIONS), out)
    assert ensure_prepared("shop", tmp_path / "raw", out, tmp_path / "cache") == out
    with pytest.raises(DataError) as info:
        ensure_prepared(
            "mine", tmp_path / "raw", tmp_path / "processed" / "mine", tmp_path / "cache"
        )
    assert str(info.value) == (
        f"{tmp_path / 'processed' / 'mine'}: no prepared dataset 'mine' (no meta.json); prepare "
        "your own data with `recdata prepare mine --from PATH ...` (docs/data.md), or pick a "
        "built-in dataset: ml-100k, ml-1m"
    )
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("name", ["ml-100k", "../up", ".hidden", "a/b", ""])
def test_names_that_cannot_be_a_dataset_of_ones_own(tmp_path, name):
    inter, _ = write_csv(tmp_path / "src")
    with pytest.raises(UserError):
        build_custom_contract(name, CustomSource(inter, **CSV_OPTIONS), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_re_prepare_replaces_the_whole_directory(tmp_path):
    inter, items = write_csv(tmp_path / "src")
    out = tmp_path / "out"
    first = build_custom_contract("shop", CustomSource(inter, items_path=items, **CSV_OPTIONS), out)
    (out / "stale.txt").write_text("old")
    second = build_custom_contract(
        "shop", CustomSource(inter, items_path=items, **CSV_OPTIONS), out
    )
    assert first["fingerprint"] == second["fingerprint"]
    assert sorted(p.name for p in out.iterdir()) == [
        "items.parquet",
        "meta.json",
        "sequences.parquet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_fingerprint_tracks_text(tmp_path):
    inter, items = write_csv(tmp_path / "src")
    a = build_custom_contract(
        "shop", CustomSource(inter, items_path=items, **CSV_OPTIONS), tmp_path / "a"
    )
    b = build_custom_contract(
        "shop",
        CustomSource(inter, items_path=items, text_cols=("title",), **CSV_OPTIONS),
        tmp_path / "b",
    )
    c = build_custom_contract("shop", CustomSource(inter, **CSV_OPTIONS), tmp_path / "c")
    assert len({a["fingerprint"], b["fingerprint"], c["fingerprint"]}) == 3
    ds = load_prepared(tmp_path / "b")
    assert ds.titles == ["", "Red Shoes", "Blue Hat", "", "Green, Scarf"]
    np.testing.assert_array_equal(ds.offsets, [0, 3, 6, 9])


def test_format_option_spaces_around_numbers_and_int_parquet_ids(tmp_path):
    path = tmp_path / "log.txt"  # an extension that says nothing: --format names the format
    path.write_text(
        "user_id\titem_id\trating\ttimestamp\n"
        + "".join(f"{u}\t{i}\t {r} \t{t} \n" for u, i, r, t in ROWS)
    )
    build_custom_contract("log", CustomSource(path, format="tsv"), tmp_path / "out")
    _check_sequences(_tables(tmp_path / "out")[1])
    pq.write_table(
        pa.table({"user_id": [7, 7, 7, 10, 10, 10], "item_id": [3, 1, 2, 2, 30, 3]}),
        tmp_path / "i.parquet",
    )
    build_custom_contract("ints", CustomSource(tmp_path / "i.parquet"), tmp_path / "ints")
    items, seqs = _tables(tmp_path / "ints")
    assert items.column("raw_id").to_pylist() == ["1", "2", "3", "30"]
    assert seqs.column("raw_user_id").to_pylist() == ["7", "10"]
    assert seqs.column("item_ids").to_pylist() == [[3, 1, 2], [2, 4, 3]]
