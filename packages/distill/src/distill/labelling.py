"""What one teacher batch row is when labelling training keys, one home for precompute-soft-labels
(which scores with a loaded teacher) and the teacher-service client (which asks the service):

- :class:`PrefixUnits` (a prefix-mode teacher): one unit per key, its prefix items[:position];
- :class:`WindowUnits` (a sequence-mode teacher): the user windows of a :class:`WindowPlan` that
  read out the keys, longest first so a batch pads little; one causal pass reads out every
  selected key of a window.

Both label units lo..hi and return (user_ids, positions, topk_items, topk_scores) rows; the same
units in the same batches give the same labels either way (bitwise when the service runs the same
batches).
"""

from __future__ import annotations

import torch

from recdata.batching import SequenceStore
from recdata.datamodule import SplitDataset, WindowTrainDataset
from recdata.errors import UserError
from recdata.splits import SampleKeys
from recdata.windows import plan_windows

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class PrefixUnits:
    name = "prefixes"

    def __init__(
        self, store: SequenceStore, keys: SampleKeys, width: int, never: torch.Tensor | None = None
    ):
        self.keys, self.never = keys, never
        self.dataset = SplitDataset(store, keys, width, with_full_history=True)

    def __len__(self) -> int:
        return len(self.keys)

    def _batch(self, lo: int, hi: int) -> dict[str, torch.Tensor]:
        return self.dataset.__getitems__(list(range(lo, hi)))

    def score(self, teacher, lo: int, hi: int, k: int, mask_history: bool, device) -> Rows:
        from ilora.inference import topk_with_history_masked

        batch = self._batch(lo, hi)
        with torch.no_grad():
            scores = teacher(batch["history"].to(device)).cpu()
        items, values = topk_with_history_masked(
            scores, batch["full_history"] if mask_history else None, k, self.never
        )
        return batch["user_id"], batch["position"], items, values

    def fetch(self, client, lo: int, hi: int, k: int, mask_history: bool) -> Rows:
        """The whole prefix of each key (the service truncates it to its window and excludes it)."""
        full = self._batch(lo, hi)["full_history"]
        histories = [row[row > 0].tolist() for row in full]
        if any(not h for h in histories):
            raise UserError(
                "a sample has an empty history; the teacher service needs at least one item"
            )
        items, values = client.topk(histories, k, mask_history)
        return self.keys.user_ids[lo:hi], self.keys.positions[lo:hi], items, values


class WindowUnits:
    name = "windows"

    def __init__(
        self,
        store: SequenceStore,
        train_keys: SampleKeys,
        keys: SampleKeys,
        width: int,
        stride: int | None,
        never: torch.Tensor | None = None,
    ):
        """Windows of `width` items (consecutive ones `stride` apart) over every training prefix,
        keeping those that read out at least one of `keys`."""
        plan = plan_windows(train_keys, width, stride)
        if len(keys) != len(train_keys):
            plan = plan.holding(keys, store.starts, len(store.items))
        self.store, self.plan = store, plan.longest_first()
        self.dataset = WindowTrainDataset(store, self.plan, keys)
        self.wanted = keys.flat_mask(store.starts, len(store.items))
        self.never = never

    def __len__(self) -> int:
        return len(self.plan)

    def _prefixes(self, users: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Each window's whole prefix items[:end] (left-padded): a key's history may start before
        its window."""
        return self.store.window(users, ends, max(int(ends.max()), 1))

    def score(self, teacher, lo: int, hi: int, k: int, mask_history: bool, device) -> Rows:
        from ilora.inference import window_topk

        batch = self.dataset.__getitems__(list(range(lo, hi)))
        read = batch["targets"] > 0
        full = (
            self._prefixes(batch["user_id"], batch["target_positions"].amax(1))
            if mask_history
            else None
        )
        rows, positions, items, values = window_topk(
            teacher,
            batch["history"],
            read,
            batch["target_positions"],
            full,
            k,
            device,
            never=self.never,
        )
        return batch["user_id"][rows], positions, items, values

    def fetch(self, client, lo: int, hi: int, k: int, mask_history: bool) -> Rows:
        """The windows' prefixes and first keys to /topk_windows; only the selected keys are
        kept."""
        users, ends = self.plan.user_ids[lo:hi], self.plan.ends[lo:hi]
        full = self._prefixes(users, ends)
        answers = client.topk_windows(
            [row[row > 0].tolist() for row in full],
            self.plan.first_positions[lo:hi].tolist(),
            k,
            mask_history,
        )
        columns: list[list[torch.Tensor]] = [[], [], [], []]
        for user, answer in zip(users.tolist(), answers, strict=True):
            p = torch.tensor(answer["positions"], dtype=torch.int64)
            keep = self.wanted[self.store.starts[user] + p]
            columns[0].append(torch.full((int(keep.sum()),), user, dtype=torch.int64))
            columns[1].append(p[keep])
            columns[2].append(
                torch.tensor(answer["topk_items"], dtype=torch.int64).reshape(-1, k)[keep]
            )
            columns[3].append(
                torch.tensor(answer["topk_scores"], dtype=torch.float64)
                .float()
                .reshape(-1, k)[keep]
            )
        return tuple(torch.cat(c) for c in columns)  # type: ignore[return-value]


def labelling_units(
    store: SequenceStore,
    train_keys: SampleKeys,
    keys: SampleKeys,
    *,
    sequence_mode: bool,
    width: int,
    stride: int | None = None,
    never: torch.Tensor | None = None,
) -> PrefixUnits | WindowUnits:
    """The units that label `keys` with a teacher of this mode and window (`width` items); the
    `never` items ((N+1,) bool) are never in a label (the cold-item protocol's)."""
    if sequence_mode:
        return WindowUnits(store, train_keys, keys, width, stride, never)
    return PrefixUnits(store, keys, width, never)
