"""`precompute-soft-labels`: score training samples with a teacher checkpoint and write the
teacher-output contract. A prefix-mode teacher scores one prefix per pass; a sequence-mode
teacher reads out every selected key of a user window in one pass (windows longest first, so
batches carry little padding). Resumable (finished shards of the same job are kept; shards
computed for another teacher, data, sample set or K are recomputed) and sharded across ranks
(WORLD_SIZE/RANK from torchrun); shards are merged by key, never by order."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from distill.soft_labels import SoftLabels, table_columns, write_soft_labels
from ilora.checkpoint import load_item_embeddings, load_teacher, teacher_window
from ilora.inference import (
    teacher_digest,
    topk_excluding_history,
    topk_with_history_masked,
    window_scores,
)
from ilora.train import resolve_device
from recdata.atomic import atomic_file
from recdata.checkpoint import read_card
from recdata.datamodule import SplitDataset, WindowTrainDataset
from recdata.errors import UserError
from recdata.runs import checkpoint_or_newest, hydra_entry
from recdata.splits import SampleKeys, select_samples, split_keys
from sasrec.recipe import build_datamodule, seed_run

log = logging.getLogger(__name__)
SHARD_SIZE = 256  # prefixes (prefix mode) or user windows (sequence mode) per shard
SHARD_TAG = b"ilora.soft_label_shard"  # parquet schema metadata: what a shard was computed for


def resolve_teacher_path(cfg: DictConfig) -> Path:
    return checkpoint_or_newest(cfg, "distill.teacher_checkpoint_path", "ilora-teacher")


def soft_labels_dir(cfg: DictConfig, teacher_path: Path) -> Path:
    """Default: next to the teacher run, named by sample selection and K."""
    if cfg.distill.soft_labels_dir:
        return Path(cfg.distill.soft_labels_dir)
    spec = re.sub(r"[^A-Za-z0-9]+", "-", str(cfg.distill.soft_label_samples)).strip("-")
    return Path(teacher_path).resolve().parent.parent / f"soft_labels_{spec}_k{cfg.distill.candidate_topk}"


def training_keys(dm, spec: str) -> SampleKeys:
    return select_samples(split_keys(dm.dataset.lengths, "train", dm.limit_data_rows), spec)


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_ranges(units: int, shard_size: int | None = None) -> list[tuple[int, int, int]]:
    """(index, lo, hi) of each shard of `units` prefixes or windows (SHARD_SIZE each by default);
    each shard is cut into teacher batches from its start, by precompute-soft-labels and by the
    teacher service's client alike, so both run the same batches."""
    size = shard_size or SHARD_SIZE
    return [(i, lo, min(lo + size, units)) for i, lo in enumerate(range(0, units, size))]


def labelling_units(dm, keys: SampleKeys, sequence_mode: bool):
    """What one teacher batch row is when labelling ``keys``: a window that reads out several of
    them (sequence mode, longest first so a batch pads little) or one prefix prompt."""
    if sequence_mode:
        return WindowTrainDataset(dm.store, dm.window_dataset(keys).plan.longest_first(), keys)
    return SplitDataset(dm.store, keys, dm.max_seq_len, with_full_history=True)


def score_shard(teacher, dataset, lo: int, hi: int, k: int, mask_history: bool, batch_size: int, device) -> pa.Table:
    """Top-K rows of units lo..hi of ``dataset``: prefixes (SplitDataset) or windows."""
    score = _score_windows if isinstance(dataset, WindowTrainDataset) else _score_prefixes
    users, positions, items, scores = [], [], [], []
    for start in range(lo, hi, batch_size):  # batches restart at each shard: see shard_ranges
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, hi))))
        u, p, top_items, top_scores = score(teacher, dataset, batch, k, mask_history, device)
        if not bool(torch.isfinite(top_scores).all()):
            row = int((~torch.isfinite(top_scores)).any(1).nonzero()[0])
            raise UserError(f"distill.candidate_topk={k} exceeds the items the teacher can rank for sample (user_id, position) = ({int(u[row])}, {int(p[row])}) once its history is masked; lower distill.candidate_topk")
        users.append(u), positions.append(p), items.append(top_items), scores.append(top_scores)
    return pa.table({
        "user_id": pa.array(torch.cat(users).numpy()), "position": pa.array(torch.cat(positions).numpy()),
        "topk_items": pa.array(list(torch.cat(items).numpy()), pa.list_(pa.int64())),
        "topk_scores": pa.array(list(torch.cat(scores).numpy()), pa.list_(pa.float32())),
    })  # fmt: skip


def _score_prefixes(teacher, dataset, batch, k, mask_history, device):
    with torch.no_grad():
        s = teacher(batch["history"].to(device)).cpu()
    top_items, top_scores = topk_with_history_masked(s, batch["full_history"] if mask_history else None, k)
    return batch["user_id"], batch["position"], top_items, top_scores


def _score_windows(teacher, dataset, batch, k, mask_history, device):
    read = batch["targets"] > 0
    scores = window_scores(teacher, batch["history"], read, device)
    rows, positions = read.nonzero()[:, 0], batch["target_positions"][read]
    full = None
    if mask_history:  # each window's whole prefix: a key's history may start before its window
        ends = batch["target_positions"].amax(1)
        full = dataset.store.window(batch["user_id"], ends, max(int(ends.max()), 1))
    top_items, top_scores = topk_excluding_history(scores, rows, positions, full, k)
    return batch["user_id"][rows], positions, top_items, top_scores


def shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard_{index:06d}.parquet"


def shard_is_done(path: Path, tag: bytes) -> bool:
    """A shard counts as finished only if it was computed for exactly this job (same teacher,
    data, samples, K, masking and shard layout); shards of another job are recomputed."""
    if not path.is_file():
        return False
    try:
        return (pq.read_schema(path).metadata or {}).get(SHARD_TAG) == tag
    except (OSError, pa.ArrowInvalid):
        return False


def merge_shards(paths: list[Path], k: int) -> tuple[torch.Tensor, ...]:
    return table_columns(pa.concat_tables([pq.read_table(p) for p in paths]), k)


def precompute(cfg: DictConfig) -> Path:
    d = cfg.distill
    if not isinstance(d.candidate_topk, int) or isinstance(d.candidate_topk, bool) or d.candidate_topk < 1:
        raise UserError(f"distill.candidate_topk must be an integer >= 1, got {d.candidate_topk!r}")
    teacher_path = resolve_teacher_path(cfg)
    config, window = teacher_window(read_card(teacher_path), teacher_path)
    sequence_mode = config.prompt_mode == "sequence"
    dm = build_datamodule(cfg, max_seq_len=window, train_mode="windows" if sequence_mode else "prefix",
                          window_stride=config.sequence_window_stride)  # fmt: skip
    keys = training_keys(dm, d.soft_label_samples)  # a bad selection fails before the teacher loads
    out = soft_labels_dir(cfg, teacher_path)
    device = resolve_device(cfg.trainer.accelerator)
    teacher, ckpt = load_teacher(teacher_path, dm.dataset, device=device, cache_dir=Path(cfg.paths.cache_dir))
    dataset = labelling_units(dm, keys, sequence_mode)
    shard_dir = out.with_name(out.name + ".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _rank_world()
    digest = teacher_digest(teacher_path)
    tag = json.dumps({"teacher_digest": digest, "data_fingerprint": dm.fingerprint, "samples": str(d.soft_label_samples),
                      "num_samples": len(keys), "k": int(d.candidate_topk), "history_masked": bool(d.mask_history_in_topk),
                      "max_seq_len": dm.max_seq_len, "shard_size": SHARD_SIZE, "prompt_mode": config.prompt_mode,
                      "units": len(dataset)}, sort_keys=True).encode()  # fmt: skip
    shards = shard_ranges(len(dataset))
    todo = [s for s in shards if s[0] % world == rank and not shard_is_done(shard_path(shard_dir, s[0]), tag)]
    log.info("soft labels: %d samples (%s) in %d %s, %d shards, %d to do on rank %d/%d", len(keys), d.soft_label_samples,
             len(dataset), "windows" if sequence_mode else "prompts", len(shards), len(todo), rank, world)  # fmt: skip
    for index, lo, hi in tqdm(todo, desc="teacher top-K", unit="shard", disable=not cfg.trainer.enable_progress_bar):
        table = score_shard(teacher, dataset, lo, hi, d.candidate_topk, d.mask_history_in_topk, d.teacher_batch_size, device)
        with atomic_file(shard_path(shard_dir, index)) as tmp:
            pq.write_table(table.replace_schema_metadata({SHARD_TAG: tag}), tmp)
    if world > 1:
        _barrier()
        if rank != 0:
            return out
    paths = [shard_path(shard_dir, i) for i, _, _ in shards]
    unfinished = [p.name for p in paths if not shard_is_done(p, tag)]
    if unfinished:
        raise UserError(f"{shard_dir}: {len(unfinished)} shard(s) unfinished or from another job (first {unfinished[0]}); re-run precompute-soft-labels to complete them")
    # only this job's shards are merged (a stale shard of another layout never leaks in)
    user_ids, positions, items, scores = merge_shards(paths, d.candidate_topk)
    card = {
        "teacher_checkpoint": str(Path(teacher_path).resolve()), "teacher_digest": digest,
        "data_fingerprint": dm.fingerprint, "dataset": dm.dataset.name, "samples": str(d.soft_label_samples),
        "history_masked": bool(d.mask_history_in_topk), "source": "precomputed",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    labels = SoftLabels(user_ids, positions, items, scores, load_item_embeddings(ckpt.path), card)
    labels = labels.aligned_to(keys)  # refuses a merge that lost samples; sorts by key
    write_soft_labels(out, labels)
    shutil.rmtree(shard_dir, ignore_errors=True)
    return out


def _barrier() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


@hydra_entry("run_precompute")
def main(cfg: DictConfig) -> None:
    seed_run(cfg)
    out = precompute(cfg)
    print(f"soft_labels: {out}")


if __name__ == "__main__":
    main()
