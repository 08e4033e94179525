"""prepare: dense ids, chronological sequences with stable ties, filtering, meta, fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from recdata_testkit import (
    CLEAN_TITLES,
    DATASET_OF_LAYOUT,
    ITEM_RAW,
    LAYOUTS,
    MOVIES,
    RATING_SEQS,
    RATINGS,
    SEQUENCES,
    TIMESTAMPS,
    USER_RAW,
    WRITERS,
    write_ml1m,
)

from recdata.contract import ITEMS_SCHEMA, SEQUENCES_SCHEMA, SPLIT_RULE, load_prepared
from recdata.errors import DataError
from recdata.prepare import build_contract
from recdata.sources import dataset_spec


def _prepare(tmp_path, layout="ml-1m", name="out", ratings=RATINGS, movies=MOVIES, **kw):
    raw = WRITERS[layout](tmp_path / f"{name}-raw", ratings, movies)
    out = tmp_path / name
    meta = build_contract(dataset_spec(DATASET_OF_LAYOUT[layout]), raw, out, **kw)
    return meta, out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prepared_contract_values(tmp_path, layout):
    meta, out = _prepare(tmp_path, layout)
    items = pq.read_table(out / "items.parquet")
    seqs = pq.read_table(out / "sequences.parquet")
    assert items.schema.equals(ITEMS_SCHEMA) and seqs.schema.equals(SEQUENCES_SCHEMA)

    # items: dense 1..N in ascending raw-id order; the never-rated movie 50 is not in the vocab
    assert items.column("item_id").to_pylist() == list(range(1, len(ITEM_RAW) + 1))
    assert items.column("raw_id").to_pylist() == [str(r) for r in ITEM_RAW]
    assert items.column("title").to_pylist() == [CLEAN_TITLES[r] for r in ITEM_RAW]
    assert items.column("year").to_pylist() == [MOVIES[r][1] for r in ITEM_RAW]
    assert items.column("genres").to_pylist() == [MOVIES[r][2] for r in ITEM_RAW]

    # sequences: users 1..U by raw id, chronological, timestamp ties in file order
    assert seqs.column("user_id").to_pylist() == [1, 2, 3]
    assert seqs.column("raw_user_id").to_pylist() == [str(u) for u in USER_RAW]
    assert seqs.column("item_ids").to_pylist() == [SEQUENCES[u] for u in (1, 2, 3)]
    assert seqs.column("timestamps").to_pylist() == [TIMESTAMPS[u] for u in (1, 2, 3)]
    assert seqs.column("ratings").to_pylist() == [RATING_SEQS[u] for u in (1, 2, 3)]

    assert meta["counts"] == {
        "users": 3,
        "items": 7,
        "interactions": 14,
        "raw_interactions": 16,
        "dropped_users": 1,
        "dropped_interactions": 2,
    }
    assert meta["filters"] == {"min_user_interactions": 3}
    assert meta["split"] == {"rule": SPLIT_RULE, "samples": {"train": 5, "valid": 3, "test": 3}}
    assert meta["source"]["layout"] == layout
    assert meta["dataset"] == DATASET_OF_LAYOUT[layout]
    assert json.loads((out / "meta.json").read_text()) == meta
    assert len(meta["fingerprint"]) == 64


def test_sequences_are_sorted_and_never_contain_padding(tmp_path, random_prepared):
    ds = random_prepared
    assert ds.items.min() >= 1 and ds.items.max() == ds.num_items  # 0 is never an item
    for user in range(1, ds.num_users + 1):
        times = ds.timestamps[ds.offsets[user - 1] : ds.offsets[user]]
        assert np.all(np.diff(times) >= 0)
    assert ds.lengths.min() >= 3


def test_same_data_in_every_layout_gives_the_same_fingerprint(tmp_path):
    prints = {
        layout: _prepare(tmp_path, layout, name=layout)[0]["fingerprint"] for layout in LAYOUTS
    }
    assert len(set(prints.values())) == 1, prints


def test_fingerprint_is_stable_and_tracks_every_value(tmp_path):
    first, _ = _prepare(tmp_path, name="a")
    second, _ = _prepare(tmp_path, name="b")  # another run, another directory
    assert first["fingerprint"] == second["fingerprint"]

    one_rating = list(RATINGS)
    one_rating[1] = (5, 12, 3, 100)  # rating 4 -> 3, nothing else
    one_stamp = list(RATINGS)
    one_stamp[12] = (9, 12, 5, 601)  # the last timestamp +1 s; the order does not change
    variants = {"rating": one_rating, "timestamp": one_stamp}
    for what, rows in variants.items():
        meta, out = _prepare(tmp_path, name=what, ratings=rows)
        assert meta["fingerprint"] != first["fingerprint"], what
        # the change is only in the value: same sequences of items
        assert load_prepared(out).items.tolist() == load_prepared(tmp_path / "a").items.tolist()

    retitled = dict(MOVIES)
    retitled[42] = ("Heat 2", 1995, ["Action"])
    assert _prepare(tmp_path, name="t", movies=retitled)[0]["fingerprint"] != first["fingerprint"]


def test_min_user_interactions_filter(tmp_path):
    meta, out = _prepare(tmp_path, min_user_interactions=5)
    assert meta["counts"]["users"] == 2  # raw user 2 (4 ratings) and raw user 14 (2) dropped
    assert meta["counts"]["dropped_users"] == 2
    assert meta["counts"]["dropped_interactions"] == 6
    assert meta["filters"]["min_user_interactions"] == 5
    assert load_prepared(out).user_raw_ids == ["5", "9"]


def test_rated_item_without_metadata_is_refused(tmp_path):
    movies = {k: v for k, v in MOVIES.items() if k != 21}
    with pytest.raises(DataError, match=r"items \[21\] are rated but have no metadata"):
        _prepare(tmp_path, movies=movies)
    assert not (tmp_path / "out").exists()


def test_empty_after_filtering_is_refused_and_writes_nothing(tmp_path):
    rows = [(1, 3, 5, 1), (1, 7, 5, 2), (2, 3, 4, 3)]
    with pytest.raises(DataError, match="empty after filtering"):
        _prepare(tmp_path, ratings=rows)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out-raw"]  # no temporary directory left


def test_re_prepare_replaces_the_directory_atomically(tmp_path):
    _, out = _prepare(tmp_path)
    (out / "stale.txt").write_text("from an older run")
    build_contract(dataset_spec("ml-1m"), tmp_path / "out-raw", out)
    assert sorted(p.name for p in out.iterdir()) == [
        "items.parquet",
        "meta.json",
        "sequences.parquet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out-raw"]


def test_load_prepared_round_trip_and_errors(tmp_path):
    meta, out = _prepare(tmp_path)
    ds = load_prepared(out)
    assert ds.fingerprint == meta["fingerprint"] and ds.name == "ml-1m"
    assert (ds.num_users, ds.num_items) == (3, 7)
    assert ds.titles[0] == "" and ds.titles[1:] == [CLEAN_TITLES[r] for r in ITEM_RAW]
    assert ds.offsets.tolist() == [0, 4, 9, 14]
    for user, seq in SEQUENCES.items():
        assert ds.sequence(user).tolist() == seq
    assert ds.timestamps.tolist() == sum((TIMESTAMPS[u] for u in (1, 2, 3)), [])

    with pytest.raises(DataError, match=r"is not a prepared dataset \(no meta.json\)"):
        load_prepared(tmp_path / "out-raw")
    meta["schema_version"] = 99
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        DataError, match=r"schema_version 99 is not 1; re-run `recdata prepare ml-1m`"
    ):
        load_prepared(out)


def test_prepare_is_independent_of_file_order_across_users(tmp_path):
    """Only the order *within* a user (ties) matters; shuffling users' rows changes nothing."""
    base, _ = _prepare(tmp_path, name="a")
    rng = np.random.default_rng(0)
    by_user: dict[int, list] = {}
    for row in RATINGS:
        by_user.setdefault(row[0], []).append(row)
    # interleave users randomly, keeping each user's own row order
    queues = {u: list(rows) for u, rows in by_user.items()}
    shuffled = []
    while queues:
        u = rng.choice(sorted(queues))
        shuffled.append(queues[u].pop(0))
        if not queues[u]:
            del queues[u]
    assert shuffled != RATINGS
    raw = write_ml1m(tmp_path / "s-raw", shuffled)
    meta = build_contract(dataset_spec("ml-1m"), raw, tmp_path / "s")
    assert meta["fingerprint"] == base["fingerprint"]
