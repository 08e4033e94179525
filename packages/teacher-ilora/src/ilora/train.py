"""`train-teacher`: train the iLoRA teacher on a trained SASRec."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ilora.checkpoint import ITEM_EMBEDDINGS_FILE, build_teacher, student_reference
from ilora.config import TeacherConfig
from ilora.ensemble import choose_student_mix, mix_grid
from ilora.imitation import DecaySchedule
from ilora.module import TeacherModule
from recdata.atomic import write_json
from runkit.checkpoint import CARD_FILE, add_weights_file, read_card
from runkit.data import build_datamodule
from runkit.device import resolve_device
from runkit.entry import hydra_entry
from runkit.recipe import run_training, seed_run
from runkit.runs import checkpoint_or_newest
from sasrec.module import load_sasrec

log = logging.getLogger(__name__)


def resolve_student_path(cfg: DictConfig) -> Path:
    return checkpoint_or_newest(cfg, "teacher.rec_model_checkpoint_path", "sasrec")


def mix_is_auto(cfg: DictConfig) -> bool:
    return str(cfg.teacher.student_mix) == "auto"


def teacher_config(cfg: DictConfig) -> TeacherConfig:
    """The architecture to train; with student_mix=auto it trains alone (the weight is chosen on
    valid afterwards)."""
    values = OmegaConf.to_container(cfg.teacher, resolve=True)
    return TeacherConfig.from_settings(values, 0.0 if mix_is_auto(cfg) else values["student_mix"])


def finalize_teacher(module: TeacherModule, best_dir: Path, *, cfg: DictConfig, dm) -> None:
    """After training, on the best weights: the student mix (when auto), then the item
    embeddings."""
    if mix_is_auto(cfg):
        monitor = (
            cfg.train.monitor
            if cfg.train.monitor.split("@")[0] in ("hr", "ndcg") and "_of_" not in cfg.train.monitor
            else "ndcg@10"
        )
        card = read_card(best_dir)
        # by the best's own validation
        measured = module.valid_by_mix.get(card["metrics"].get("global_step"))
        weight, by_mix = choose_student_mix(
            module.teacher,
            dm.loader("valid"),
            dm.num_items,
            metric=monitor,
            ks=tuple(cfg.eval.ks),
            mask_history=bool(cfg.eval.mask_history),
            device=module.device,
            grid=module.mix_grid,
            by_mix={w: m[monitor] for w, m in measured.items()} if measured else None,
        )
        card["hparams"]["teacher"]["student_mix"] = weight
        card["metrics"]["valid_by_student_mix"] = {
            "metric": monitor,
            **{f"{w:g}": v for w, v in by_mix.items()},
        }
        write_json(best_dir / CARD_FILE, card)
    save_item_embeddings(module, best_dir)


def save_item_embeddings(module: TeacherModule, best_dir: Path) -> None:
    embeddings = module.teacher.item_title_embeddings()
    add_weights_file(best_dir, ITEM_EMBEDDINGS_FILE, {"item_embeddings": embeddings})
    log.info("wrote teacher item embeddings %s to %s", tuple(embeddings.shape), best_dir)


def teacher_datamodule(cfg: DictConfig, config: TeacherConfig, student_path: Path):
    """Prefix mode: one sample per training prefix. Sequence mode: windows of the teacher's
    length (its student's max_seq_len unless set) that read out every training key once, and
    evaluation batches grouped by history length (padding costs a full LLM pass per token)."""
    if config.prompt_mode == "prefix":
        return build_datamodule(
            cfg,
            max_seq_len=cfg.student.max_seq_len,
            train_mode="prefixes",
            train_samples=cfg.teacher.train_samples,
        )
    window = config.max_sequence_items or read_card(student_path)["hparams"]["model"]["max_seq_len"]
    return build_datamodule(
        cfg,
        max_seq_len=window,
        train_mode="windows",
        train_samples=cfg.teacher.train_samples,
        window_stride=config.sequence_window_stride,
        eval_order="length",
    )


def build_module(cfg: DictConfig, dm, config: TeacherConfig, student_path: Path) -> TeacherModule:
    t = cfg.teacher
    student, student_card = load_sasrec(
        student_path, fingerprint=dm.fingerprint, num_items=dm.num_items
    )
    teacher, info = build_teacher(
        config,
        student,
        dm.dataset.titles,
        device=resolve_device(cfg.trainer.accelerator, cfg.trainer.devices),
        precision=t.precision,
        use_flash_attention=t.use_flash_attention,
        gradient_checkpointing=t.gradient_checkpointing,
        cache_dir=Path(cfg.paths.cache_dir),
    )
    schedule = DecaySchedule(
        t.imitation_lambda, t.imitation_min_lambda, t.imitation_decay_type, t.imitation_decay_steps
    )
    return TeacherModule(
        teacher,
        llm_info=info,
        student_ref=student_reference(student_path, student_card),
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        schedule=schedule,
        loss_type=t.imitation_loss_type,
        contrastive_temperature=t.contrastive_temperature,
        seed=cfg.seed,
        item_table_lr_scale=cfg.train.item_table_lr_scale,
        text_projector_lr_scale=cfg.train.text_projector_lr_scale,
        lr_schedule=cfg.train.lr_schedule,
        warmup_ratio=cfg.train.warmup_ratio,
    )


@hydra_entry("run_teacher")
def main(cfg: DictConfig) -> None:
    config = teacher_config(cfg)
    seed_run(cfg)
    student_path = resolve_student_path(cfg)
    dm = teacher_datamodule(cfg, config, student_path)
    if not dm.dataset.has_item_text:
        log.info(
            "%s has no item text: the teacher reads item tokens alone (no titles, no title "
            "projector)",
            dm.dataset.name,
        )
        config = config.without_item_text()
    module = build_module(cfg, dm, config, student_path)
    if mix_is_auto(cfg):
        module.mix_grid = mix_grid(cfg.teacher.student_mix_grid)
    run_training(cfg, module, dm, finalize_best=functools.partial(finalize_teacher, cfg=cfg, dm=dm))


if __name__ == "__main__":
    main()
