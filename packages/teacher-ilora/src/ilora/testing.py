"""Tiny in-process stand-ins for tests of every package: a randomly initialised Llama causal LM
and a word-level tokenizer (no hub, no downloads)."""

from __future__ import annotations

import torch

WORDS = [
    "the",
    "a",
    "user",
    "has",
    "watched",
    "following",
    "movies",
    "in",
    "order",
    "will",
    "watch",
    "next",
    "given",
    "history",
    "movie",
    "predict",
    "what",
    "and",
    "of",
    "to",
    "is",
    ",",
    ".",
    ":",
    "(",
    ")",
    "-",
    "!",
    "?",
    "'",
    "star",
    "wars",
    "toy",
    "story",
    "fargo",
    "heat",
    "casino",
    "jumanji",
    "babe",
    "seven",
    "clueless",
    "braveheart",
    "apollo",
    "13",
    "batman",
    "forever",
    "love",
    "hate",
    "long",
    "short",
    "title",
    "very",
    "extremely",
    "an",
    "incredibly",
    "quite",
    "adventure",
    "night",
    "day",
    "man",
    "woman",
    "city",
    "return",
    "1977",
    "1995",
    "1996",
    "1994",
    "1993",
    "ii",
    "iii",
    "part",
]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # like Llama tokenizers: BOS prepended by add_special_tokens=True
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_tiny_llama(vocab_size: int = 128, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    return model.eval()


def smollm2_135m_config(**overrides):
    """The architecture of the embedded SmolLM2-135M-Instruct, for speed measurements with random
    weights (speed does not depend on the weights) where the model itself is not at hand."""
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def save_tiny_llm(directory, seed: int = 0):
    """A tiny Llama + tokenizer saved like a local checkpoint (`teacher.llm_model_name=<dir>`)."""
    from pathlib import Path

    directory = Path(directory)
    build_tiny_llama(seed=seed).save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


def tiny_teacher_overrides(llm_dir, student_best) -> list[str]:
    """Overrides that make `train-teacher` a seconds-long run on a tiny LLM."""
    return [
        f"teacher.llm_model_name={llm_dir}",
        f"teacher.rec_model_checkpoint_path={student_best}",
        "teacher.target_modules=[q_proj,v_proj]",
        "teacher.train_samples=all",
        "teacher.hidden_size=16",
        "teacher.gate_hidden_size=8",
        "train.max_epochs=1",
        "train.batch_size=4",
        "train.eval_batch_size=8",
        "train.limit_val_batches=1.0",
        "train.lr=0.003",
    ]


def train_tiny_pipeline(root) -> dict:
    """Prepared cyclic data, a trained tiny student and a trained tiny teacher under `root`:
    {"data", "llm", "student", "teacher"} (checkpoint dirs are `checkpoints/best`)."""
    from pathlib import Path

    from ilora import train as teacher_train
    from recdata.testing import cyclic_sequences, make_prepared
    from runkit.testing import run_cli, tiny_run_overrides
    from sasrec import train as student_train

    root = Path(root)
    data = make_prepared(root / "data", cyclic_sequences())
    llm = save_tiny_llm(root / "tiny-llm")
    run_cli(
        student_train.main,
        tiny_run_overrides(
            data, root / "runs" / "student", "train.max_epochs=20", "train.patience=20"
        ),
    )
    student = root / "runs" / "student" / "checkpoints" / "best"
    run_cli(
        teacher_train.main,
        tiny_run_overrides(data, root / "runs" / "teacher", *tiny_teacher_overrides(llm, student)),
    )
    return {
        "data": data,
        "llm": llm,
        "student": student,
        "teacher": root / "runs" / "teacher" / "checkpoints" / "best",
    }
