"""Filters: k-core to a fixed point with per-round reports, duplicates, rating threshold; the same
options on the built-in datasets, whose defaults leave meta.json as it always was."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from recdata_testkit import write_ml1m

from recdata.custom import CustomSource, build_custom_contract
from recdata.errors import DataError, UserError
from recdata.filters import Filters, apply_filters
from recdata.prepare import build_contract
from recdata.sources import dataset_spec

# u5 loses g (1 rating) then goes (2 left); u4 loses f then goes; then d and e have 1 each.
KCORE = {"u1": "abcd", "u2": "abc", "u3": "abce", "u4": "def", "u5": "afg"}


def _write(path, rows, header="user,item,ts,rating"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _kcore_csv(tmp_path):
    rows = [(u, i, t, 5) for u, items in KCORE.items() for t, i in enumerate(items)]
    return _write(tmp_path / "k.csv", rows)


def _prepare(path, out, **filters):
    source = CustomSource(path, user_col="user", item_col="item", time_col="ts")
    return build_custom_contract("k", source, out, Filters(**filters))


def test_k_core_iterates_to_a_fixed_point_and_reports_each_round(tmp_path):
    meta = _prepare(_kcore_csv(tmp_path), tmp_path / "out", min_item_interactions=2)
    assert meta["filters"]["k_core_rounds"] == [
        {"users": 1, "items": 1, "interactions": 3},  # g, then u5 (a f left)
        {"users": 1, "items": 1, "interactions": 3},  # f, then u4 (d e left)
        {"users": 0, "items": 2, "interactions": 2},  # d and e (one rating each now)
    ]
    seqs = pq.read_table(tmp_path / "out" / "sequences.parquet")
    assert seqs.column("raw_user_id").to_pylist() == ["u1", "u2", "u3"]
    assert seqs.column("item_ids").to_pylist() == [[1, 2, 3]] * 3
    assert pq.read_table(tmp_path / "out" / "items.parquet").column("raw_id").to_pylist() == [
        "a",
        "b",
        "c",
    ]
    assert meta["counts"] == {
        "users": 3,
        "items": 3,
        "interactions": 9,
        "raw_interactions": 17,
        "dropped_users": 2,
        "dropped_interactions": 8,
        "raw_items": 7,
        "dropped_items": 4,
    }


def test_k_core_with_the_defaults_is_one_user_pass(tmp_path):
    meta = _prepare(_kcore_csv(tmp_path), tmp_path / "out")
    assert meta["filters"]["k_core_rounds"] == []  # every user has 3+ and every item 1+
    assert meta["counts"]["interactions"] == 17


DUPES = [
    ("u1", "a", 3, 5),
    ("u1", "a", 1, 1),
    ("u1", "b", 2, 2),
    ("u1", "c", 4, 3),
    ("u1", "a", 3, 4),
    ("u2", "x", 1, 5),
    ("u2", "y", 2, 5),
    ("u2", "z", 3, 5),
]


@pytest.mark.parametrize(
    ("keep", "items", "ratings", "dropped"),
    [
        (
            "keep-all",
            [1, 2, 1, 1, 3],
            [1, 2, 5, 4, 3],
            0,
        ),  # a(t1) b(t2) a(t3) a(t3, later line) c(t4)
        ("keep-first", [1, 2, 3], [1, 2, 3], 2),  # the chronologically first a: t1
        ("keep-last", [2, 1, 3], [2, 4, 3], 2),  # the last a: t3 on the later line
    ],
)
def test_duplicates(tmp_path, keep, items, ratings, dropped):
    meta = _prepare(_write(tmp_path / "d.csv", DUPES), tmp_path / "out", duplicates=keep)
    seqs = pq.read_table(tmp_path / "out" / "sequences.parquet")
    assert seqs.column("item_ids").to_pylist()[0] == items
    assert seqs.column("ratings").to_pylist()[0] == ratings
    assert meta["filters"]["dropped"]["duplicates"] == dropped
    assert meta["filters"]["duplicates"] == keep


def test_rating_threshold(tmp_path):
    rows = [("u1", i, t, r) for t, (i, r) in enumerate(zip("abcde", [5, 1, 4, 3, 2], strict=True))]
    meta = _prepare(_write(tmp_path / "r.csv", rows), tmp_path / "out", rating_threshold=3)
    seqs = pq.read_table(tmp_path / "out" / "sequences.parquet")
    assert seqs.column("item_ids").to_pylist() == [[1, 2, 3]]  # a c d -> dense 1 2 3
    assert seqs.column("ratings").to_pylist() == [[5, 4, 3]]
    assert meta["filters"]["dropped"]["rating_threshold"] == 2
    assert meta["filters"]["rating_threshold"] == 3


def test_apply_filters_keeps_file_order_of_the_rows():
    users, items = np.array([1, 0, 1, 0, 0, 1]), np.array([0, 1, 2, 0, 2, 1])
    rows, report = apply_filters(
        users, items, np.zeros(6, np.int64), np.ones(6, np.float32), Filters(), "x"
    )
    assert rows.tolist() == [0, 1, 2, 3, 4, 5] and report.rounds == []


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            {"min_user_interactions": 2},
            "--min-user-interactions must be >= 3 (leave-one-out needs a train, "
            "a valid and a test item per user), got 2",
        ),
        ({"min_item_interactions": 0}, "--min-item-interactions must be >= 1, got 0"),
        (
            {"duplicates": "first"},
            "--duplicates must be one of keep-all, keep-first, keep-last, got 'first'",
        ),
        ({"rating_threshold": float("nan")}, "--rating-threshold must be a finite number, got nan"),
    ],
)
def test_bad_filter_values(filters, message):
    with pytest.raises(UserError) as info:
        Filters(**filters)
    assert str(info.value) == message


def test_built_in_dataset_takes_the_filters_and_reports_them_only_when_used(tmp_path):
    raw = write_ml1m(tmp_path / "raw")
    plain = build_contract(dataset_spec("ml-1m"), raw, tmp_path / "plain")
    assert plain["filters"] == {"min_user_interactions": 3}  # unchanged meta.json for the defaults
    meta = build_contract(
        dataset_spec("ml-1m"), raw, tmp_path / "out", filters=Filters(rating_threshold=3)
    )
    # ratings below 3: (5,21,2) (5,30,1) (9,42,2) (14,3,1) (14,7,2); raw user 14 is then gone
    assert meta["filters"] == {
        "min_user_interactions": 3,
        "min_item_interactions": 1,
        "duplicates": "keep-all",
        "rating_threshold": 3,
        "dropped": {"rating_threshold": 5, "duplicates": 0},
        "k_core_rounds": [],
    }
    assert (meta["counts"]["users"], meta["counts"]["items"], meta["counts"]["interactions"]) == (
        3,
        6,
        11,
    )
    assert meta["counts"]["dropped_users"] == 1 and meta["fingerprint"] != plain["fingerprint"]
    seqs = pq.read_table(tmp_path / "out" / "sequences.parquet")
    assert min(min(r) for r in seqs.column("ratings").to_pylist()) == 3


def test_emptied_by_a_filter_says_which(tmp_path):
    path = _kcore_csv(tmp_path)
    with pytest.raises(
        DataError,
        match=r"^k: no user has at least 9 interactions; the dataset is empty after filtering$",
    ):
        _prepare(path, tmp_path / "out", min_user_interactions=9)
    with pytest.raises(
        DataError,
        match=r"^k: the dataset is empty after filtering: the item filter \(>= 9 "
        r"interactions per item\) in k-core round 1 left no interactions$",
    ):
        _prepare(path, tmp_path / "out", min_item_interactions=9)
    with pytest.raises(
        DataError,
        match=r"^k: the dataset is empty after filtering: the user filter \(>= 4 "
        r"interactions per user\) in k-core round 1 left no interactions$",
    ):
        _prepare(path, tmp_path / "out", min_user_interactions=4, min_item_interactions=3)
    with pytest.raises(
        DataError,
        match=r"^k: no interaction has a rating >= 6 \(ratings are 5\.\.5\); the "
        r"dataset is empty after the rating threshold$",
    ):
        _prepare(path, tmp_path / "out", rating_threshold=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.csv"]
