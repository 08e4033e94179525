"""The one Lightning DataModule every trainer uses."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from recdata.batching import SequenceStore
from recdata.candidates import load_or_draw_candidates
from recdata.cold import check_spec, protocol_view
from recdata.contract import PreparedDataset, load_prepared
from recdata.errors import UserError
from recdata.slices import Slices, sample_slices
from recdata.splits import SampleKeys, check_limit, select_samples, split_keys
from recdata.windows import (
    WindowPlan,
    plan_windows,
    readout_mask,
    readout_positions,
    trim_padding_columns,
)

# What one training row is: a user's whole sequence with a target at every position (SASRec),
# one training prefix, or one window of a WindowPlan that reads out several keys (the LLM teacher).
TRAIN_MODES = ("user_sequences", "prefixes", "windows")
EVAL_ORDERS = ("key", "length")


def _identity(batch):
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), so a run resumed at an epoch boundary
    sees exactly the batches an uninterrupted run would (Lightning calls `set_epoch`)."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


class LengthGroupedSampler(Sampler[int]):
    """Indices ordered so that each consecutive run of ``batch_size`` has similar lengths (padding
    costs a full LLM pass per token). ``shuffle``: like :class:`EpochShuffleSampler` (depends only
    on (seed, epoch)) -- indices are shuffled, cut into groups of ``group`` batches, sorted by
    length within a group, and the batches are shuffled; otherwise longest first, ties by index."""

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        group: int = 32,
    ):
        self.lengths, self.batch_size, self.seed, self.group, self.epoch = (
            lengths,
            batch_size,
            seed,
            group,
            0,
        )
        self.shuffle = shuffle

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        if not self.shuffle:
            return iter(torch.argsort(self.lengths, descending=True, stable=True).tolist())
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        span = self.batch_size * self.group
        groups = [
            g[torch.argsort(self.lengths[g], descending=True, stable=True)]
            for g in order.split(span)
        ]
        batches = torch.cat(groups).split(self.batch_size) if groups else []
        # The DataLoader cuts this order into consecutive runs of batch_size: a short batch in
        # the middle would shift every later run across two of these batches (long and short
        # windows together), so the one short batch (the last group's tail) stays last.
        full = [b for b in batches if len(b) == self.batch_size]
        order = [full[b] for b in torch.randperm(len(full), generator=generator).tolist()]
        order += [b for b in batches if len(b) < self.batch_size]
        return iter(torch.cat(order).tolist() if order else [])


class SplitDataset(Dataset):
    """Samples of one split; `__getitems__` builds a whole batch with tensor ops."""

    def __init__(
        self,
        store: SequenceStore,
        keys: SampleKeys,
        max_seq_len: int,
        candidates: torch.Tensor | None = None,
        with_full_history: bool = False,
    ):
        self.store, self.keys, self.max_seq_len = store, keys, max_seq_len
        self.candidates, self.with_full_history = candidates, with_full_history

    def __len__(self) -> int:
        return len(self.keys)

    def lengths(self) -> torch.Tensor:
        """Items in each sample's history window."""
        return self.keys.positions.clamp(max=self.max_seq_len)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        users, positions = self.keys.user_ids[idx], self.keys.positions[idx]
        batch = {
            "user_id": users,
            "position": positions,
            "history": self.store.window(users, positions, self.max_seq_len),
            "target": self.store.targets(users, positions),
        }
        if self.with_full_history:
            batch["full_history"] = self.store.full_history(users, positions)
        if self.candidates is not None:
            batch["candidates"] = self.candidates[idx]
        return batch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


class UserSequenceDataset(Dataset):
    """One row per user: inputs items[:e] and next-item targets at every position, where e is
    the user's last train position + 1 — the same (prefix, target) pairs as the prefix samples,
    scored in one causal pass."""

    def __init__(self, store: SequenceStore, keys: SampleKeys, max_seq_len: int):
        self.store, self.max_seq_len = store, max_seq_len
        users, inverse = torch.unique_consecutive(keys.user_ids, return_inverse=True)
        last = torch.zeros(len(users), dtype=torch.int64).scatter_reduce_(
            0, inverse, keys.positions, reduce="amax", include_self=False
        )
        self.user_ids, self.ends = users, last  # inputs end before the last train target

    def __len__(self) -> int:
        return len(self.user_ids)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        users, ends = self.user_ids[idx], self.ends[idx]
        inputs = self.store.window(users, ends, self.max_seq_len)
        targets = torch.where(inputs > 0, self.store.window(users, ends + 1, self.max_seq_len), 0)
        # sample key of each column's target: (user_id, position); 0 where there is no target
        offsets = torch.arange(self.max_seq_len - 1, -1, -1)
        positions = torch.where(targets > 0, ends.unsqueeze(1) - offsets, 0)
        return {
            "user_id": users,
            "history": inputs,
            "targets": targets,
            "target_positions": positions,
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


class WindowTrainDataset(Dataset):
    """One row per window of a :class:`WindowPlan`: ``history`` (its input items, left-padded),
    ``targets`` (B, L) -- the item each column's readout predicts, 0 where the column is not
    read out (before the window's first key, padding, or a key outside ``selected``) -- and
    ``target_positions``, the key position of each target. Columns that are padding in every row
    of a batch are dropped."""

    def __init__(self, store: SequenceStore, plan: WindowPlan, selected: SampleKeys | None = None):
        self.store, self.plan = store, plan
        self.selected = (
            None if selected is None else selected.flat_mask(store.starts, len(store.items))
        )

    def __len__(self) -> int:
        return len(self.plan)

    def lengths(self) -> torch.Tensor:
        return self.plan.lengths()

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        users, ends, first = (
            self.plan.user_ids[idx],
            self.plan.ends[idx],
            self.plan.first_positions[idx],
        )
        width = self.plan.width
        history = self.store.window(users, ends, width)
        positions = readout_positions(ends, width)
        read = readout_mask(positions, first, history)
        if self.selected is not None:
            flat = (self.store.starts[users].unsqueeze(1) + positions).clamp(min=0)
            read &= self.selected[flat]
        targets = torch.where(
            read,
            self.store.items[(self.store.starts[users].unsqueeze(1) + positions).clamp(min=0)],
            0,
        )
        batch = {
            "user_id": users,
            "history": history,
            "targets": targets,
            "target_positions": torch.where(read, positions, 0),
        }
        return trim_padding_columns(batch, ("history", "targets", "target_positions"))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


class SequentialDataModule(L.LightningDataModule):
    def __init__(
        self,
        processed_dir: str | Path,
        max_seq_len: int = 200,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        limit_data_rows: int = -1,
        train_mode: str = "user_sequences",
        num_workers: int = 0,
        num_candidates: int = 20,
        candidate_seed: int = 2024,
        seed: int = 42,
        train_samples: str = "all",
        window_stride: int | None = None,
        eval_order: str = "key",
        head_fraction: float = 0.2,
        short_quantile: float = 0.5,
        cold_items: str = "none",
        cold_seed: int = 0,
    ):
        super().__init__()
        if train_mode not in TRAIN_MODES:
            raise UserError(
                f"train_mode must be one of {', '.join(TRAIN_MODES)}, got {train_mode!r}"
            )
        if max_seq_len < 1:
            raise UserError(f"max_seq_len must be positive, got {max_seq_len}")
        self.processed_dir = Path(processed_dir)
        self.max_seq_len, self.batch_size, self.eval_batch_size = (
            max_seq_len,
            batch_size,
            eval_batch_size,
        )
        self.limit_data_rows = check_limit(limit_data_rows)
        self.train_mode, self.num_workers = train_mode, num_workers
        self.num_candidates, self.candidate_seed, self.seed = num_candidates, candidate_seed, seed
        if eval_order not in EVAL_ORDERS:
            raise UserError(
                f"eval_order must be one of {', '.join(EVAL_ORDERS)}, got {eval_order!r}"
            )
        self.train_samples, self.window_stride, self.eval_order = (
            train_samples,
            window_stride,
            eval_order,
        )
        self.head_fraction, self.short_quantile = head_fraction, short_quantile
        self.cold_items, self.cold_seed = check_spec(cold_items), cold_seed
        self.dataset: PreparedDataset | None = None

    # -- setup -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        dataset = load_prepared(self.processed_dir)
        self.dataset, self.cold = protocol_view(dataset, self.cold_items, self.cold_seed)
        self.store = SequenceStore(self.dataset)
        self.keys = {
            s: split_keys(self.dataset.lengths, s, self.limit_data_rows)
            for s in ("train", "valid", "test")
        }
        self.candidates = None
        if self.num_candidates > 0:
            drawn = load_or_draw_candidates(
                self.dataset, self.store, self.num_candidates, self.candidate_seed
            )
            self.candidates = {s: drawn[s][: len(self.keys[s])] for s in ("valid", "test")}
        if len(self.keys["train"]) == 0:
            raise UserError(
                f"{self.processed_dir}: no training samples "
                f"(limit_data_rows={self.limit_data_rows})"
            )

    @cached_property
    def slices(self) -> Slices:
        """The evaluation slices of this data (target popularity, user history; train data only)."""
        self.setup()
        return sample_slices(
            self.dataset,
            head_fraction=self.head_fraction,
            short_quantile=self.short_quantile,
            cold=self.cold,
        )

    @property
    def held_out_items(self) -> torch.Tensor | None:
        """(N+1,) bool: the items the cold-item protocol keeps out of training, or None."""
        self.setup()
        return torch.from_numpy(self.cold) if self.cold.any() else None

    @property
    def num_items(self) -> int:
        assert self.dataset is not None, "call setup() first"
        return self.dataset.num_items

    @property
    def fingerprint(self) -> str:
        assert self.dataset is not None, "call setup() first"
        return self.dataset.fingerprint

    # -- datasets ------------------------------------------------------------------------------
    def split_dataset(self, split: str, *, with_candidates: bool = True) -> SplitDataset:
        self.setup()
        cands = self.candidates.get(split) if (self.candidates and with_candidates) else None
        keys = self.train_keys() if split == "train" else self.keys[split]
        return SplitDataset(
            self.store, keys, self.max_seq_len, cands, with_full_history=split != "train"
        )

    def train_keys(self) -> SampleKeys:
        """The training samples a run learns from: every train key, or the `train_samples`
        selection (e.g. `last_n_per_user=1`, to bound an LLM teacher's cost on CPU)."""
        self.setup()
        return select_samples(self.keys["train"], self.train_samples)

    def train_dataset(self) -> Dataset:
        self.setup()
        if self.train_mode == "user_sequences":
            return UserSequenceDataset(self.store, self.keys["train"], self.max_seq_len)
        if self.train_mode == "windows":
            return self.window_dataset(self.train_keys())
        return self.split_dataset("train")

    def window_dataset(self, selected: SampleKeys) -> WindowTrainDataset:
        """Windows of ``max_seq_len`` items over the training prefixes that read out each key of
        ``selected`` exactly once (windows holding none of them are left out)."""
        self.setup()
        plan = plan_windows(self.keys["train"], self.max_seq_len, self.window_stride)
        if len(selected) != len(self.keys["train"]):
            plan = plan.holding(selected, self.store.starts, len(self.store.items))
        return WindowTrainDataset(self.store, plan, selected)

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, by_length: bool = False
    ) -> DataLoader:
        if by_length:  # similar lengths share a batch (shuffled when training, fixed otherwise)
            sampler = LengthGroupedSampler(
                dataset.lengths(), batch_size, self.seed, shuffle=shuffle
            )
        else:
            sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=_identity,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """A loader over one evaluation split (or train prefixes), in (user_id, position) order,
        or grouped by history length with ``eval_order="length"`` (for the LLM teacher)."""
        return self._loader(
            self.split_dataset(split),
            batch_size or self.eval_batch_size,
            False,
            by_length=self.eval_order == "length",
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(
            self.train_dataset(), self.batch_size, True, by_length=self.train_mode == "windows"
        )

    def val_dataloader(self) -> DataLoader:
        return self.loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
