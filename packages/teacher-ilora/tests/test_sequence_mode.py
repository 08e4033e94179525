"""The sequence-mode teacher: one causal pass per window reads out every prefix, exactly as the
prefix would read out alone, and its checkpoints load, in both modes."""

import json
import shutil

import pytest
import torch

from ilora.checkpoint import load_teacher
from ilora.config import TeacherConfig
from ilora.model import ILoRATeacher, mean_title_states
from ilora.moe_lora import moe_lora_layers
from ilora.testing import build_tiny_llama, build_tiny_tokenizer, tiny_teacher_overrides
from recdata.contract import load_prepared
from runkit.testing import run_cli, tiny_run_overrides
from runkit.vectors import standardise_rows
from sasrec.model import SASRec, SASRecConfig

TITLES = [""] + [f"the movie {'long ' * (i % 4)}{i}" for i in range(1, 41)]
ATOL = 1e-4  # fp32


def make_teacher(*, titles_in_prompt=False, window=12, constant_gate=False, **overrides):
    torch.manual_seed(0)
    student = SASRec(
        SASRecConfig(num_items=40, hidden_size=16, num_blocks=1, num_heads=1, max_seq_len=16)
    )
    config = TeacherConfig(
        residual_student_state=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
        hidden_size=16,
        gate_hidden_size=8,
        prompt_mode="sequence",
        sequence_titles=titles_in_prompt,
        max_sequence_items=window,
        **overrides,
    )
    teacher = ILoRATeacher(build_tiny_llama(), build_tiny_tokenizer(), student, TITLES, config)
    with torch.no_grad():  # non-zero adapters and head, so the gates and the LLM path matter
        for _, layer in moe_lora_layers(teacher.llm):
            layer.lora_B.normal_(std=0.2)
        teacher.head.weight.normal_(std=0.2)
        if (
            constant_gate
        ):  # the last gate layer outputs zeros: softmax -> the uniform gate, whatever u
            teacher.gate.net[-1].weight.zero_()
            teacher.gate.net[-1].bias.zero_()
    return teacher.eval()


def left_pad(rows, width):
    return torch.tensor([[0] * (width - len(r)) + list(r) for r in rows])


ITEMS = [3, 17, 5, 40, 22, 9, 1, 31, 8, 12]


@pytest.mark.parametrize("titles_in_prompt", [False, True])
@pytest.mark.parametrize("constant_gate", [True, False])
def test_each_position_scores_as_its_prefix_alone(titles_in_prompt, constant_gate):
    """Position t of one pass == items[:t+1] encoded alone in the same format and read at its last
    item token; with per-position gates too, since u_t depends on the prefix ending at t only."""
    teacher = make_teacher(titles_in_prompt=titles_in_prompt, constant_gate=constant_gate)
    with torch.no_grad():
        window = teacher.score_all_positions(left_pad([ITEMS], len(ITEMS)))[0]
        alone = torch.cat(
            [teacher(left_pad([ITEMS[: t + 1]], len(ITEMS))) for t in range(len(ITEMS))]
        )
    finite = torch.isfinite(alone)
    assert torch.equal(finite, torch.isfinite(window))
    assert (window[finite] - alone[finite]).abs().max() <= ATOL


def test_per_position_gates_differ_and_matter():
    teacher = make_teacher()
    u = teacher.student.encode(left_pad([ITEMS], len(ITEMS)))
    gates = teacher.gate(u)[0]
    assert not torch.allclose(gates[0], gates[-1])  # one gate per prefix, not one per window
    with torch.no_grad():
        per_position = teacher.score_all_positions(left_pad([ITEMS], len(ITEMS)))
        teacher.gate.net[-1].weight.zero_()
        teacher.gate.net[-1].bias.zero_()
        uniform = teacher.score_all_positions(left_pad([ITEMS], len(ITEMS)))
    assert (per_position[..., 1:] - uniform[..., 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("titles_in_prompt", [False, True])
def test_causality_a_later_item_leaves_earlier_positions_unchanged(titles_in_prompt):
    teacher = make_teacher(titles_in_prompt=titles_in_prompt)
    changed = list(ITEMS)
    changed[6] = 38
    with torch.no_grad():
        a = teacher.score_all_positions(left_pad([ITEMS], len(ITEMS)))[0]
        b = teacher.score_all_positions(left_pad([changed], len(ITEMS)))[0]
    torch.testing.assert_close(a[:6, 1:], b[:6, 1:], rtol=0, atol=ATOL)
    assert (a[6:, 1:] - b[6:, 1:]).abs().max() > 1e-3


def test_padding_and_batch_composition_leave_scores_unchanged():
    teacher = make_teacher()
    short, other = ITEMS[:4], [7, 7, 2, 9, 11, 13, 15, 17, 19, 21, 23, 25]
    with torch.no_grad():
        alone = teacher.score_all_positions(left_pad([short], 4))[0]
        padded = teacher.score_all_positions(left_pad([short], 12))[0, -4:]
        batched = teacher.score_all_positions(left_pad([other, short, ITEMS], 12))[1, -4:]
    torch.testing.assert_close(padded[:, 1:], alone[:, 1:], rtol=0, atol=ATOL)
    torch.testing.assert_close(batched[:, 1:], alone[:, 1:], rtol=0, atol=ATOL)


def test_a_prefix_in_two_overlapping_windows_with_the_same_context_scores_the_same():
    teacher = make_teacher()
    with torch.no_grad():
        long = teacher.score_all_positions(left_pad([ITEMS], 10))[0]
        short = teacher.score_all_positions(left_pad([ITEMS[:6]], 6))[0]
    torch.testing.assert_close(long[:6, 1:], short[:, 1:], rtol=0, atol=ATOL)


def test_last_position_reads_only_the_newest_window():
    """forward() on a history longer than the window scores like its last `window` items."""
    teacher = make_teacher(window=4)
    with torch.no_grad():
        full = teacher(left_pad([ITEMS], 10))
        tail = teacher(left_pad([ITEMS[-4:]], 4))
    torch.testing.assert_close(full[:, 1:], tail[:, 1:], rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="exceeds teacher.max_sequence_items=4"):
        teacher.score_all_positions(left_pad([ITEMS], 10))


def test_title_states_are_the_base_llms_eval_mode_title_states():
    """The title projector reads the base LLM's (no adapters, no dropout) standardised mean state
    over each title, computed once, and the item token input uses it."""
    teacher = make_teacher()
    base = build_tiny_llama()  # same seed: the teacher's base before adapters were injected
    from ilora.prompt import ensure_item_token

    ensure_item_token(build_tiny_tokenizer(), base)
    expected = standardise_rows(mean_title_states(base, teacher.prompts))
    torch.testing.assert_close(teacher.title_states, expected, rtol=0, atol=1e-6)
    vectors = teacher.item_vectors(torch.tensor([3]))
    torch.testing.assert_close(
        vectors,
        teacher.projector(teacher.student.item_table()[[3]])
        + teacher.title_projector(expected[[3]]),
    )


def test_without_the_title_projector_the_item_token_is_the_student_vector_alone():
    teacher = make_teacher(use_title_projector=False)
    assert teacher.title_projector is None and "title_states" not in teacher.checkpoint_tensors()
    torch.testing.assert_close(
        teacher.item_vectors(torch.tensor([3])),
        teacher.projector(teacher.student.item_table()[[3]]),
    )


def test_training_scores_cover_the_targets_of_a_window_batch():
    teacher = make_teacher()
    history = left_pad([ITEMS[:5], ITEMS[:8]], 8)
    targets = torch.zeros_like(history)
    targets[1, 5:] = torch.tensor(ITEMS[6:9])  # only the window's last three columns are read out
    scores, kept = teacher.training_scores({"history": history, "targets": targets})
    assert scores.shape == (3, 41) and kept.tolist() == ITEMS[6:9]
    with torch.no_grad():
        torch.testing.assert_close(
            scores[:, 1:], teacher.score_all_positions(history)[1, 5:, 1:], rtol=0, atol=ATOL
        )


# -- checkpoints of both modes, through the real commands ------------------------------------------
def _train(tiny_pipeline, run, *extra):
    from ilora import train as teacher_train

    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            tiny_pipeline["data"],
            run,
            *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
            *extra,
        ),
    )
    return run / "checkpoints" / "best"


def _ranks_of(teacher, data):
    from recdata.datamodule import SequentialDataModule
    from runkit.metrics import target_ranks

    batch = next(iter(SequentialDataModule(data, max_seq_len=16, num_candidates=0).loader("test")))
    with torch.no_grad():
        return (target_ranks(teacher(batch["history"]), batch["target"]) + 1).tolist()


def _test_ranks(run):
    import pyarrow.parquet as pq

    return pq.read_table(run / "test_predictions.parquet").column("rank_unmasked").to_pylist()


@pytest.mark.parametrize("mode", ["sequence", "prefix"])
def test_checkpoint_of_each_mode_round_trips(tiny_pipeline, tmp_path, mode):
    best = _train(
        tiny_pipeline, tmp_path / mode, f"teacher.prompt_mode={mode}", "train.max_steps=2"
    )
    card = json.loads((best / "card.json").read_text())
    assert card["hparams"]["teacher"]["prompt_mode"] == mode
    teacher, _ = load_teacher(best, load_prepared(tiny_pipeline["data"]))
    assert teacher.config.prompt_mode == mode
    assert _ranks_of(teacher, tiny_pipeline["data"]) == _test_ranks(tmp_path / mode)


def test_a_card_from_before_the_prompt_modes_loads_as_prefix_mode(tiny_pipeline, tmp_path):
    """Cards written before prompt_mode / normalize_state existed rebuild what they trained."""
    best = _train(
        tiny_pipeline,
        tmp_path / "old",
        "teacher.prompt_mode=prefix",
        "teacher.normalize_state=false",
        "train.max_steps=2",
    )
    card = json.loads((best / "card.json").read_text())
    for key in (
        "prompt_mode",
        "normalize_state",
        "sequence_titles",
        "use_title_projector",
        "max_sequence_items",
        "sequence_window_stride",
    ):
        del card["hparams"]["teacher"][key]
    (best / "card.json").write_text(json.dumps(card))
    teacher, _ = load_teacher(best, load_prepared(tiny_pipeline["data"]))
    assert teacher.config.prompt_mode == "prefix" and isinstance(
        teacher.state_norm, torch.nn.Identity
    )
    assert _ranks_of(teacher, tiny_pipeline["data"]) == _test_ranks(tmp_path / "old")


def test_a_card_with_an_unknown_prompt_mode_is_refused_with_one_line(
    tiny_pipeline, tmp_path, capsys
):
    from distill import precompute

    best = tmp_path / "teacher" / "checkpoints" / "best"
    shutil.copytree(tiny_pipeline["teacher"], best)
    card = json.loads((best / "card.json").read_text())
    card["hparams"]["teacher"]["prompt_mode"] = "chat"
    (best / "card.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit) as exc:
        run_cli(
            precompute.main,
            tiny_run_overrides(
                tiny_pipeline["data"], tmp_path / "p", f"distill.teacher_checkpoint_path={best}"
            ),
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown teacher prompt_mode 'chat'" in err[0]


def test_an_unknown_prompt_mode_in_the_config_is_refused_with_one_line(
    tiny_pipeline, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exc:
        _train(tiny_pipeline, tmp_path / "bad", "teacher.prompt_mode=chat")
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: teacher.prompt_mode must be one of prefix, sequence, got 'chat'"
    ]


def test_the_training_loss_in_row_blocks_equals_the_whole_matrix_with_its_gradients():
    """A catalogue too large for one scores matrix: the teacher's blocked CE and its gradients
    (adapters, gate, projectors, head, item table) are the unblocked ones."""
    teacher = make_teacher().train()
    for module in teacher.modules():  # dropout off: both passes must see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    history = torch.tensor([[0, 0, 3, 7, 9, 2], [5, 6, 1, 8, 4, 10]])
    targets = torch.tensor([[0, 0, 7, 9, 2, 11], [6, 1, 8, 0, 10, 12]])
    batch = {"history": history, "targets": targets}
    params = [p for p in teacher.parameters() if p.requires_grad]
    whole, _ = teacher.training_loss(batch)
    want = torch.autograd.grad(whole, params, allow_unused=True)
    blocked, kept = teacher.training_loss(batch, budget=3 * 41)  # 3 rows per block
    got = torch.autograd.grad(blocked, params, allow_unused=True)
    assert len(kept) == 9
    torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
