"""The teacher on a real CUDA device (skipped without one; bench/gpu_check.sh runs them): the
dtype and attention chosen there, bf16 SDPA with left padding, and a tiny teacher trained,
validated, embedded and tested on the GPU."""

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ilora import train as teacher_train
from ilora.checkpoint import ITEM_EMBEDDINGS_FILE, build_teacher
from ilora.config import TeacherConfig
from ilora.llm import flash_attn_available, load_llm, select_dtype
from ilora.model import ILoRATeacher
from ilora.module import TeacherModule
from ilora.moe_lora import moe_lora_layers
from ilora.testing import save_tiny_llm, tiny_teacher_overrides
from recdata.testing import cyclic_sequences, make_prepared
from runkit import recipe
from runkit.testing import run_cli, tiny_run_overrides
from sasrec import train as student_train
from sasrec.model import SASRec, SASRecConfig

pytestmark = pytest.mark.cuda
GPU = ["trainer.accelerator=gpu", "trainer.devices=1"]
ATTENTION = "flash_attention_2" if flash_attn_available() else "sdpa"
TITLES = [""] + [f"the movie {'long ' * (i % 4)}{i}" for i in range(1, 41)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Cyclic data, a tiny LLM checkpoint and a tiny student trained on the GPU."""
    root = tmp_path_factory.mktemp("cuda")
    data, llm = make_prepared(root / "data", cyclic_sequences()), save_tiny_llm(root / "llm")
    run_cli(
        student_train.main, tiny_run_overrides(data, root / "student", "train.max_epochs=20", *GPU)
    )
    return {
        "root": root,
        "data": data,
        "llm": llm,
        "student": root / "student" / "checkpoints" / "best",
    }


def test_the_llm_loads_in_bf16_with_the_best_attention_this_gpu_has(tiny, tmp_path):
    assert torch.cuda.is_bf16_supported() and select_dtype("cuda", "auto") == torch.bfloat16
    model, _, info = load_llm(str(tiny["llm"]), device="cuda", cache_dir=tmp_path)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cuda", torch.bfloat16)}
    assert (
        info.dtype == "bfloat16"
        and info.attn_implementation == ATTENTION == model.config._attn_implementation
    )


@pytest.mark.skipif(not flash_attn_available(), reason="flash_attn is not installed")
def test_flash_attention_2_is_used_when_installed(tiny, tmp_path):
    model, _, info = load_llm(
        str(tiny["llm"]), device="cuda", use_flash_attention=True, cache_dir=tmp_path
    )
    assert info.attn_implementation == model.config._attn_implementation == "flash_attention_2"


def gpu_teacher(tiny, mode: str, precision: str = "auto") -> ILoRATeacher:
    torch.manual_seed(0)
    student = SASRec(
        SASRecConfig(num_items=40, hidden_size=16, num_blocks=1, num_heads=1, max_seq_len=16)
    )
    config = TeacherConfig(
        residual_student_state=True,
        llm_model_name=str(tiny["llm"]),
        target_modules=["q_proj", "v_proj"],
        hidden_size=16,
        gate_hidden_size=8,
        max_history=5,
        prompt_mode=mode,
    )
    teacher, _ = build_teacher(
        config, student, TITLES, device="cuda", precision=precision, cache_dir=tiny["root"]
    )
    with torch.no_grad():  # non-zero adapters and head, so the LLM path shows in the scores
        for _, layer in moe_lora_layers(teacher.llm):
            layer.lora_B.normal_(std=0.2)
        teacher.head.weight.normal_(std=0.2)
    return teacher.eval()


def left_pad(rows, width=16):
    return torch.tensor([[0] * (width - len(r)) + r for r in rows], device="cuda")


def assert_close_bf16(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to bf16 rounding (8-bit mantissa), relative to the scores' scale; padding (-inf)
    alike."""
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(actual)), "NaN or a different -inf pattern"
    scale = expected[finite].abs().max()
    assert (actual[finite] - expected[finite]).abs().max() <= 0.03 * scale


@pytest.mark.parametrize("mode", ["prefix", "sequence"])
@torch.no_grad()
def test_bf16_scores_of_a_left_padded_batch_match_each_row_alone(tiny, mode):
    """SDPA (or FlashAttention-2) in bf16 with padding masks: fully masked padding rows must not
    leak NaN into real tokens, and a row scores as it does alone."""
    teacher = gpu_teacher(tiny, mode)
    assert next(teacher.llm.parameters()).dtype == torch.bfloat16
    rows = [[3, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9], [11, 12, 13, 14]]
    together = teacher(left_pad(rows))
    assert together.dtype == torch.float32 and torch.isfinite(together[:, 1:]).all()
    for r, row in enumerate(rows):
        assert_close_bf16(together[r], teacher(left_pad([row]))[0])


@torch.no_grad()
def test_bf16_sequence_pass_scores_every_position_as_its_prefix_alone(tiny):
    teacher = gpu_teacher(tiny, "sequence")
    items = [3, 17, 5, 40, 22, 9, 1, 31]
    window = teacher.score_all_positions(left_pad([items], len(items)))[0]
    alone = torch.cat([teacher(left_pad([items[: t + 1]], len(items))) for t in range(len(items))])
    assert_close_bf16(window, alone)


@torch.no_grad()
def test_bf16_teacher_is_close_to_the_same_teacher_in_fp32(tiny):
    history = left_pad([[3, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]])
    assert_close_bf16(
        gpu_teacher(tiny, "sequence")(history), gpu_teacher(tiny, "sequence", "fp32")(history)
    )


@pytest.fixture
def devices_seen(monkeypatch):
    """Where every score call of a run and its title embeddings ran: (phase, batch device, LLM
    device, autocast on) per call, phase "test" inside the run's test pass."""
    seen, phase = {"score": [], "titles": []}, {"now": "fit"}
    score, titles, evaluate = (
        TeacherModule.score,
        ILoRATeacher.item_title_embeddings,
        recipe.evaluate,
    )

    def spy_score(self, batch):
        llm = next(self.teacher.llm.parameters()).device.type
        seen["score"].append(
            (phase["now"], batch["history"].device.type, llm, torch.is_autocast_enabled("cuda"))
        )
        return score(self, batch)

    def spy_titles(self, *args, **kwargs):
        seen["titles"].append(next(self.llm.parameters()).device.type)
        return titles(self, *args, **kwargs)

    def spy_evaluate(*args, **kwargs):
        phase["now"] = "test"
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(TeacherModule, "score", spy_score)
    monkeypatch.setattr(ILoRATeacher, "item_title_embeddings", spy_titles)
    monkeypatch.setattr(recipe, "evaluate", spy_evaluate)
    return seen


@pytest.mark.parametrize(
    ("mode", "precision"),
    [("sequence", "bf16-mixed"), ("prefix", "bf16-mixed"), ("sequence", "32-true")],
)
def test_a_tiny_teacher_trains_validates_embeds_and_tests_on_the_gpu(
    tiny, devices_seen, mode, precision
):
    run = tiny["root"] / f"teacher-{mode}-{precision}"
    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            tiny["data"],
            run,
            *tiny_teacher_overrides(tiny["llm"], tiny["student"]),
            *GPU,
            f"trainer.precision={precision}",
            f"teacher.prompt_mode={mode}",
        ),
    )
    calls = devices_seen["score"]
    phases = [c[0] for c in calls]
    assert "fit" in phases and "test" in phases
    assert {c[1:3] for c in calls} == {("cuda", "cuda")}  # validation and the test pass
    # test runs as validation did
    assert {c[3] for c in calls if c[0] == "test"} == {precision == "bf16-mixed"}
    assert devices_seen["titles"] == ["cuda"]
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    best = run / "checkpoints" / "best"
    card = json.loads((best / "card.json").read_text())
    assert (
        card["base_llm"]["dtype"] == "bfloat16"
        and card["base_llm"]["attn_implementation"] == ATTENTION
    )
    embeddings = load_file(best / ITEM_EMBEDDINGS_FILE)["item_embeddings"]
    assert embeddings.shape == (41, 32) and torch.isfinite(embeddings).all()


def test_two_ddp_steps_of_the_teacher_on_one_gpu(tiny):
    """strategy=ddp (NCCL, one process): every trainable tensor gets a gradient each step, or
    DDP's reducer fails on the second step."""
    run = tiny["root"] / "teacher-ddp"
    overrides = tiny_run_overrides(
        tiny["data"],
        run,
        *tiny_teacher_overrides(tiny["llm"], tiny["student"]),
        *GPU,
        "trainer.strategy=ddp",
        "trainer.precision=bf16-mixed",
        "train.max_steps=2",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ilora.train", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"run_dir: {run}"
    assert (
        json.loads((run / "checkpoints" / "last" / "card.json").read_text())["metrics"][
            "global_step"
        ]
        == 2
    )
