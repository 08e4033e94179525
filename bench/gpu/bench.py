"""Speed of the GPU path (issue 12), run by bench/gpu/check.sh on one CUDA GPU.

Measures, in one process:
* the GPU's bf16 matmul peak (8192^3 torch.matmul, CUDA-event timed), at the start and the end;
* the teacher on the SmolLM2-135M architecture with random weights (speed does not depend on the
  weights), loaded through `load_llm` as train-teacher loads it (bf16, SDPA or FlashAttention-2),
  in prefix and sequence mode: a training step (forward + backward + AdamW under bf16 autocast, as
  trainer.precision=bf16-mixed) and scoring, on windows of ML-1M-shaped synthetic data;
* the student's training epoch (Lightning, bf16-mixed) on the same data.
Each prints seconds, tokens/s and the achieved fraction of the measured matmul peak, from the
model FLOPs stated with it. Medians of timed repeats after warm-up.

    python -m bench.gpu.bench            # on the GPU (PYTHONPATH: the packages' src dirs)
    python -m bench.gpu.bench --dry-run  # the same code at toy sizes, fp32 on this CPU (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

WORDS_PER_TITLE = 9  # ~ an ML-1M title in BPE tokens; max_title_tokens=10 as in the CPU demo


@dataclass(frozen=True)
class Sizes:
    device: str
    users: int  # ML-1M: 6040 users, 3416 items, ~1M interactions
    items: int
    mean_length: float
    llm: dict  # overrides of the SmolLM2-135M config
    batches: tuple[int, ...]  # teacher batch sizes (windows or prompts); the preset uses 8
    window: int  # the sequence teacher's window (the student's max_seq_len)
    matmul: int
    repeats: int
    student_epochs: int


FULL = Sizes("cuda", 6040, 3416, 150.0, {}, (8, 32), 200, 8192, 10, 3)
DRY = Sizes(
    "cpu",
    40,
    60,
    12.0,
    dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),
    (2,),
    16,
    128,
    1,
    2,
)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: str, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(sizes: Sizes) -> float:
    """FLOP/s of a square matmul in the dtype the LLM runs in (bf16 on CUDA, fp32 on the CPU)."""
    n, dtype = sizes.matmul, torch.bfloat16 if sizes.device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=sizes.device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / median_seconds(lambda: a @ b, sizes.device, sizes.repeats, warmup=3)


# -- data ----------------------------------------------------------------------------------------
def synthetic_dataset(root: Path, sizes: Sizes) -> Path:
    """A prepared dataset of ML-1M's shape (random items, lognormal lengths >= 20), through the
    real prepare; titles of WORDS_PER_TITLE words of the tiny tokenizer's vocabulary."""
    from ilora.testing import WORDS
    from recdata.testing import make_prepared

    g = torch.Generator().manual_seed(0)
    lengths = (
        torch.randn(sizes.users, generator=g) * 0.8
        + torch.log(torch.tensor(sizes.mean_length))
        - 0.32
    ).exp()
    sequences = [
        torch.randint(1, sizes.items + 1, (int(n),), generator=g).tolist()
        for n in lengths.clamp(20, 2000)
    ]
    words = [w for w in WORDS if w.isalpha()]
    titles = {
        i: " ".join(words[(i * 7 + k * 13) % len(words)] for k in range(WORDS_PER_TITLE))
        for i in range(1, sizes.items + 1)
    }
    return make_prepared(root, sequences, titles)


def window_batch(processed: Path, sizes: Sizes, batch: int) -> dict[str, torch.Tensor]:
    """`batch` random training windows of the sequence teacher (as bench.speed.teacher draws
    them)."""
    from recdata.datamodule import SequentialDataModule

    dm = SequentialDataModule(
        processed, max_seq_len=sizes.window, train_mode="windows", num_candidates=0
    )
    dataset = dm.train_dataset()
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(batch))[
        :batch
    ].tolist()
    return dataset.__getitems__(index)


# -- teacher -------------------------------------------------------------------------------------
def save_random_llm(directory: Path, sizes: Sizes) -> Path:
    """The SmolLM2-135M architecture with seeded random weights, saved as a local checkpoint."""
    from transformers import LlamaForCausalLM

    from ilora.testing import build_tiny_tokenizer, smollm2_135m_config

    torch.manual_seed(0)
    LlamaForCausalLM(smollm2_135m_config(**sizes.llm)).to(torch.bfloat16).save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


def build_mode_teacher(llm_dir: Path, processed: Path, mode: str, sizes: Sizes):
    from ilora.checkpoint import build_teacher
    from ilora.config import TeacherConfig
    from recdata.contract import load_prepared
    from sasrec.model import SASRec, SASRecConfig

    titles = load_prepared(processed).titles
    torch.manual_seed(0)
    student = SASRec(SASRecConfig(num_items=len(titles) - 1, max_seq_len=sizes.window)).eval()
    config = TeacherConfig(llm_model_name=str(llm_dir), prompt_mode=mode, max_title_tokens=10)
    return build_teacher(config, student, titles, device=sizes.device, cache_dir=llm_dir.parent)


def prompt_tokens(teacher, history: torch.Tensor) -> tuple[int, int]:
    """(real, padded) prompt tokens of a batch, as the teacher builds it."""
    prompt = teacher.prompts.build(history.tolist() if not teacher.sequence_mode else history)
    return int(prompt["attention_mask"].sum()), prompt["attention_mask"].numel()


def forward_flops(teacher, batch: int, width: int) -> tuple[float, float]:
    """(linear, attention) FLOPs of one LLM forward over (batch, width) padded tokens: 2 x the
    weights of every linear layer (adapters included, the unused LM head not) per token, and
    4 x batch x width^2 x hidden per layer for scores and values (a padding mask: no causal
    skip)."""
    from ilora.moe_lora import MoELoRALinear

    body = teacher.llm.base_model
    linear = sum(m.weight.numel() for m in body.modules() if isinstance(m, nn.Linear))
    linear += sum(
        m.lora_A.numel() + m.lora_B.numel() for m in body.modules() if isinstance(m, MoELoRALinear)
    )
    cfg = body.config
    return (
        2.0 * linear * batch * width,
        4.0 * batch * width**2 * cfg.hidden_size * cfg.num_hidden_layers,
    )


def autocast(device: str):
    """bf16 autocast on CUDA (trainer.precision=bf16-mixed); off on the CPU (fp32 there)."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")


def time_teacher(teacher, batch: dict, sizes: Sizes) -> dict:
    """Seconds per training step and per scoring pass; prefix mode on one prompt per window (its
    last 10 items), sequence mode on the whole windows."""
    from bench.speed.teacher_steps import PREFIX_ITEMS, step_functions

    prefix = not teacher.sequence_mode
    history, targets = batch["history"].to(sizes.device), batch["targets"].to(sizes.device)
    train_step, score = step_functions(
        teacher, history, targets, precision=lambda: autocast(sizes.device)
    )
    history = history[:, -PREFIX_ITEMS:] if prefix else history
    real, padded = prompt_tokens(teacher, history.cpu())
    positions = len(history) if prefix else int((targets > 0).sum())
    return {
        "train": median_seconds(train_step, sizes.device, sizes.repeats),
        "score": median_seconds(score, sizes.device, sizes.repeats),
        "real": real,
        "padded": padded,
        "positions": positions,
        "flops": forward_flops(teacher, len(history), padded // len(history)),
    }


def report_teacher(mode: str, batch_size: int, t: dict, peak: float) -> None:
    linear, attention = t["flops"]
    # frozen base: backward computes activation gradients only (1x the linear forward, 2x attention)
    work = {"train": 2 * linear + 3 * attention, "score": linear + attention}
    for phase in ("train", "score"):
        s = t[phase]
        print(
            f"  {mode:8s} batch {batch_size:3d} {phase:5s}: {s * 1e3:8.1f} ms  "
            f"{t['real'] / s:10.0f} tokens/s ({t['padded'] / s:10.0f} padded)  "
            f"{t['positions'] / s:9.0f} positions/s  {work[phase] / s / 1e12:7.2f} TFLOP/s = "
            f"{work[phase] / s / peak:.3f} of peak"
        )


def bench_teacher(llm_dir: Path, processed: Path, sizes: Sizes, peak: float) -> None:
    for mode in ("prefix", "sequence"):
        teacher, info = build_mode_teacher(llm_dir, processed, mode, sizes)
        print(
            f"teacher {mode}: {info.num_parameters / 1e6:.1f}M-parameter LLM, {info.dtype}, "
            f"{info.attn_implementation}, on {info.device}; MoE-LoRA "
            "r=8 E=4 on q,k,v,o,gate,up,down"
        )
        for batch_size in sizes.batches:
            t = time_teacher(teacher, window_batch(processed, sizes, batch_size), sizes)
            print(
                f"  {mode:8s} batch {batch_size:3d}: {t['real']} prompt tokens ({t['padded']} "
                f"padded), {t['positions']} "
                f"{'prompts' if mode == 'prefix' else 'training positions'}"
            )
            report_teacher(mode, batch_size, t, peak)
        del teacher
        if sizes.device == "cuda":
            torch.cuda.empty_cache()


# -- student -------------------------------------------------------------------------------------
class EpochTimer(Callback):
    """Wall time of every training epoch (device synchronised)."""

    def __init__(self, device: str):
        self.device, self.seconds = device, []

    def on_train_epoch_start(self, trainer, module):
        synchronize(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self.start)


def bench_student(processed: Path, sizes: Sizes, peak: float) -> None:
    """Seconds per epoch of the student preset (batch 128, hidden 64, 2 blocks, full softmax),
    bf16-mixed on CUDA: epochs after the first (compilation, allocator warm-up) are timed."""
    import lightning as L

    from recdata.datamodule import SequentialDataModule
    from sasrec.model import SASRecConfig
    from sasrec.module import SASRecModule

    dm = SequentialDataModule(processed, max_seq_len=sizes.window, batch_size=128, num_candidates=0)
    dm.setup()
    batches = [
        (int((b["targets"] > 0).sum()), b["history"].numel(), b["history"].shape[1])
        for b in dm.train_dataloader()
    ]
    positions, padded = sum(b[0] for b in batches), sum(b[1] for b in batches)
    config = SASRecConfig(num_items=dm.num_items, max_seq_len=sizes.window)
    h, n = config.hidden_size, config.num_items + 1
    # forward per padded token and block: qkv, out and the 2-layer FFN (6 h^2 weights) and
    # attention (4 h width); per supervised position the full-softmax output (2 h N);
    # training = 3 x forward
    blocks = (
        sum(tokens * (2 * 6 * h * h + 4 * h * width) for _, tokens, width in batches)
        * config.num_blocks
    )
    work = 3 * (blocks + positions * 2 * h * n)
    module = SASRecModule(config, lr=2e-3)
    timer = EpochTimer(sizes.device)
    trainer = L.Trainer(
        accelerator="gpu" if sizes.device == "cuda" else "cpu",
        devices=1,
        max_epochs=sizes.student_epochs,
        precision="bf16-mixed" if sizes.device == "cuda" else "32-true",
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    epoch = statistics.median(timer.seconds[1:] or timer.seconds)
    print(
        f"student epoch ({len(dm.train_dataset())} user sequences, {positions} training positions, "
        f"{padded} padded tokens): {epoch:.2f} s = {positions / epoch:.0f} positions/s "
        f"({padded / epoch:.0f} padded tokens/s), {work / epoch / 1e12:.3f} TFLOP/s = "
        f"{work / epoch / peak:.4f} of peak; epochs {[round(s, 2) for s in timer.seconds]}"
    )


def run(sizes: Sizes) -> None:
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU")
    import lightning
    import transformers

    transformers.utils.logging.disable_progress_bar()
    where = torch.cuda.get_device_name() if sizes.device == "cuda" else "CPU (dry run, toy sizes)"
    print(
        f"{where}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"lightning {lightning.__version__}"
    )
    peak = matmul_peak(sizes)
    print(
        f"matmul peak ({sizes.matmul}^3, {'bf16' if sizes.device == 'cuda' else 'fp32'}): "
        f"{peak / 1e12:.1f} TFLOP/s"
    )
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        processed = synthetic_dataset(Path(tmp) / "data", sizes)
        bench_teacher(save_random_llm(Path(tmp) / "llm", sizes), processed, sizes, peak)
        bench_student(processed, sizes, peak)
    print(f"matmul peak at the end: {matmul_peak(sizes) / 1e12:.1f} TFLOP/s")


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu.bench", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--dry-run", action="store_true", help="toy sizes, fp32 on the CPU")
    run(DRY if ap.parse_args().dry_run else FULL)


if __name__ == "__main__":
    main()
