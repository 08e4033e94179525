"""Building the teacher from config, and the teacher's checkpoint contract.

A teacher checkpoint holds only what it trained and names its base LLM (with a digest) and the
student checkpoint it was built on (with the digest of its weights). Loading rebuilds the
teacher from those and refuses when any of them differs.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from ilora.config import PROMPT_MODES, TeacherConfig
from ilora.kind import KIND
from ilora.llm import load_llm
from ilora.model import ILoRATeacher, mean_title_states
from ilora.prompt import SequencePromptBuilder
from recdata.atomic import sha256_file
from recdata.contract import PreparedDataset
from runkit.checkpoint import (
    WEIGHTS_FILE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_tensors,
)
from runkit.vectors import standardise_rows
from sasrec.model import SASRec
from sasrec.module import load_sasrec

log = logging.getLogger(__name__)
ITEM_EMBEDDINGS_FILE = "item_embeddings.safetensors"


def student_reference(path: Path, card: dict) -> dict:
    return {
        "path": str(Path(path).resolve()),
        "kind": card["kind"],
        "weights_sha256": sha256_file(Path(path) / WEIGHTS_FILE),
    }


# Architecture fields added after the first teacher checkpoints, with the value that rebuilds
# what those checkpoints trained (a card without them predates the field).
LEGACY_DEFAULTS = {
    "prompt_mode": "prefix",
    "normalize_state": False,
    "residual_student_state": True,
}


def build_teacher(
    config: TeacherConfig,
    student: SASRec,
    titles: list[str],
    *,
    device: str = "cpu",
    precision: str = "auto",
    use_flash_attention="auto",
    gradient_checkpointing: bool = False,
    cache_dir: Path | None = None,
    title_states: torch.Tensor | None = None,
):
    """Load the base LLM and wrap it as an iLoRA teacher; returns (teacher, llm_info)."""
    load = functools.partial(
        load_llm,
        config.llm_model_name,
        device=device,
        precision=precision,
        use_flash_attention=use_flash_attention,
        cache_dir=cache_dir,
        random_init=config.llm_random_init,
    )
    llm, tokenizer, info = load(
        gradient_checkpointing=gradient_checkpointing, num_layers=config.llm_num_layers
    )
    if (
        title_states is None
        and reads_text_states(config)
        and config.text_state_layers not in (None, config.llm_num_layers)
    ):
        title_states = text_states_at_depth(load, config, titles)
    teacher = ILoRATeacher(llm, tokenizer, student, titles, config, title_states=title_states)
    return teacher.to(device), info


def reads_text_states(config: TeacherConfig) -> bool:
    return (config.prompt_mode == "sequence" and config.use_title_projector) or config.text_scoring


@torch.no_grad()
def text_states_at_depth(load, config: TeacherConfig, titles: list[str]) -> torch.Tensor:
    """The standardised title states of another depth of the same LLM (`text_state_layers`): one
    frozen pass over the catalogue, cheap even at full depth; that model is freed after."""
    llm, tokenizer, _ = load(num_layers=config.text_state_layers)
    pieces = SequencePromptBuilder(tokenizer, titles, max_title_tokens=config.max_title_tokens)
    log.info(
        "text states from %s's first %d layers", config.llm_model_name, config.text_state_layers
    )
    return standardise_rows(mean_title_states(llm, pieces))


def config_from_card(hparams: dict, where: Path) -> TeacherConfig:
    """The TeacherConfig a card was trained with; refuses an unknown prompt mode or field."""
    values = {**LEGACY_DEFAULTS, **hparams.get("teacher", {})}
    if values["prompt_mode"] not in PROMPT_MODES:
        raise CheckpointError(
            f"{where}: unknown teacher prompt_mode {values['prompt_mode']!r} "
            f"(this version knows {', '.join(PROMPT_MODES)})"
        )
    unknown = sorted(set(values) - set(TeacherConfig.__dataclass_fields__))
    if unknown:
        raise CheckpointError(
            f"{where}: teacher card has fields this version does not know: {', '.join(unknown)}"
        )
    return TeacherConfig(**values)


def teacher_payload(teacher: ILoRATeacher, llm_info, student_ref: dict) -> dict:
    return {
        "tensors": teacher.checkpoint_tensors(),
        "hparams": {
            "teacher": teacher.config.to_dict(),
            "student": teacher.student.config.to_dict(),
        },
        "extra": {
            "base_llm": {
                "name": llm_info.name,
                "digest": llm_info.digest,
                "source": llm_info.source,
                "hidden_size": llm_info.hidden_size,
                "dtype": llm_info.dtype,
                "attn_implementation": llm_info.attn_implementation,
            },
            "student_checkpoint": student_ref,
        },
    }


def teacher_window(card: dict, where: Path) -> tuple[TeacherConfig, int]:
    """(config, history window in items) of a teacher card: the window a sequence-mode teacher
    reads (max_sequence_items, else its student's max_seq_len), or its student's window in prefix
    mode (the gate reads the student's state of the whole window)."""
    config = config_from_card(card["hparams"], where)
    window = int(card["hparams"]["student"]["max_seq_len"])
    if config.prompt_mode == "sequence" and config.max_sequence_items:
        window = int(config.max_sequence_items)
    return config, window


def load_teacher(
    path: Path,
    dataset: PreparedDataset,
    *,
    device: str = "cpu",
    precision: str = "auto",
    cache_dir: Path | None = None,
) -> tuple[ILoRATeacher, Checkpoint]:
    """Rebuild a trained teacher for inference, validating data, student and base LLM first."""
    # the card's student_checkpoint and base_llm entries are required by its kind (read_card)
    ckpt = load_checkpoint(
        path, kinds=KIND.name, fingerprint=dataset.fingerprint, num_items=dataset.num_items
    )
    ref = ckpt.card["student_checkpoint"]
    student_dir = Path(ref["path"])
    if not (student_dir / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: its student checkpoint {student_dir} is missing")
    if sha256_file(student_dir / WEIGHTS_FILE) != ref["weights_sha256"]:
        raise CheckpointError(
            f"{path}: student checkpoint {student_dir} changed since the teacher was trained"
        )
    student, _ = load_sasrec(
        student_dir,
        fingerprint=dataset.fingerprint,
        num_items=dataset.num_items,
        kinds=(ref["kind"],),
    )
    config = config_from_card(ckpt.hparams, path)
    teacher, info = build_teacher(
        config,
        student,
        dataset.titles,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
        title_states=ckpt.tensors.get("title_states"),
    )
    if info.digest != ckpt.card["base_llm"]["digest"]:
        raise CheckpointError(
            f"{path}: base LLM {config.llm_model_name!r} now has digest {info.digest[:16]}…, "
            f"the teacher was trained on {ckpt.card['base_llm']['digest'][:16]}…"
        )
    load_trained(teacher, ckpt.tensors, ckpt.path)
    return teacher.eval(), ckpt


def load_trained(teacher: ILoRATeacher, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = teacher.checkpoint_tensors()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where} does not match the teacher built from its card: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}"
        )
    teacher.load_state_dict(tensors, strict=False)


def load_item_embeddings(path: Path) -> torch.Tensor:
    return read_tensors(Path(path) / ITEM_EMBEDDINGS_FILE)["item_embeddings"]
