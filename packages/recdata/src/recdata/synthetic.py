"""Synthetic interaction data with known structure, in every input format `recdata prepare` reads.

The data is made up (no real users or items), generated with numpy in a few vectorised passes
(10M interactions in seconds), deterministic for a seed. Its structure:

* items belong to latent clusters (about one per 50 items, 2..200), every cluster non-empty;
* item popularity is Zipf-like: weight 1 / rank^alpha over a random ranking of the items, so a
  few items take most interactions and most items are rare;
* each user prefers three clusters (Dirichlet weights). A sequence is a chain of clusters: each
  step stays in the current cluster, or with probability `switch` moves to one of the user's
  preferred clusters; with probability `explore` a single step visits a uniformly random
  cluster instead. The item is drawn from the step's cluster by popularity. So the next item
  tends to share a cluster with the recent ones, which a sequential model can learn;
* every user has at least 3 interactions (leave-one-out needs 3); lengths are 3 plus a
  log-normal share of the rest, so they are skewed like real logs;
* ratings 1..5 are higher in the user's favourite cluster and lower on exploration steps;
* timestamps: each user starts within two years after 2020-09-13 and the gaps are exponential
  (mean one day), whole seconds, so ties occur. The file lists interactions in time order,
  users interleaved, as a log would; without time the order within each user is kept;
* item text: a title of three made-up words, two from the cluster's six topic words and one
  from the whole vocabulary, and one category word per cluster; so the text says which
  cluster an item is in, the preference structure users follow.

`generate(...)` returns a SyntheticData whose writers produce RecBole atomic files, CSV (+
items.csv) or Parquet (+ items.parquet) with the same content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

T0 = 1_600_000_000  # 2020-09-13, seconds
SPAN = 2 * 365 * 86_400
PREFERRED = 3  # clusters per user
TOPIC_WORDS = 6  # words per cluster


@dataclass
class SyntheticData:
    """Interactions in file order, with the latent structure that generated them."""

    users: np.ndarray  # int64 user index 0..U-1 of each interaction
    items: np.ndarray  # int64 item index 0..I-1
    ratings: np.ndarray  # float32 1..5
    timestamps: np.ndarray | None  # int64 seconds; None: the file order is the order
    item_cluster: np.ndarray  # int64 (I,)
    user_clusters: np.ndarray  # int64 (U, 3) preferred clusters, favourite first
    step_cluster: np.ndarray  # int64 cluster of each interaction's step
    titles: pa.Array | None  # string (I,)
    categories: pa.Array | None  # string (I,), one word
    id_style: str = "int"

    @property
    def num_users(self) -> int:
        return len(self.user_clusters)

    @property
    def num_items(self) -> int:
        return len(self.item_cluster)

    def user_ids(self) -> pa.Array:
        """Raw user ids: 1..U, or "u_<n>" strings."""
        return _ids(np.arange(self.num_users), "u_", self.id_style, width=0)

    def item_ids(self) -> pa.Array:
        """Raw item ids: 1..I, or ASIN-like "B<9 digits>" strings in no particular order."""
        if self.id_style == "int":
            return pa.array(np.arange(1, self.num_items + 1, dtype=np.int64))
        codes = np.random.default_rng(len(self.item_cluster)).choice(
            10**9, self.num_items, replace=False
        )
        return _ids(codes - 1, "B", "str", width=9)

    def interactions_table(self) -> pa.Table:
        columns = {
            "user_id": self.user_ids().take(pa.array(self.users)),
            "item_id": self.item_ids().take(pa.array(self.items)),
            "rating": pa.array(self.ratings),
        }
        if self.timestamps is not None:
            columns["timestamp"] = pa.array(self.timestamps)
        return pa.table(columns)

    def items_table(self) -> pa.Table:
        columns = {"item_id": self.item_ids()}
        if self.titles is not None:
            columns |= {"title": self.titles, "categories": self.categories}
        return pa.table(columns)

    # --- writers -------------------------------------------------------------------------------

    def write_atomic(self, directory: Path, name: str) -> Path:
        """NAME.inter and NAME.item (RecBole atomic files) in `directory`; returns the .inter."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        inter = self.interactions_table()
        types = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
        _write_tsv(
            inter, [f"{c}:{types[c]}" for c in inter.column_names], directory / f"{name}.inter"
        )
        items = self.items_table()
        _write_tsv(
            items,
            [f"{c}:{'token' if c == 'item_id' else 'token_seq'}" for c in items.column_names],
            directory / f"{name}.item",
        )
        return directory / f"{name}.inter"

    def write_csv(self, directory: Path) -> tuple[Path, Path]:
        """interactions.csv and items.csv in `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = directory / "interactions.csv", directory / "items.csv"
        pa_csv.write_csv(self.interactions_table(), paths[0])
        pa_csv.write_csv(self.items_table(), paths[1])
        return paths

    def write_parquet(self, directory: Path) -> tuple[Path, Path]:
        """interactions.parquet and items.parquet (categories as a list column) in `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = directory / "interactions.parquet", directory / "items.parquet"
        pq.write_table(self.interactions_table(), paths[0])
        items = self.items_table()
        if "categories" in items.column_names:
            one = items.column("categories").combine_chunks()
            offsets = pa.array(np.arange(len(one) + 1, dtype=np.int32))
            items = items.set_column(2, "categories", pa.ListArray.from_arrays(offsets, one))
        pq.write_table(items, paths[1])
        return paths


def _ids(index: np.ndarray, prefix: str, style: str, width: int) -> pa.Array:
    numbers = pa.array(index.astype(np.int64) + 1)
    if style == "int":
        return numbers
    text = numbers.cast(pa.string())
    if width:
        text = pc.utf8_lpad(text, width, "0")
    return pc.binary_join_element_wise(prefix, text, "")


def _write_tsv(table: pa.Table, header: list[str], path: Path) -> None:
    # pyarrow quotes header names; RecBole's typed header is written as is
    with open(path, "wb") as handle:
        handle.write(("\t".join(header) + "\n").encode())
        pa_csv.write_csv(
            table,
            handle,
            pa_csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"),
        )


# --- generation ---------------------------------------------------------------------------------


def generate(
    num_users: int,
    num_items: int,
    num_interactions: int,
    seed: int = 0,
    *,
    with_text: bool = True,
    with_time: bool = True,
    id_style: str = "int",
    alpha: float = 1.0,
    switch: float = 0.2,
    explore: float = 0.1,
) -> SyntheticData:
    """Synthetic interactions with the structure described in the module docstring."""
    if id_style not in ("int", "str"):
        raise ValueError(f"id_style must be 'int' or 'str', got {id_style!r}")
    if num_interactions < 3 * num_users:
        raise ValueError(f"{num_interactions} interactions cannot give {num_users} users 3 each")
    if num_items < 2:
        raise ValueError("need at least 2 items")
    rng = np.random.default_rng(seed)
    k = int(np.clip(num_items // 50, 2, 200))
    item_cluster = rng.permutation(np.arange(num_items) % k)  # every cluster has items
    popularity = 1.0 / (rng.permutation(num_items) + 1.0) ** alpha
    preferred = _preferred_clusters(rng, num_users, k)
    weights = rng.dirichlet(np.ones(PREFERRED), size=num_users)

    lengths = _lengths(rng, num_users, num_interactions)
    users = np.repeat(np.arange(num_users, dtype=np.int64), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    step_cluster = _cluster_chain(rng, users, starts, preferred, weights, switch)
    explored = rng.random(len(users)) < explore
    step_cluster[explored] = rng.integers(k, size=int(explored.sum()))
    items = _draw_items(rng, step_cluster, item_cluster, popularity, k)

    ratings = np.where(step_cluster == preferred[users, 0], 4, 3)
    ratings = np.where(explored, 2, ratings) + rng.integers(-1, 2, size=len(users))
    times = _times(rng, lengths, starts, users)
    order = np.argsort(times, kind="stable")  # the file is a log: time order, users interleaved
    titles, categories = _item_text(rng, item_cluster, k) if with_text else (None, None)
    return SyntheticData(
        users=users[order],
        items=items[order],
        ratings=np.clip(ratings, 1, 5).astype(np.float32)[order],
        timestamps=times[order] if with_time else None,
        item_cluster=item_cluster,
        user_clusters=preferred,
        step_cluster=step_cluster[order],
        titles=titles,
        categories=categories,
        id_style=id_style,
    )


def _preferred_clusters(rng: np.random.Generator, num_users: int, k: int) -> np.ndarray:
    """Three distinct clusters per user (fewer clusters than three: repeats)."""
    if k < PREFERRED:
        return rng.integers(k, size=(num_users, PREFERRED))
    first = rng.integers(k, size=num_users)
    second = (first + rng.integers(1, k, size=num_users)) % k
    third = rng.integers(k, size=num_users)
    clash = (third == first) | (third == second)
    while clash.any():  # few users, few rounds
        third[clash] = rng.integers(k, size=int(clash.sum()))
        clash = (third == first) | (third == second)
    return np.stack([first, second, third], axis=1)


def _lengths(rng: np.random.Generator, num_users: int, num_interactions: int) -> np.ndarray:
    share = rng.lognormal(0.0, 1.0, size=num_users)
    extra = rng.multinomial(num_interactions - 3 * num_users, share / share.sum())
    return 3 + extra


def _cluster_chain(rng, users, starts, preferred, weights, switch) -> np.ndarray:
    """Each step's cluster: the last switch point's draw among the user's preferred clusters."""
    n = len(users)
    switches = rng.random(n) < switch
    switches[starts] = True
    at = np.flatnonzero(switches)
    cum = np.cumsum(weights[users[at]], axis=1)
    choice = np.minimum((rng.random(len(at))[:, None] > cum).sum(axis=1), PREFERRED - 1)
    drawn = np.zeros(n, dtype=np.int64)
    drawn[at] = preferred[users[at], choice]
    last_switch = np.maximum.accumulate(np.where(switches, np.arange(n), 0))
    return drawn[last_switch]


def _draw_items(rng, clusters, item_cluster, popularity, k) -> np.ndarray:
    """An item of each step's cluster, by popularity: one searchsorted over per-cluster CDFs
    laid end to end (cluster c spans (c, c + 1])."""
    by_cluster = np.argsort(item_cluster, kind="stable")
    cluster_sorted = item_cluster[by_cluster]
    weight = popularity[by_cluster]
    totals = np.bincount(cluster_sorted, weights=weight, minlength=k)
    cdf = np.cumsum(weight)
    before = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
    cdf = (cdf - before[cluster_sorted]) / totals[cluster_sorted] + cluster_sorted
    last = np.concatenate([cluster_sorted[1:] != cluster_sorted[:-1], [True]])
    cdf[last] = cluster_sorted[last] + 1.0  # no rounding gap at a cluster's end
    pos = np.searchsorted(cdf, clusters + rng.random(len(clusters)), side="right")
    return by_cluster[np.minimum(pos, len(cdf) - 1)].astype(np.int64)


def _times(rng, lengths, starts, users) -> np.ndarray:
    gaps = rng.exponential(86_400.0, size=len(users)).astype(np.int64)
    gaps[starts] = 0
    elapsed = np.cumsum(gaps)
    first = rng.integers(T0, T0 + SPAN, size=len(lengths))
    return first[users] + elapsed - elapsed[starts][users]


_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def _item_text(rng, item_cluster: np.ndarray, k: int) -> tuple[pa.Array, pa.Array]:
    size = max(3 * TOPIC_WORDS * k, 60)
    vocab = sorted({"".join(rng.choice(_SYLLABLES, size=3)) for _ in range(2 * size)})[:size]
    words = pa.array(rng.permutation(vocab))
    # disjoint per cluster
    topic = rng.permutation(len(words))[: TOPIC_WORDS * k].reshape(k, TOPIC_WORDS)
    n = len(item_cluster)
    first = rng.integers(TOPIC_WORDS, size=n)
    second = (
        first + rng.integers(1, TOPIC_WORDS, size=n)
    ) % TOPIC_WORDS  # two different topic words
    picks = [
        topic[item_cluster, first],
        topic[item_cluster, second],
        rng.integers(len(words), size=n),
    ]
    parts = [words.take(pa.array(p)) for p in picks]
    titles = pc.utf8_capitalize(pc.binary_join_element_wise(*parts, " "))
    category = pc.binary_join_element_wise("topic-", words.take(pa.array(topic[:, 0])), "")
    return titles, category.take(pa.array(item_cluster))
