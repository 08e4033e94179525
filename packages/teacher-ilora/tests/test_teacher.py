"""The iLoRA teacher as a whole: batching invariance, what trains, decay in a real run,
checkpoint round trip, refusing mismatched inputs."""

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from ilora import train as teacher_train
from ilora.checkpoint import ITEM_EMBEDDINGS_FILE, load_item_embeddings, load_teacher
from ilora.config import TeacherConfig
from ilora.model import ILoRATeacher
from ilora.testing import build_tiny_llama, build_tiny_tokenizer, tiny_teacher_overrides
from recdata.contract import load_prepared
from recdata.testing import cyclic_sequences, make_prepared
from runkit.metrics import target_ranks
from runkit.testing import run_cli, tiny_run_overrides
from sasrec.model import SASRec, SASRecConfig


@pytest.fixture(params=["prefix", "sequence"])
def teacher(request):
    torch.manual_seed(0)
    student = SASRec(
        SASRecConfig(num_items=40, hidden_size=16, num_blocks=1, num_heads=1, max_seq_len=16)
    )
    titles = [""] + [f"the movie {'long ' * (i % 4)}{i}" for i in range(1, 41)]
    config = TeacherConfig(
        residual_student_state=True,
        target_modules=["q_proj", "v_proj"],
        hidden_size=16,
        gate_hidden_size=8,
        max_history=5,
        prompt_mode=request.param,
    )
    model = ILoRATeacher(build_tiny_llama(), build_tiny_tokenizer(), student, titles, config)
    with torch.no_grad():  # non-zero adapters and head, so the gate and the LLM path matter
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
        model.head.weight.normal_(std=0.1)
    return model.eval()


def left_pad(rows, width=16):
    return torch.tensor([[0] * (width - len(r)) + r for r in rows])


def test_scores_same_alone_and_in_a_padded_batch(teacher):
    short, long = [3, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]
    alone = teacher(left_pad([short]))
    together = teacher(left_pad([short, long]))
    torch.testing.assert_close(alone[0, 1:], together[0, 1:], rtol=0, atol=1e-5)
    assert alone[0, 0] == -math.inf


def test_gate_depends_on_the_history_and_changes_the_output(teacher):
    a, b = left_pad([[1, 2, 3]]), left_pad([[7, 8, 9]])
    ga = teacher.gate(teacher.student.last_state(a))
    gb = teacher.gate(teacher.student.last_state(b))
    assert not torch.allclose(ga, gb)
    torch.testing.assert_close(ga.sum(1), torch.ones(1))


def test_only_adapters_gate_projector_and_head_are_trained(teacher):
    teacher.train()
    history = left_pad([[1, 2, 3], [4, 5, 6, 7]])
    F.cross_entropy(teacher(history), torch.tensor([4, 8])).backward()
    trained = {
        n for n, p in teacher.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    own = ("llm", "gate", "projector", "title_projector", "state_norm", "head", "item_table")
    assert trained and all(n.split(".")[0] in own for n in trained)
    assert all("lora_" in n for n in trained if n.startswith("llm."))
    assert {"item_table", "head.weight"} <= trained and any(n.startswith("gate.") for n in trained)
    assert any(n.startswith("projector.") for n in trained)
    assert any(n.startswith("title_projector.") for n in trained) == (
        teacher.config.prompt_mode == "sequence"
    )
    frozen = [
        p
        for n, p in teacher.named_parameters()
        if n.startswith("student.") or (n.startswith("llm.") and "lora_" not in n)
    ]
    assert frozen and all(p.grad is None for p in frozen)
    assert not teacher.student.training  # the frozen student's dropout never acts


def test_teacher_starts_as_its_student(teacher):
    fresh = ILoRATeacher(
        build_tiny_llama(),
        build_tiny_tokenizer(),
        teacher.student,
        [""] + ["movie"] * 40,
        TeacherConfig(
            residual_student_state=True,
            target_modules=["q_proj"],
            hidden_size=8,
            gate_hidden_size=4,
            prompt_mode=teacher.config.prompt_mode,
        ),
    ).eval()
    history = left_pad([[1, 2, 3], [9, 8]])
    torch.testing.assert_close(
        fresh(history)[:, 1:], teacher.student.score(history)[:, 1:], rtol=0, atol=1e-5
    )


def test_linear_head_variant_scores_all_items(teacher):
    config = TeacherConfig(
        residual_student_state=True,
        target_modules=["q_proj"],
        hidden_size=8,
        gate_hidden_size=4,
        use_item_embeddings_head=False,
        prompt_mode=teacher.config.prompt_mode,
    )
    model = ILoRATeacher(
        build_tiny_llama(), build_tiny_tokenizer(), teacher.student, [""] + ["movie"] * 40, config
    )
    assert model.item_table is None and model.head.out_features == 41
    assert model(left_pad([[1, 2]])).shape == (1, 41)


def test_item_title_embeddings_are_per_item_and_padding_is_zero(teacher):
    emb = teacher.item_title_embeddings(batch_size=7)
    assert emb.shape == (41, 32) and torch.equal(emb[0], torch.zeros(32))
    assert not torch.allclose(emb[1], emb[2])


def test_item_title_embeddings_are_computed_in_eval_mode(teacher):
    """The checkpoint's item embeddings never carry LoRA dropout noise, whatever mode the teacher
    is left in after training (Lightning leaves it in training mode)."""
    expected = teacher.eval().item_title_embeddings()
    teacher.train()
    torch.testing.assert_close(teacher.item_title_embeddings(), expected, rtol=0, atol=0)
    assert teacher.llm.training  # the caller's mode is restored


def test_round_trip_reproduces_the_runs_own_test_ranks(tiny_pipeline):
    dataset = load_prepared(tiny_pipeline["data"])
    teacher, ckpt = load_teacher(tiny_pipeline["teacher"], dataset)
    assert ckpt.card["student_checkpoint"]["path"].endswith("checkpoints/best")
    # sequence mode
    assert set(ckpt.tensors) == set(teacher.trainable_state_dict()) | {"title_states"}
    assert not any(k.startswith(("student.", "llm.model.embed_tokens")) for k in ckpt.tensors)
    predictions = pq.read_table(
        tiny_pipeline["teacher"].parent.parent / "test_predictions.parquet"
    ).to_pydict()
    from recdata.datamodule import SequentialDataModule

    dm = SequentialDataModule(tiny_pipeline["data"], max_seq_len=16, num_candidates=0)
    batch = next(iter(dm.loader("test")))
    with torch.no_grad():
        ranks = target_ranks(teacher(batch["history"]), batch["target"]) + 1
    assert ranks.tolist() == predictions["rank_unmasked"]
    assert load_item_embeddings(tiny_pipeline["teacher"]).shape[0] == dataset.num_items + 1
    assert (tiny_pipeline["teacher"] / ITEM_EMBEDDINGS_FILE).is_file()


def _lambda_trace(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/lambda")]


@pytest.mark.parametrize("decay_steps", [None, 3])
def test_lambda_decays_to_its_minimum_in_a_real_run(tiny_pipeline, tmp_path, decay_steps):
    extra = [
        "trainer.log_every_n_steps=1",
        "teacher.distill_lambda=1.0",
        "teacher.distill_min_lambda=0.2",
        "teacher.distill_decay_type=linear",
        f"teacher.distill_decay_steps={decay_steps or 'null'}",
        "train.limit_val_batches=1",
        "train.batch_size=2",
    ]
    run = tmp_path / "teacher"
    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            tiny_pipeline["data"],
            run,
            *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
            *extra,
        ),
    )
    trace = _lambda_trace(run)
    total = len(trace)  # logged every optimizer step
    assert total >= 4
    values = [v for _, v in trace]
    assert values[0] < 1.0 and all(a >= b for a, b in zip(values, values[1:], strict=False))
    reach = (decay_steps or total) - 1
    assert values[reach] == pytest.approx(0.2) and values[reach - 1] > 0.2 + 1e-6
    assert all(v == pytest.approx(0.2) for v in values[reach:])


def test_student_from_other_data_is_refused(tiny_pipeline, tmp_path, capsys):
    other = make_prepared(tmp_path / "other", cyclic_sequences(length=15))
    with pytest.raises(SystemExit) as exc:
        run_cli(
            teacher_train.main,
            tiny_run_overrides(
                other,
                tmp_path / "t",
                *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
            ),
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "built on other data" in err[0]


def test_teacher_card_names_base_llm_and_student(tiny_pipeline):
    card = json.loads((tiny_pipeline["teacher"] / "card.json").read_text())
    assert card["kind"] == "ilora-teacher"
    assert card["base_llm"]["name"] == str(tiny_pipeline["llm"]) and card["base_llm"]["digest"]
    assert len(card["student_checkpoint"]["weights_sha256"]) == 64
    assert card["hparams"]["teacher"]["num_lora_experts"] == 4


def test_lora_dropout_is_active_during_real_training_steps(tiny_pipeline, tmp_path, monkeypatch):
    from ilora.module import TeacherModule
    from ilora.moe_lora import moe_lora_layers

    seen = []
    original = TeacherModule.training_step

    def recording_step(self, batch, batch_idx):
        seen.append(
            (
                all(layer.training for _, layer in moe_lora_layers(self.teacher.llm)),
                self.teacher.student.training,
            )
        )
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TeacherModule, "training_step", recording_step)
    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            tiny_pipeline["data"],
            tmp_path / "t",
            *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
            "train.max_steps=2",
        ),
    )
    assert seen and all(adapters and not student for adapters, student in seen)


def test_negative_item_table_lr_scale_is_refused(tiny_pipeline, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(
            teacher_train.main,
            tiny_run_overrides(
                tiny_pipeline["data"],
                tmp_path / "t",
                *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
                "train.item_table_lr_scale=-1",
            ),
        )
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: train.item_table_lr_scale must be a number >= 0, got -1.0"
    ]


def three_step_teacher(tiny_pipeline, run, *overrides: str) -> dict[str, torch.Tensor]:
    """The trained tensors of a 3-step tiny teacher run with ``overrides``."""
    from safetensors.torch import load_file

    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            tiny_pipeline["data"],
            run,
            *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
            "train.max_steps=3",
            "train.limit_val_batches=1",
            *overrides,
        ),
    )
    return load_file(run / "checkpoints" / "last" / "model.safetensors")


@pytest.mark.parametrize("scale", [0, 1])
def test_item_table_learning_rate_scale(tiny_pipeline, tmp_path, scale):
    """train.item_table_lr_scale=0 keeps the student's table exactly while the head still trains;
    the default scale 1 trains the table with the rest."""
    from safetensors.torch import load_file

    scaled = f"train.item_table_lr_scale={scale}"
    trained = three_step_teacher(tiny_pipeline, tmp_path / "t", scaled)
    student = load_file(tiny_pipeline["student"] / "model.safetensors")["item_emb.weight"]
    assert trained["head.weight"].abs().sum() > 0  # zero-initialised, so it moved
    assert torch.equal(trained["item_table"], student) == (scale == 0)


@pytest.mark.parametrize("scale", [0, 3])
def test_text_projector_learning_rate_scale(tiny_pipeline, tmp_path, scale):
    """train.text_projector_lr_scale: the text projector learns at lr x scale (its lr curve
    follows the teacher's at that ratio, step by step); 0 keeps it at zero (scoring by ID)."""
    run = tmp_path / "t"
    trained = three_step_teacher(
        tiny_pipeline,
        run,
        "trainer.log_every_n_steps=1",
        "teacher.text_scoring=true",
        f"train.text_projector_lr_scale={scale}",
    )
    assert bool(trained["text_projector.weight"].abs().sum() > 0) == (scale > 0)
    if scale:
        teacher_lr = dict(_scalars(run, "lr/teacher"))
        text_lr = dict(_scalars(run, "lr/text_projector"))
        assert len(teacher_lr) == 3 and text_lr.keys() == teacher_lr.keys()
        assert max(teacher_lr.values()) > 0
        for step, lr in teacher_lr.items():
            assert text_lr[step] == pytest.approx(scale * lr)


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_learning_rate_warms_up_then_decays_by_cosine(tiny_pipeline, tmp_path):
    run = tmp_path / "t"
    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            tiny_pipeline["data"],
            run,
            *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
            "train.batch_size=1",
            "train.warmup_ratio=0.2",
            "trainer.log_every_n_steps=1",
            "train.limit_val_batches=1",
        ),
    )
    lrs = [v for _, v in _scalars(run, "lr/teacher")]
    total, warmup, peak = 10, 2, 0.003  # 10 windows, one per step
    expected = [
        peak * s / warmup
        if s < warmup
        else peak * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        for s in range(total)
    ]
    assert lrs == pytest.approx(expected, rel=1e-5, abs=1e-9)
    # scale 1
    assert [v for _, v in _scalars(run, "lr/item_table")] == pytest.approx(lrs, rel=1e-5, abs=1e-9)


def test_accumulated_gradients_step_the_optimizer_every_n_batches(tiny_pipeline, tmp_path):
    run = tmp_path / "t"
    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            tiny_pipeline["data"],
            run,
            *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
            "train.batch_size=1",
            "train.accumulate_grad_batches=5",
            "trainer.log_every_n_steps=1",
        ),
    )
    card = json.loads((run / "checkpoints" / "last" / "card.json").read_text())
    assert card["metrics"]["global_step"] == 2  # 10 windows / 5 per optimizer step


def test_the_starting_point_is_validated_and_can_win_model_selection(tiny_pipeline, tmp_path):
    """With the residual head the untrained teacher is its student: it is validated before the
    first step, and a run that only gets worse exports it as best."""
    from safetensors.torch import load_file

    run = tmp_path / "t"
    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            tiny_pipeline["data"],
            run,
            *tiny_teacher_overrides(tiny_pipeline["llm"], tiny_pipeline["student"]),
            "train.lr=5.0",
            "train.warmup_ratio=0",
            "teacher.residual_student_state=true",
            "teacher.student_mix=0",
        ),
    )
    best = json.loads((run / "checkpoints" / "best" / "card.json").read_text())["metrics"]
    last = json.loads((run / "checkpoints" / "last" / "card.json").read_text())["metrics"]
    assert best["global_step"] == 0 and last["global_step"] > 0
    assert best["valid"]["ndcg@5"] > last["valid"]["ndcg@5"]
    student_valid = json.loads((tiny_pipeline["student"] / "card.json").read_text())["metrics"][
        "valid"
    ]
    assert best["valid"]["ndcg@5"] == pytest.approx(student_valid["ndcg@5"], abs=1e-6)
    assert [step for step, _ in _scalars(run, "valid/ndcg@5")][0] == 0  # the curve starts at step 0
    assert (
        torch.count_nonzero(
            load_file(run / "checkpoints" / "best" / "model.safetensors")["head.weight"]
        )
        == 0
    )


def test_the_head_scores_in_fp32_under_bf16_autocast(teacher):
    """trainer.precision=bf16-mixed: the LLM may run in bf16, the head must not (bf16 scores
    tie)."""
    state, u = (
        torch.randn(3, teacher.llm.config.hidden_size),
        torch.randn(3, teacher.student.config.hidden_size),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = teacher.scores_from_state(state, u)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, teacher.scores_from_state(state, u), rtol=0, atol=0)


def test_student_dropout_acts_only_while_the_teacher_trains_and_only_when_asked(teacher):
    teacher.train()
    assert not teacher.student.training  # default: the frozen student is always in eval mode
    teacher.config.student_dropout_in_training = True
    teacher.train()
    assert teacher.student.training and teacher.student.blocks[0].drop.training
    teacher.eval()
    assert not teacher.student.training  # validation, test and scoring see the plain student


def test_a_dataset_without_item_text_trains_on_item_tokens_alone(tiny_pipeline, tmp_path):
    """No text, no invented titles: the teacher drops the title projector (and titles in the
    prompt), says so once, and its card records the architecture it trained."""
    from recdata.cli import main as recdata_main
    from sasrec.train import main as train_student

    rows = ["user,item,time"] + [
        f"u{u},i{item},{t}"
        for u, seq in enumerate(cyclic_sequences(), 1)
        for t, item in enumerate(seq)
    ]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    data = tmp_path / "processed"
    recdata_main(
        [
            "prepare",
            "notext",
            "--from",
            str(tmp_path / "log.csv"),
            "--user-col",
            "user",
            "--item-col",
            "item",
            "--time-col",
            "time",
            "--out",
            str(data),
        ]
    )
    assert not load_prepared(data).has_item_text
    student = tmp_path / "student"
    run_cli(train_student, tiny_run_overrides(data, student, "train.max_epochs=2"))
    overrides = tiny_teacher_overrides(tiny_pipeline["llm"], student / "checkpoints" / "best")
    run_cli(
        teacher_train.main,
        tiny_run_overrides(data, tmp_path / "teacher", *overrides, "train.max_steps=2"),
    )
    log = "".join(p.read_text() for p in (tmp_path / "teacher").glob("*.log"))
    said = [line.split("] - ")[-1] for line in log.splitlines() if "no item text" in line]
    assert said == [
        "notext has no item text: the teacher reads item tokens alone "
        "(no titles, no title projector)"
    ]
    card = json.loads((tmp_path / "teacher" / "checkpoints" / "best" / "card.json").read_text())
    assert card["hparams"]["teacher"]["use_title_projector"] is False
    teacher, _ = load_teacher(tmp_path / "teacher" / "checkpoints" / "best", load_prepared(data))
    assert teacher.title_projector is None
    assert all(teacher.prompts.item_piece(i) == [teacher.item_token_id] for i in range(1, 41))


def test_text_scoring_starts_as_id_scoring_and_lets_text_score_an_item_without_id_information():
    torch.manual_seed(0)
    student = SASRec(
        SASRecConfig(num_items=40, hidden_size=16, num_blocks=1, num_heads=1, max_seq_len=16)
    )
    titles = [""] + [f"the movie {'long ' * (i % 4)}{i}" for i in range(1, 41)]

    def teacher(**kw):
        torch.manual_seed(1)
        config = TeacherConfig(target_modules=["q_proj"], hidden_size=8, gate_hidden_size=4, **kw)
        return ILoRATeacher(
            build_tiny_llama(), build_tiny_tokenizer(), student, titles, config
        ).eval()

    plain, text = teacher(), teacher(text_scoring=True)
    history = left_pad([[1, 2, 3], [9, 8]])
    torch.testing.assert_close(text(history), plain(history), rtol=0, atol=0)  # zero-initialised
    with torch.no_grad():
        text.item_table[7] = 0  # an item with no ID information (a cold item's row)
        text.text_projector.weight.normal_(std=0.5)
    scores = text(history)
    state, _ = text.encode(history)
    query = text.head(text.state_norm(state.float()))[:, 0]
    # no ID part: the text projection alone scores it
    torch.testing.assert_close(scores[:, 7], query @ text.text_projector(text.title_states[7]))
    assert scores[:, 7].abs().gt(0).all()  # text alone scores it
    assert (
        "title_states" in text.checkpoint_tensors()
        and "text_projector.weight" in text.checkpoint_tensors()
    )


def test_text_states_can_be_read_at_another_depth_of_the_llm(tmp_path):
    from ilora.checkpoint import build_teacher
    from ilora.testing import save_tiny_llm

    llm = save_tiny_llm(tmp_path / "llm")
    student = SASRec(
        SASRecConfig(num_items=40, hidden_size=16, num_blocks=1, num_heads=1, max_seq_len=16)
    )
    titles = [""] + [f"the movie {i}" for i in range(1, 41)]
    common = dict(
        llm_model_name=str(llm),
        target_modules=["q_proj"],
        hidden_size=8,
        gate_hidden_size=4,
        text_scoring=True,
        llm_num_layers=1,
    )
    shallow, _ = build_teacher(TeacherConfig(**common), student, titles)
    deep, _ = build_teacher(TeacherConfig(**common, text_state_layers=2), student, titles)
    assert deep.llm.config.num_hidden_layers == 1  # the teacher itself keeps one layer
    assert not torch.allclose(deep.title_states, shallow.title_states)
    again, _ = build_teacher(TeacherConfig(**common, text_state_layers=2), student, titles)
    torch.testing.assert_close(again.title_states, deep.title_states, rtol=0, atol=0)


def test_text_id_dropout_leaves_id_rows_out_in_training_only():
    torch.manual_seed(0)
    student = SASRec(
        SASRecConfig(num_items=40, hidden_size=16, num_blocks=1, num_heads=1, max_seq_len=16)
    )
    titles = [""] + [f"the movie {i}" for i in range(1, 41)]
    config = TeacherConfig(
        target_modules=["q_proj"],
        hidden_size=8,
        gate_hidden_size=4,
        text_scoring=True,
        text_id_dropout=0.5,
    )
    teacher = ILoRATeacher(build_tiny_llama(), build_tiny_tokenizer(), student, titles, config)
    with torch.no_grad():
        teacher.text_projector.weight.normal_(std=0.5)
    text = teacher.text_projector(teacher.title_states)
    torch.manual_seed(3)
    dropped = teacher.scoring_table(drop_ids=True)
    gone = (dropped - text).abs().sum(1) < 1e-6  # rows that are text alone
    assert 8 < int(gone[1:].sum()) < 32  # about half of the 40 items
    kept = ~gone & (teacher.item_table.abs().sum(1) > 0)
    torch.testing.assert_close(dropped[kept], teacher.item_table[kept] + text[kept])
    torch.testing.assert_close(teacher.scoring_table(), teacher.item_table + text)  # evaluation
