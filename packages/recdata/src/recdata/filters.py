"""The interaction filters users expect from RecBole: a rating threshold, duplicate (user, item)
pairs, and minimum interaction counts per user and per item iterated to a fixed point (k-core).

They work on integer codes in file order, vectorised (numpy), and report what each step dropped.
With the defaults (users >= 3, items >= 1, duplicates kept, no threshold) the result is exactly
the single "users with fewer than 3 interactions" pass the MovieLens datasets always had.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recdata.errors import DataError, UserError

DUPLICATES = ("keep-all", "keep-first", "keep-last")
# leave-one-out by time needs a train, a valid and a test item per user
MIN_USER_INTERACTIONS = 3


@dataclass(frozen=True)
class Filters:
    min_user_interactions: int = 3
    min_item_interactions: int = 1
    duplicates: str = "keep-all"
    rating_threshold: float | None = None  # drop ratings below it (implicit feedback)

    def __post_init__(self) -> None:
        if self.min_user_interactions < MIN_USER_INTERACTIONS:
            raise UserError(
                f"--min-user-interactions must be >= {MIN_USER_INTERACTIONS} (leave-one-out needs "
                f"a train, a valid and a test item per user), got {self.min_user_interactions}"
            )
        if self.min_item_interactions < 1:
            raise UserError(
                f"--min-item-interactions must be >= 1, got {self.min_item_interactions}"
            )
        if self.duplicates not in DUPLICATES:
            raise UserError(
                f"--duplicates must be one of {', '.join(DUPLICATES)}, got {self.duplicates!r}"
            )
        if self.rating_threshold is not None and not np.isfinite(self.rating_threshold):
            raise UserError(
                f"--rating-threshold must be a finite number, got {self.rating_threshold}"
            )

    @property
    def only_min_user(self) -> bool:
        """True when nothing but the per-user minimum is asked for (the MovieLens default)."""
        return (self.min_item_interactions, self.duplicates, self.rating_threshold) == (
            1,
            "keep-all",
            None,
        )


@dataclass
class FilterReport:
    raw_interactions: int
    rating_threshold_dropped: int = 0
    duplicates_dropped: int = 0
    # one entry per k-core round that dropped something: users, items, interactions dropped
    rounds: list[dict[str, int]] = field(default_factory=list)

    def meta(self, filters: Filters, *, full: bool = False) -> dict:
        """meta.json `filters`: every filter when `full`, else only the per-user minimum when
        that is all that was asked for, so the MovieLens meta.json stays what it always was."""
        base: dict = {"min_user_interactions": filters.min_user_interactions}
        if filters.only_min_user and not full:
            return base
        return {
            **base,
            "min_item_interactions": filters.min_item_interactions,
            "duplicates": filters.duplicates,
            "rating_threshold": filters.rating_threshold,
            "dropped": {
                "rating_threshold": self.rating_threshold_dropped,
                "duplicates": self.duplicates_dropped,
            },
            "k_core_rounds": self.rounds,
        }


def apply_filters(
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    ratings: np.ndarray,
    filters: Filters,
    name: str,
) -> tuple[np.ndarray, FilterReport]:
    """Row indices (ascending, i.e. file order) of the interactions that pass, and the report.
    `users` and `items` are codes 0..K-1; `times` orders each user's interactions (stable ties)."""
    report = FilterReport(raw_interactions=len(users))
    rows = np.arange(len(users), dtype=np.int64)
    if filters.rating_threshold is not None:
        rows = rows[ratings >= filters.rating_threshold]
        report.rating_threshold_dropped = len(users) - len(rows)
        if len(rows) == 0:
            raise DataError(
                f"{name}: no interaction has a rating >= {filters.rating_threshold:g} (ratings are "
                f"{ratings.min():g}..{ratings.max():g}); the dataset is "
                "empty after the rating threshold"
            )
    if filters.duplicates != "keep-all":
        before = len(rows)
        rows = _drop_duplicates(rows, users, items, times, keep=filters.duplicates)
        report.duplicates_dropped = before - len(rows)
    rows = _k_core(rows, users, items, filters, report, name)
    return rows, report


def _drop_duplicates(rows, users, items, times, keep: str) -> np.ndarray:
    """Keep the chronologically first (or last) of each (user, item) pair, as RecBole does; file
    order breaks time ties."""
    u, i, t = users[rows], items[rows], times[rows]
    order = np.lexsort((t, u))  # stable: chronological per user, ties in file order
    if keep == "keep-last":
        order = order[::-1]
    pair = u[order].astype(np.int64) * (int(items.max()) + 1) + i[order]
    _, first = np.unique(pair, return_index=True)  # index of the first occurrence in `order`
    return np.sort(rows[order[first]])


def _k_core(rows, users, items, filters: Filters, report: FilterReport, name: str) -> np.ndarray:
    """Drop rarely-rated items, then users with too few interactions, until a round drops
    nothing."""
    min_user, min_item = filters.min_user_interactions, filters.min_item_interactions
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    round_no = 0
    while True:
        round_no += 1
        u, i = users[rows], items[rows]
        users_before, items_before, rows_before = (
            _present(u, n_users),
            _present(i, n_items),
            len(rows),
        )
        if min_item > 1:
            rows = rows[np.bincount(i, minlength=n_items)[i] >= min_item]
            _raise_if_empty(
                rows,
                name,
                f"the item filter (>= {min_item} interactions per item) in k-core round {round_no}",
            )
            u = users[rows]
        short = np.bincount(u, minlength=n_users)[u] < min_user
        if short.any():
            rows = rows[~short]
            if len(rows) == 0 and round_no == 1 and min_item == 1:  # the MovieLens wording
                raise DataError(
                    f"{name}: no user has at least {min_user} interactions; the "
                    "dataset is empty after filtering"
                )
            _raise_if_empty(
                rows,
                name,
                f"the user filter (>= {min_user} interactions per user) in k-core round {round_no}",
            )
        if len(rows) == rows_before:
            return rows
        report.rounds.append(
            {
                "users": users_before - _present(users[rows], n_users),
                "items": items_before - _present(items[rows], n_items),
                "interactions": rows_before - len(rows),
            }
        )


def _present(codes: np.ndarray, size: int) -> int:
    return int(np.count_nonzero(np.bincount(codes, minlength=size)))


def _raise_if_empty(rows: np.ndarray, name: str, step: str) -> None:
    if len(rows) == 0:
        raise DataError(
            f"{name}: the dataset is empty after filtering: {step} left no interactions"
        )
