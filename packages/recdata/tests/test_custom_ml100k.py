"""Acceptance check of the generic reader: RecBole's own ml-100k.inter/.item prepared as a
dataset of one's own give exactly what `recdata prepare ml-100k` gives, except the item text,
which the built-in path cleans ("Usual Suspects, The" -> "The Usual Suspects") and the generic
one keeps as written."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from recdata.contract import fingerprint, load_prepared
from recdata.custom import CustomSource, build_custom_contract
from recdata.parse import clean_title

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generic(ml100k_raw, tmp_path_factory):
    """The wheel's ml-100k files through the generic atomic path, title/year/genres mapped."""
    out = tmp_path_factory.mktemp("generic") / "ml100k-mine"
    source = CustomSource(
        ml100k_raw / "ml-100k.inter",
        text_cols=("movie_title",),
        year_col="release_year",
        genres_col="class",
    )
    meta = build_custom_contract("ml100k-mine", source, out)
    return meta, out


def test_same_users_items_sequences_and_splits(generic, ml100k_prepared):
    meta, out = generic
    built_in = ml100k_prepared
    # sequences.parquet is the same table: user ids and raw ids, items, timestamps, ratings
    assert pq.read_table(out / "sequences.parquet").equals(
        pq.read_table(built_in.path / "sequences.parquet")
    )
    mine = load_prepared(out)
    np.testing.assert_array_equal(mine.offsets, built_in.offsets)
    np.testing.assert_array_equal(mine.items, built_in.items)
    np.testing.assert_array_equal(mine.timestamps, built_in.timestamps)
    assert mine.user_raw_ids == built_in.user_raw_ids
    assert meta["split"] == built_in.meta["split"]  # train 97171, valid 943, test 943
    for key in (
        "users",
        "items",
        "interactions",
        "raw_interactions",
        "dropped_users",
        "dropped_interactions",
    ):
        assert meta["counts"][key] == built_in.meta["counts"][key], key


def test_only_the_title_cleaning_and_the_unknown_genre_differ(generic, ml100k_prepared):
    meta, out = generic
    mine = pq.read_table(out / "items.parquet").to_pylist()
    theirs = pq.read_table(ml100k_prepared.path / "items.parquet").to_pylist()
    assert [r["item_id"] for r in mine] == [r["item_id"] for r in theirs]
    assert [r["raw_id"] for r in mine] == [r["raw_id"] for r in theirs]
    # titles: as written in the file; the built-in path moves trailing articles (380 titles)
    differ = [
        (m["title"], t["title"])
        for m, t in zip(mine, theirs, strict=True)
        if m["title"] != t["title"]
    ]
    assert len(differ) == 380 and ("Usual Suspects, The", "The Usual Suspects") in differ
    assert all(clean_title(m) == t for m, t in differ)
    assert [r["year"] for r in mine] == [r["year"] for r in theirs]
    # genres: the built-in path drops RecBole's "unknown" class (items 267 and 1373)
    with_unknown = [m["raw_id"] for m in mine if "unknown" in m["genres"]]
    assert with_unknown == ["267", "1373"]
    assert [[g for g in m["genres"] if g != "unknown"] for m in mine] == [
        t["genres"] for t in theirs
    ]
    # the fingerprint differs only through the titles: with cleaned titles it is the built-in one
    ds = load_prepared(out)
    cleaned = [clean_title(m["title"]) for m in mine]
    ratings = np.concatenate(pq.read_table(out / "sequences.parquet").column("ratings").to_pylist())
    assert meta["fingerprint"] != ml100k_prepared.fingerprint
    assert (
        fingerprint(
            [m["raw_id"] for m in mine],
            cleaned,
            ds.user_raw_ids,
            ds.offsets,
            ds.items,
            ds.timestamps,
            ratings,
        )
        == ml100k_prepared.fingerprint
    )
    assert meta["item_text"] == {
        "columns": ["movie_title"],
        "max_chars": 512,
        "items_with_text": 1682,
        "items_without_row": 0,
    }


def test_default_text_is_every_token_column(ml100k_raw, tmp_path):
    meta = build_custom_contract(
        "ml100k-mine", CustomSource(ml100k_raw / "ml-100k.inter"), tmp_path / "out"
    )
    titles = load_prepared(tmp_path / "out").titles
    assert (
        titles[1]
        == "movie_title: Toy Story; release_year: 1995; class: Animation Children's Comedy"
    )
    assert meta["item_text"]["columns"] == ["movie_title", "release_year", "class"]
