"""Teacher speed on this machine (fp32, CPU) at the SmolLM2-135M shape.

Prompt modes (``--section modes``, ML-100K shapes): training positions per second and prefixes
scored per second of the sequence-mode teacher (one causal pass per user window reads out every
prefix) against the prefix-mode teacher (one pass per prefix), in one process on the same LLM:
targets sequence / prefix >= 50x with one token per item, >= 5x with titles
(``teacher.sequence_titles=true``). The batches are real ML-100K training batches of the sequence
teacher's train loader (windows grouped by length, as it trains), one from each length stratum of
the epoch's batches; the prefix prompts show their windows' last 10 items, as the demo's teacher
sees them.

Adapters (``--section adapters``, batch 8 x 96 tokens):
(a) training step (forward + backward + AdamW over the adapters, gate and a small item head) of
    MoE-LoRA (r=8, E=4, dropout 0.1) against plain peft LoRA (r=8, dropout 0.1) on the same
    targets q,k,v,o,gate,up,down -- target ratio <= 1.15;
(b) MoE-LoRA inference tokens/s and achieved GFLOP/s as a fraction of this process's measured fp32
    matmul peak (warm 2048 x 2048 torch.matmul) -- target >= 0.5.

Uses the embedded SmolLM2-135M-Instruct when its converted copy is cached, else a randomly
initialised Llama with the same config. Medians of interleaved repeats after warm-up.

    uv run python -m bench.speed.teacher [--section modes|adapters|all] [--repeats 5] [--threads 2]
                                          [--windows 8] [--batches 4]

Labelling all 97,171 ML-100K training prefixes is measured by the real command (its log prints
the wall time): ``uv run precompute-soft-labels distill.soft_label_samples=all``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ, NUM_ITEMS, SASREC_DIM = 8, 96, 1682, 64


def load_base(cache_dir: Path | None):
    from ilora.llm import EMBEDDED_LLMS, default_cache_dir, load_llm

    cache = cache_dir or default_cache_dir()
    cached = cache / "models" / EMBEDDED_LLMS["smollm2-135m"].cache_name / "ilora_source.json"
    if cached.is_file():
        model, _, info = load_llm("embedded:smollm2-135m", cache_dir=cache)
        return model, f"embedded SmolLM2-135M-Instruct (cached, load {info.load_seconds:.2f}s)"
    from transformers import LlamaForCausalLM

    from ilora.testing import smollm2_135m_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(smollm2_135m_config()).requires_grad_(False).eval()
    return model, "random Llama with the SmolLM2-135M config (embedded model not cached)"


def backbone_of(model):
    """The decoder stack (no LM head: the teacher reads the last hidden state only)."""
    inner = model
    if hasattr(inner, "base_model") and hasattr(inner.base_model, "model"):  # PeftModel
        inner = inner.base_model.model
    return inner.model


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median_time(lambda: torch.matmul(a, b), repeats, warmup=3)
    return 2 * n**3 / t / 1e9


class TrainStep:
    """One optimizer step of an adapter-tuned LLM + item head on a fixed random batch."""

    def __init__(self, model, gate=None):
        from ilora.moe_lora import set_gate

        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 49152, (BATCH, SEQ), generator=g)
        self.mask = torch.ones_like(self.ids)
        self.labels = torch.randint(1, NUM_ITEMS + 1, (BATCH,), generator=g)
        self.u = torch.randn(BATCH, SASREC_DIM, generator=g)
        self.model, self.gate, self.set_gate = model, gate, set_gate
        self.backbone = backbone_of(model)
        self.head = nn.Linear(self.backbone.config.hidden_size, NUM_ITEMS + 1)
        params = [p for p in model.parameters() if p.requires_grad] + list(self.head.parameters())
        if gate is not None:
            params += list(gate.parameters())
        self.num_trainable = sum(p.numel() for p in params)
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        model.train()

    def __call__(self):
        if self.gate is not None:
            self.set_gate(self.model, self.gate(self.u))
        h = self.backbone(input_ids=self.ids, attention_mask=self.mask, use_cache=False)
        logits = self.head(h.last_hidden_state[:, -1])
        loss = nn.functional.cross_entropy(logits, self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def forward_flops(backbone, tokens: int, batch: int, seq: int) -> float:
    """2 * (linear params) * tokens + attention scores/values (full, as SDPA computes them)."""
    from ilora.moe_lora import MoELoRALinear

    linear = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, nn.Linear))
    adapters = sum(
        m.lora_A.numel() + m.lora_B.numel()
        for m in backbone.modules()
        if isinstance(m, MoELoRALinear)
    )
    cfg = backbone.config
    attn = 4 * batch * seq * seq * cfg.hidden_size * cfg.num_hidden_layers
    return 2 * (linear + adapters) * tokens + attn


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 1)[0]
    except OSError:
        return "n/a"


def items_and_positions(batch: dict) -> tuple[int, int]:
    """(real window items, training positions) of a window batch."""
    return int((batch["history"] > 0).sum()), int((batch["targets"] > 0).sum())


def ml100k_batches(batch_size: int, count: int, seed: int = 0):
    """`count` of the sequence teacher's real training batches of ML-100K from its train loader
    (windows of 200 items, grouped by length as the trainer groups them: a random draw of windows
    would pad every row to the longest and time padding the trainer never pays), and the whole
    item vocabulary's titles. Stratified by length: the epoch's batches sorted by their items, the
    middle batch of each of `count` equal strata (ties by training positions), so the sum over the
    picks is the epoch's mix of short windows (the instruction weighs more) and long ones
    (overlapping windows re-read context). Also returns the epoch's positions per item."""
    from recdata.datamodule import SequentialDataModule
    from recdata.prepare import ensure_prepared

    processed = ensure_prepared(
        "ml-100k", Path("data/ml-100k"), Path("data/processed/ml-100k"), default_cache()
    )
    dm = SequentialDataModule(
        processed,
        max_seq_len=200,
        train_mode="windows",
        num_candidates=0,
        batch_size=batch_size,
        seed=seed,
    )
    dm.setup()
    batches = sorted(dm.train_dataloader(), key=items_and_positions)
    strata = torch.linspace(0, len(batches), count + 1)
    pick = ((strata[:-1] + strata[1:]) / 2).long().clamp(max=len(batches) - 1).tolist()
    items, positions = (sum(c) for c in zip(*map(items_and_positions, batches), strict=True))
    return [batches[i] for i in pick], dm.dataset.titles, positions / items


def default_cache() -> Path:
    from ilora.llm import default_cache_dir

    return default_cache_dir()


def mode_teacher(model, tokenizer, titles, mode: str, sequence_titles: bool = False):
    from ilora.config import TeacherConfig
    from ilora.model import ILoRATeacher
    from sasrec.model import SASRec, SASRecConfig

    torch.manual_seed(0)
    student = SASRec(SASRecConfig(num_items=len(titles) - 1, max_seq_len=200)).eval()
    config = TeacherConfig(prompt_mode=mode, sequence_titles=sequence_titles, max_title_tokens=10)
    return ILoRATeacher(model, tokenizer, student, titles, config)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(_times(fn, repeats))


def _times(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def time_mode(
    teacher, history: torch.Tensor, targets: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """(s per training step, s per scoring batch), see bench.speed.teacher_steps."""
    from bench.speed.teacher_steps import step_functions

    train_step, score = step_functions(teacher, history, targets)
    return timed(train_step, repeats), timed(score, repeats)


def compare_modes(args) -> None:
    """Training positions/s and prefixes scored/s, sequence vs prefix mode, same LLM and batches:
    per mode, the sum over the batches of the positions over the sum of the (median) times."""
    from ilora.llm import load_llm

    batches, titles, epoch_share = ml100k_batches(args.windows, args.batches)
    real, positions = (sum(c) for c in zip(*map(items_and_positions, batches), strict=True))
    padded = sum(b["history"].numel() for b in batches)
    print(
        f"\nprompt modes: {len(batches)} length-grouped ML-100K training batches of {args.windows} "
        f"windows (one per {1 / len(batches):.0%} of the epoch's batches by length), {positions} "
        f"training positions in {real} items ({positions / real:.0%}; the whole epoch: "
        f"{epoch_share:.0%}; the rest is overlapping windows' context), {real / padded:.0%} of the "
        f"padded columns real, fp32, {torch.get_num_threads()} threads"
    )
    rows = {}
    for name, mode, with_titles in (
        ("prefix", "prefix", False),
        ("sequence", "sequence", False),
        ("sequence + titles", "sequence", True),
    ):
        model, tokenizer, _ = load_llm(
            "embedded:smollm2-135m", cache_dir=args.cache_dir or default_cache()
        )
        teacher = mode_teacher(model, tokenizer, titles, mode, with_titles)
        step = fwd = 0.0
        for batch in batches:
            batch_step, batch_fwd = time_mode(
                teacher, batch["history"], batch["targets"], args.repeats
            )
            step, fwd = step + batch_step, fwd + batch_fwd
        done = len(batches) * args.windows if mode == "prefix" else positions
        rows[name] = (done / step, done / fwd)
        print(
            f"    {name:18s}: train {step:7.2f} s = {done / step:8.1f} positions/s;  score "
            f"{fwd:7.2f} s = {done / fwd:8.1f} prefixes/s  ({done} "
            f"{'prompts' if mode == 'prefix' else 'positions'})"
        )
    base_train, base_score = rows["prefix"][:2]
    for name, target in (("sequence", 50), ("sequence + titles", 5)):
        train_rate, score_rate = rows[name][:2]
        print(
            f"    {name} / prefix: training positions/s x{train_rate / base_train:.1f}, "
            f"prefixes scored/s x{score_rate / base_score:.1f}  (target >= {target}x)"
        )
    print(
        "    at the sequence rate, labelling 97,171 prefixes takes "
        f"~{97171 / rows['sequence'][1] / 60:.1f} min of forward passes (the real command adds "
        "loading, window overlap and history masking)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.speed.teacher", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--section", choices=("modes", "adapters", "all"), default="all")
    ap.add_argument(
        "--windows", type=int, default=8, help="windows per batch (modes section; the trainer's: 8)"
    )
    ap.add_argument(
        "--batches",
        type=int,
        default=4,
        help="training batches, one per length stratum (modes section)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument(
        "--torch-dropout-variant",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time MoE-LoRA with torch's nn.Dropout",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.section in ("modes", "all"):
        compare_modes(args)
    if args.section in ("adapters", "all"):
        compare_adapters(args)


def compare_adapters(args) -> None:

    from peft import LoraConfig, get_peft_model

    from ilora.moe_lora import (
        GateNetwork,
        MoELoRAConfig,
        inject_moe_lora,
        moe_lora_layers,
        set_gate,
    )

    peak = matmul_peak()
    print(
        f"threads={torch.get_num_threads()}  fp32 matmul peak (2048^3): {peak:.1f} GFLOP/s  "
        f"(1-min load average {loadavg()}: other processes on the machine skew every figure)"
    )

    moe_model, what = load_base(args.cache_dir)
    lora_model, _ = load_base(args.cache_dir)
    print(f"model: {what}; batch {BATCH} x {SEQ} tokens, fp32")

    cfg = MoELoRAConfig(r=8, num_experts=4, alpha=32, dropout=0.1, target_modules=TARGETS)
    replaced = inject_moe_lora(moe_model, cfg)
    gate = GateNetwork(SASREC_DIM, cfg.num_experts)
    lora_model = get_peft_model(
        lora_model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=TARGETS)
    )
    moe_step, lora_step = TrainStep(moe_model, gate), TrainStep(lora_model)
    print(
        f"MoE-LoRA: {len(replaced)} layers, {moe_step.num_trainable / 1e6:.2f}M trainable; "
        f"LoRA: {lora_step.num_trainable / 1e6:.2f}M trainable"
    )
    steps = {"MoE-LoRA r=8 E=4": moe_step, "peft LoRA r=8": lora_step}
    if args.torch_dropout_variant:
        # the same MoE-LoRA with torch's nn.Dropout (CPU bernoulli_, as peft uses) instead of
        # LoRADropout: separates the layer's structure from the faster dropout mask
        variant, _ = load_base(args.cache_dir)
        inject_moe_lora(variant, cfg)
        for _, layer in moe_lora_layers(variant):
            layer.dropout = nn.Dropout(cfg.dropout)
        steps["MoE-LoRA, nn.Dropout"] = TrainStep(variant, GateNetwork(SASREC_DIM, cfg.num_experts))

    # (a) training step, interleaved so drift hits all variants equally
    for fn in steps.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for key, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"\n(a) training step (fwd + bwd + AdamW), median (min) of {args.repeats} interleaved")
    for k in steps:
        print(f"    {k:22s}: {med[k]:.3f} s/step ({best[k]:.3f})  {BATCH / med[k]:.2f} samples/s")
    ref = "peft LoRA r=8"
    for k in steps:
        if k != ref:
            print(
                f"    ratio {k} / LoRA: {med[k] / med[ref]:.3f} ({best[k] / best[ref]:.3f})"
                "  (target <= 1.15)"
            )

    # (b) inference
    del steps, lora_step, lora_model
    moe_model.eval()
    backbone = backbone_of(moe_model)
    ids, mask = moe_step.ids, moe_step.mask
    with torch.no_grad():
        set_gate(moe_model, gate(moe_step.u))

        def fwd():
            backbone(input_ids=ids, attention_mask=mask, use_cache=False)

        inf_times = []
        fwd()
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fwd()
            inf_times.append(time.perf_counter() - t0)
    tokens = BATCH * SEQ
    flops = forward_flops(backbone, tokens, BATCH, SEQ)
    print(f"\n(b) MoE-LoRA inference forward (no grad), median (min) of {args.repeats}")
    for label, t_inf in (("median", statistics.median(inf_times)), ("min", min(inf_times))):
        gflops = flops / t_inf / 1e9
        print(
            f"    {label:6s}: {t_inf:.3f} s/batch, {tokens / t_inf:.0f} tokens/s, "
            f"{BATCH / t_inf:.2f} samples/s, {gflops:.1f} GFLOP/s = {gflops / peak:.2f} of "
            "matmul peak (target >= 0.5)"
        )
    peak_end = matmul_peak()
    print(f"\nmatmul peak re-measured at the end: {peak_end:.1f} GFLOP/s; load average {loadavg()}")


if __name__ == "__main__":
    main()
