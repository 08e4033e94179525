"""recdata.synthetic: the promised structure, and its files read back by `recdata prepare` the same
in every format."""

from __future__ import annotations

import numpy as np
import pytest

from recdata.contract import load_prepared
from recdata.custom import CustomSource, build_custom_contract
from recdata.synthetic import PREFERRED, TOPIC_WORDS, generate


@pytest.fixture(scope="module")
def data():
    return generate(800, 400, 20_000, seed=3)


def _per_user(d):
    """Interactions in each user's order (file order is time order, stable)."""
    order = np.argsort(d.users, kind="stable")
    return d.users[order], d.items[order], d.step_cluster[order]


def test_counts_lengths_and_determinism(data):
    assert len(data.users) == 20_000 and data.num_users == 800 and data.num_items == 400
    lengths = np.bincount(data.users, minlength=800)
    assert lengths.min() >= 3 and lengths.max() > 3 * np.median(lengths)  # skewed, like real logs
    again = generate(800, 400, 20_000, seed=3)
    for name in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name))
    assert again.titles.equals(data.titles)
    assert not np.array_equal(generate(800, 400, 20_000, seed=4).items, data.items)
    assert np.all(np.diff(data.timestamps) >= 0)  # the file is a log in time order
    assert set(np.unique(data.ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_popularity_is_zipf_like(data):
    counts = np.sort(np.bincount(data.items, minlength=data.num_items))[::-1]
    assert counts[:40].sum() > 0.35 * counts.sum()  # the top 10% of items take over a third
    assert np.median(counts) < counts.mean()


def test_next_item_tends_to_share_the_cluster_and_users_keep_to_their_clusters(data):
    users, items, steps = _per_user(data)
    same_user = users[1:] == users[:-1]
    clusters = data.item_cluster[items]
    np.testing.assert_array_equal(clusters, steps)  # every item is drawn from its step's cluster
    shared = (clusters[1:] == clusters[:-1])[same_user].mean()
    chance = np.sum((np.bincount(clusters) / len(clusters)) ** 2)
    assert shared > 0.6 and chance < 0.2
    preferred = (data.user_clusters[users] == clusters[:, None]).any(axis=1).mean()
    # exploration (10%) is the rest, some of it by chance in a preferred one
    assert preferred > 0.85


def test_text_names_the_cluster(data):
    titles = data.titles.to_pylist()
    categories = data.categories.to_pylist()
    by_cluster: dict[int, set] = {}
    for item, cluster in enumerate(data.item_cluster):
        assert categories[item] == categories[np.flatnonzero(data.item_cluster == cluster)[0]]
        words = titles[item].lower().split()
        assert len(words) == 3 and words[0] != words[1]
        by_cluster.setdefault(int(cluster), set()).update(words[:2])
    # two topic words per title
    assert all(len(words) <= TOPIC_WORDS for words in by_cluster.values())
    assert len(set(categories)) == len(by_cluster)  # one category per cluster
    assert data.user_clusters.shape == (800, PREFERRED)


def test_string_ids():
    d = generate(50, 30, 400, seed=0, id_style="str", with_text=False, with_time=False)
    users, items = d.user_ids().to_pylist(), d.item_ids().to_pylist()
    assert users[:3] == ["u_1", "u_2", "u_3"]
    assert (
        all(len(i) == 10 and i.startswith("B") and i[1:].isdigit() for i in items)
        and len(set(items)) == 30
    )
    assert d.titles is None and d.timestamps is None
    assert d.interactions_table().column_names == ["user_id", "item_id", "rating"]
    assert d.items_table().column_names == ["item_id"]


def test_every_format_prepares_to_the_same_contract(tmp_path):
    d = generate(60, 40, 900, seed=1, id_style="str")
    inter = d.write_atomic(tmp_path / "atomic", "syn")
    csv, csv_items = d.write_csv(tmp_path / "csv")
    parquet, parquet_items = d.write_parquet(tmp_path / "pq")
    metas = [
        build_custom_contract("syn", CustomSource(inter), tmp_path / "a"),
        build_custom_contract("syn", CustomSource(csv, items_path=csv_items), tmp_path / "c"),
        build_custom_contract(
            "syn", CustomSource(parquet, items_path=parquet_items), tmp_path / "p"
        ),
    ]
    assert len({m["fingerprint"] for m in metas}) == 1
    assert metas[0]["item_text"]["columns"] == ["title", "categories"]
    ds = load_prepared(tmp_path / "a")
    assert ds.num_users == 60 and len(ds.items) == 900  # nothing filtered: every user has 3+
    # each user's sequence is the generated one, in time order (ties: file order)
    raw_items = d.item_ids().to_pylist()
    user_of = {raw: k for k, raw in enumerate(d.user_ids().to_pylist())}
    vocab = {raw: k + 1 for k, raw in enumerate(sorted(raw_items))}
    for user in (1, 30, 60):
        k = user_of[ds.user_raw_ids[user - 1]]
        expected = [vocab[raw_items[i]] for i in d.items[d.users == k]]
        assert ds.sequence(user).tolist() == expected
    title = ds.titles[vocab[raw_items[0]]]
    assert title == f"title: {d.titles[0]}; categories: {d.categories[0]}"


def test_bad_arguments():
    with pytest.raises(ValueError, match="cannot give 10 users 3 each"):
        generate(10, 5, 29, seed=0)
    with pytest.raises(ValueError, match="id_style"):
        generate(10, 5, 30, seed=0, id_style="hex")
