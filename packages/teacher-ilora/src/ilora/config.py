"""The teacher's config: its architecture (:class:`TeacherConfig`, recorded in its checkpoint card),
the `teacher` config group (:class:`TeacherSettings`: the architecture plus how the teacher is built
and trained) and the teacher's `train` preset (:class:`TeacherTrainConfig`). One set of defaults:
these dataclasses; `conf/teacher/ilora.yaml` and `conf/train/teacher.yaml` hold presets only.

The earlier guide's names of the embedding-imitation knobs (`teacher.distill_*`, which are not the
`distill` package's) are still accepted and moved to `teacher.imitation_*`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from recdata.errors import UserError
from runkit.config import (
    BOOLEAN,
    NON_NEGATIVE_NUMBER_LIST,
    Schema,
    alias_of,
    at_least,
    check_instance,
    checked,
    integer,
    number,
    number_or,
    one_of,
    optional_integer,
)
from runkit.schema import TrainConfig

PROMPT_MODES = ("prefix", "sequence")
IMITATION_LOSSES = ("mse", "cosine", "l1", "huber", "contrastive")
DECAY_TYPES = ("none", "linear", "cosine", "exponential")
LR_SCHEDULES = ("cosine", "constant")
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass
class TeacherConfig:
    """Architecture knobs: what rebuilds a trained teacher (its card's `hparams.teacher`)."""

    # hub name (e.g. facebook/opt-125m), local dir, .gguf, or embedded:smollm2-135m
    llm_model_name: str = "embedded:smollm2-135m"
    # control: the same LLM architecture with random (seeded) weights
    llm_random_init: bool = checked(False, BOOLEAN)
    # keep the LLM's first N decoder layers (a CPU budget buys more epochs); null = all
    llm_num_layers: int | None = checked(None, optional_integer(1))
    # projector MLP width: SASRec item vector -> hidden_size -> LLM width
    hidden_size: int = checked(256, integer(1))
    num_lora_experts: int = checked(4, integer(1))
    # total rank, lora_r / num_lora_experts per expert
    lora_r: int = checked(8, integer(1))
    lora_alpha: float = checked(32.0, number(0, strict_low=True))
    lora_dropout: float = checked(0.1, number(0, 1, strict_high=True))
    # OPT: [q_proj, k_proj, v_proj, out_proj, fc1, fc2]
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))
    gate_hidden_size: int = checked(64, integer(1))
    # prefix mode: items shown in the prompt
    max_history: int = checked(10, integer(1))
    max_title_tokens: int = checked(12, integer(1))
    # the prompt's words around the items (the prefix mode ends with the answer cue)
    instruction: str = "A user watched these movies in order:"
    answer_cue: str = "\nThe next movie they watch:"
    # score against a trainable copy of the student's item table (else a linear head)
    use_item_embeddings_head: bool = checked(True, BOOLEAN)
    # true: query = the student's state + head(LLM state), head zero-initialised (starts as the
    # student)
    residual_student_state: bool = checked(False, BOOLEAN)
    # scores += student_mix x the student's scores (an ensemble; needs residual_student_state=false)
    student_mix: float = checked(0.0, number(0))
    # u from the frozen student with its dropout on while the teacher trains (never at eval)
    student_dropout_in_training: bool = checked(False, BOOLEAN)
    # LayerNorm on the LLM state before the head
    normalize_state: bool = checked(True, BOOLEAN)
    # sequence: one causal pass per user window reads out every prefix | prefix: iLoRA's prompt
    prompt_mode: str = checked("sequence", one_of(PROMPT_MODES))
    # sequence mode: `title [ItemEmb]` per item (~10x the tokens) instead of `[ItemEmb]`
    sequence_titles: bool = checked(False, BOOLEAN)
    # input side, sequence mode: item token = projector(SASRec vector) +
    # title_projector(title state)
    use_title_projector: bool = checked(True, BOOLEAN)
    # scoring side: an item's vector = its item-table row + a projection of its text state, so
    # text can carry an item with few or no interactions
    text_scoring: bool = checked(False, BOOLEAN)
    # with text scoring: the probability that a training step leaves an item's ID row out, so
    # the text part learns to score an item alone (a cold item has no ID row at all)
    text_id_dropout: float = checked(0.0, number(0, 1, strict_high=True))
    # the LLM depth its text states are read at; null = the teacher's own (llm_num_layers)
    text_state_layers: int | None = checked(None, optional_integer(1))
    # sequence mode window (items); null = the student's max_seq_len
    max_sequence_items: int | None = checked(None, optional_integer(1))
    # how far consecutive windows of a long history move; null = window // 2
    sequence_window_stride: int | None = checked(None, optional_integer(1))

    def __post_init__(self) -> None:
        check_instance(self, "teacher.")

    @classmethod
    def check_group(cls, values: dict, prefix: str) -> None:
        mix, residual = values.get("student_mix"), values.get("residual_student_state")
        if mix == "auto" and residual:
            raise UserError(
                f"{prefix}student_mix=auto ensembles a teacher with its own query and its student: "
                f"set {prefix}residual_student_state=false"
            )
        if isinstance(mix, int | float) and mix > 0 and residual:
            raise UserError(
                f"{prefix}student_mix mixes the student's scores into a teacher with its own "
                f"query: set {prefix}residual_student_state=false (the residual "
                "head already adds the student)"
            )
        if values.get("text_scoring") and values.get("use_item_embeddings_head") is False:
            raise UserError(
                f"{prefix}text_scoring adds text to the item table it scores against: it needs "
                f"{prefix}use_item_embeddings_head=true"
            )
        experts, rank = values.get("num_lora_experts"), values.get("lora_r")
        if isinstance(experts, int) and isinstance(rank, int) and experts >= 1 and rank % experts:
            raise UserError(
                f"{prefix}lora_r={rank} must be a multiple of {prefix}num_lora_experts={experts} "
                "(each expert gets rank lora_r / num_lora_experts)"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def without_item_text(self) -> TeacherConfig:
        """This architecture for a dataset whose items have no text: item tokens alone (no titles
        in the prompt, no title projector); nothing invents a title."""
        return replace(self, use_title_projector=False, sequence_titles=False, text_scoring=False)

    @classmethod
    def from_settings(cls, values: dict, student_mix: float) -> TeacherConfig:
        """The architecture of a `teacher` group (a mix chosen on valid after training starts at
        0)."""
        names = cls.__dataclass_fields__
        return cls(
            **{**{k: v for k, v in values.items() if k in names}, "student_mix": student_mix}
        )


@dataclass
class TeacherSettings(TeacherConfig):
    """The `teacher` config group: the architecture, plus how the teacher is built and trained."""

    # auto = the weight w of scores + w x student chosen on valid after training (recorded in the
    # card)
    student_mix: Any = checked("auto", number_or("auto", 0))
    # the weights auto chooses among (0 = the teacher alone); valid choosing the largest says the
    # teacher adds little to its student, and a wider grid may choose larger still
    student_mix_grid: list[float] = checked(
        [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0], NON_NEGATIVE_NUMBER_LIST
    )
    # student checkpoints/best; null = the newest student run
    rec_model_checkpoint_path: str | None = None
    train_samples: str = "all"  # all | last_n_per_user=N: the training keys the teacher learns from
    # embedding imitation: the item-embedding head's table is pulled toward the student's
    imitation_lambda: float = checked(1.0, number(0))
    imitation_loss_type: str = checked("mse", one_of(IMITATION_LOSSES))
    contrastive_temperature: float = checked(0.1, number(0, strict_low=True))
    imitation_decay_type: str = checked("linear", one_of(DECAY_TYPES))
    imitation_min_lambda: float = checked(0.0, number(0))
    # null = the run's total optimizer steps
    imitation_decay_steps: int | None = checked(None, optional_integer(1))
    # hardware
    precision: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    # auto = FlashAttention-2 on CUDA when flash-attn is installed
    use_flash_attention: Any = "auto"
    gradient_checkpointing: bool = checked(False, BOOLEAN)
    # the earlier guide's names (section 3.2.1)
    distill_lambda: float | None = alias_of("imitation_lambda")
    distill_loss_type: str | None = alias_of("imitation_loss_type")
    distill_decay_type: str | None = alias_of("imitation_decay_type")
    distill_min_lambda: float | None = alias_of("imitation_min_lambda")
    distill_decay_steps: int | None = alias_of("imitation_decay_steps")

    def __post_init__(self) -> None:  # composed by Hydra and checked by runkit.config.check_config
        pass


@dataclass
class TeacherTrainConfig(TrainConfig):
    """The teacher's `train` preset: warm-up + cosine lr, and the item vectors' own lrs."""

    # cosine (warm-up, then decay to 0) | constant
    lr_schedule: str = checked("cosine", one_of(LR_SCHEDULES))
    # fraction of the run's optimizer steps
    warmup_ratio: float = checked(0.05, number(0, 1, strict_high=True))
    # the item table's lr = lr x this; 0 keeps it
    item_table_lr_scale: float = checked(1.0, at_least(0))
    # with teacher.text_scoring: the text projector's lr = lr x this; 0 keeps it at zero
    text_projector_lr_scale: float = checked(1.0, at_least(0))


SCHEMAS = [
    Schema("teacher", "teacher", TeacherSettings),
    Schema("train", "teacher_train", TeacherTrainConfig),
]
