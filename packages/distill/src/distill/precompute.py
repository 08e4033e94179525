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

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from distill.labelling import labelling_units
from distill.shards import (
    SHARD_SIZE,
    label_shard,
    merge_shards,
    shard_is_done,
    shard_path,
    shard_ranges,
)
from distill.soft_labels import SoftLabels, write_soft_labels
from ilora.checkpoint import load_item_embeddings, load_teacher, teacher_window
from ilora.inference import teacher_digest
from ilora.kind import KIND as TEACHER_KIND
from recdata.errors import UserError
from recdata.splits import SampleKeys, select_samples, split_keys
from runkit.checkpoint import read_card
from runkit.data import build_datamodule
from runkit.device import resolve_device
from runkit.entry import hydra_entry
from runkit.recipe import seed_run
from runkit.runs import checkpoint_or_newest

log = logging.getLogger(__name__)


def resolve_teacher_path(cfg: DictConfig) -> Path:
    return checkpoint_or_newest(cfg, "distill.teacher_checkpoint_path", TEACHER_KIND.name)


def soft_labels_dir(cfg: DictConfig, teacher_path: Path) -> Path:
    """Default: next to the teacher run, named by sample selection and K."""
    if cfg.distill.soft_labels_dir:
        return Path(cfg.distill.soft_labels_dir)
    spec = re.sub(r"[^A-Za-z0-9]+", "-", str(cfg.distill.soft_label_samples)).strip("-")
    return (
        Path(teacher_path).resolve().parent.parent
        / f"soft_labels_{spec}_k{cfg.distill.candidate_topk}"
    )


def training_keys(dm, spec: str) -> SampleKeys:
    return select_samples(split_keys(dm.dataset.lengths, "train", dm.limit_data_rows), spec)


def teacher_units(dm, keys: SampleKeys, config, window: int):
    """The units that label `keys` with a teacher of this card's config and window, as
    precompute-soft-labels scores them (no label names a held-out cold item)."""
    return labelling_units(
        dm.store,
        dm.keys["train"],
        keys,
        sequence_mode=config.prompt_mode == "sequence",
        width=window,
        stride=config.sequence_window_stride,
        never=dm.held_out_items,
    )


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def scorer(units, teacher, k: int, mask_history: bool, device):
    """Label units lo..hi with the loaded teacher, refusing a K the masked history leaves no
    room for."""

    def label(lo: int, hi: int):
        users, positions, items, scores = units.score(teacher, lo, hi, k, mask_history, device)
        if not bool(torch.isfinite(scores).all()):
            row = int((~torch.isfinite(scores)).any(1).nonzero()[0])
            raise UserError(
                f"distill.candidate_topk={k} exceeds the items the teacher can rank for sample "
                f"(user_id, position) = ({int(users[row])}, {int(positions[row])}) once its "
                "history is masked; lower distill.candidate_topk"
            )
        return users, positions, items, scores

    return label


def precompute(cfg: DictConfig) -> Path:
    d = cfg.distill
    teacher_path = resolve_teacher_path(cfg)
    config, window = teacher_window(read_card(teacher_path), teacher_path)
    dm = build_datamodule(cfg, max_seq_len=window)
    keys = training_keys(dm, d.soft_label_samples)  # a bad selection fails before the teacher loads
    out = soft_labels_dir(cfg, teacher_path)
    device = resolve_device(cfg.trainer.accelerator)
    teacher, ckpt = load_teacher(
        teacher_path, dm.dataset, device=device, cache_dir=Path(cfg.paths.cache_dir)
    )
    units = teacher_units(dm, keys, config, window)
    shard_dir = out.with_name(out.name + ".shards")
    shard_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _rank_world()
    digest = teacher_digest(teacher_path)
    tag = json.dumps(
        {
            "teacher_digest": digest,
            "data_fingerprint": dm.fingerprint,
            "samples": str(d.soft_label_samples),
            "num_samples": len(keys),
            "k": int(d.candidate_topk),
            "history_masked": bool(d.mask_history_in_topk),
            "max_seq_len": dm.max_seq_len,
            "shard_size": SHARD_SIZE,
            "prompt_mode": config.prompt_mode,
            "units": len(units),
        },
        sort_keys=True,
    ).encode()
    shards = shard_ranges(len(units), SHARD_SIZE)
    todo = [
        s
        for s in shards
        if s[0] % world == rank and not shard_is_done(shard_path(shard_dir, s[0]), tag)
    ]
    log.info(
        "soft labels: %d samples (%s) in %d %s, %d shards, %d to do on rank %d/%d",
        len(keys),
        d.soft_label_samples,
        len(units),
        units.name,
        len(shards),
        len(todo),
        rank,
        world,
    )
    label = scorer(units, teacher, d.candidate_topk, d.mask_history_in_topk, device)
    for index, lo, hi in tqdm(
        todo, desc="teacher top-K", unit="shard", disable=not cfg.trainer.enable_progress_bar
    ):
        label_shard(shard_path(shard_dir, index), lo, hi, d.teacher_batch_size, label, tag)
    if world > 1:
        _barrier()
        if rank != 0:
            return out
    paths = [shard_path(shard_dir, i) for i, _, _ in shards]
    unfinished = [p.name for p in paths if not shard_is_done(p, tag)]
    if unfinished:
        raise UserError(
            f"{shard_dir}: {len(unfinished)} shard(s) unfinished or from another job (first "
            f"{unfinished[0]}); re-run precompute-soft-labels to complete them"
        )
    # only this job's shards are merged (a stale shard of another layout never leaks in)
    user_ids, positions, items, scores = merge_shards(paths, d.candidate_topk)
    card = {
        "teacher_checkpoint": str(Path(teacher_path).resolve()),
        "teacher_digest": digest,
        "data_fingerprint": dm.fingerprint,
        "dataset": dm.dataset.name,
        "samples": str(d.soft_label_samples),
        "history_masked": bool(d.mask_history_in_topk),
        "source": "precomputed",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
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
