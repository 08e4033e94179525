"""The config groups runkit owns: the root (paths, seed), `dataset`, `eval`, `train` and `trainer`.
The model packages register their own groups (student, teacher, distill, eval_all) the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from recdata.cold import check_spec
from recdata.errors import UserError
from runkit.config import (
    BOOLEAN,
    FRACTION_OR_COUNT,
    POSITIVE_INT_LIST,
    Check,
    Schema,
    checked,
    integer,
    number,
)


def _cold_spec(value) -> bool:
    try:
        check_spec(value)
    except UserError:
        return False
    return True


COLD_SPEC = Check("none, random:F or newest:F with F in [0, 1)", _cold_spec)


@dataclass
class PathsConfig:
    data_dir: str = "data"
    result_dir: str = "result"
    # fetched wheels, downloads and converted LLMs; reused by every run
    cache_dir: str = "${oc.env:ILORA_CACHE,${oc.env:HOME}/.cache/ilora-dllm2rec}"


@dataclass
class RunConfig:
    """The root: every command composes all groups, so each run's config.yaml is complete."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = checked(42, integer(0))
    dataset: Any = MISSING
    student: Any = MISSING
    teacher: Any = MISSING
    distill: Any = MISSING
    eval: Any = MISSING
    train: Any = MISSING
    trainer: Any = MISSING
    eval_all: Any = None  # eval-all's own settings, composed by eval-all only


@dataclass
class DatasetConfig:
    """A prepared dataset: `recdata prepare <name>` writes it to processed_dir."""

    name: str = "ml-100k"
    data_dir: str = "${paths.data_dir}/${dataset.name}"  # raw files
    processed_dir: str = "${paths.data_dir}/processed/${dataset.name}"
    # leave-one-out needs a train, a valid and a test item
    min_user_interactions: int = checked(3, integer(3))
    # cap each split to its first N samples; -1 = all
    limit_data_rows: int = checked(-1, integer(1, also=(-1,)))
    # the cold-item protocol (recdata.cold): random:F or newest:F of the items held out of
    # training, ranked at evaluation as their own slice; none = off
    cold_items: str = checked("none", COLD_SPEC)
    cold_seed: int = checked(0, integer(0))


@dataclass
class EvalConfig:
    """The evaluation protocol shared by every trainer and eval-all."""

    # history items are not ranked; unmasked figures are written too
    mask_history: bool = checked(True, BOOLEAN)
    ks: list[int] = checked([5, 10, 20], POSITIVE_INT_LIST)
    # target + 19 unseen items, drawn once; 0 = off
    num_candidates: int = checked(20, integer(2, also=(0,)))
    candidate_seed: int = checked(2024, integer(0))
    # slices (recdata.slices): head = this fraction of the most popular items by training
    # interactions; short histories = users up to this quantile of training lengths
    head_fraction: float = checked(0.2, number(0, 1, strict_low=True, strict_high=True))
    short_history_quantile: float = checked(0.5, number(0, 1, strict_low=True, strict_high=True))
    # eval-all: checkpoints to compare; null = the newest complete run of that kind
    baseline_checkpoint_path: str | None = None
    distilled_checkpoint_path: str | None = None
    teacher_checkpoint_path: str | None = None


@dataclass
class TrainConfig:
    """Optimisation of one command; presets: train=student | teacher | distill."""

    batch_size: int = checked(128, integer(1))
    eval_batch_size: int = checked(256, integer(1))
    lr: float = checked(1e-3, number(0, strict_low=True))
    weight_decay: float = checked(0.0, number(0))
    max_epochs: int = checked(50, integer(1, also=(-1,)))
    max_steps: int = checked(-1, integer(1, also=(-1,)))
    patience: int = checked(5, integer(0))  # early stopping on valid/<monitor>
    monitor: str = "ndcg@10"
    val_check_interval: Any = checked(1.0, FRACTION_OR_COUNT)
    # a fraction or a count of valid batches
    limit_val_batches: Any = checked(1.0, FRACTION_OR_COUNT)
    num_workers: int = checked(0, integer(0))
    accumulate_grad_batches: int = checked(1, integer(1))  # optimizer step every N batches
    # validate (and export) the untrained model first
    validate_at_start: bool = checked(False, BOOLEAN)
    resume: str | None = None  # a run_dir: continue it from its checkpoints/last.ckpt


@dataclass
class TrainerConfig:
    """Passed to lightning.Trainer. DDP on CPU: trainer.devices=2 trainer.strategy=ddp."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = checked(1, integer(1))
    strategy: str = "auto"
    precision: str = "32-true"  # fp32 on CPU; e.g. bf16-mixed on a GPU
    log_every_n_steps: int = checked(5, integer(1))
    enable_progress_bar: bool = True
    gradient_clip_val: float | None = checked(None, number(0, nullable=True))
    deterministic: bool = False


SCHEMAS = [
    Schema("", "run", RunConfig),
    Schema("dataset", "dataset", DatasetConfig),
    Schema("eval", "eval", EvalConfig),
    Schema("train", "train", TrainConfig),
    Schema("trainer", "trainer", TrainerConfig),
]
