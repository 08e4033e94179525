"""`distill` on the tiny pipeline: the run contract, alignment of soft labels by key, the
folded export, equality with the baseline when the distillation terms are off, every ablation
switch, and clean config errors."""

import contextlib
import io
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from distill import precompute
from distill import train as distill_train
from distill.losses import DLLM2RecLoss
from distill.module import DistillModule
from distill.soft_labels import SoftLabels, read_soft_labels, write_soft_labels
from recdata.datamodule import SequentialDataModule
from runkit.testing import kill_after_first_epoch, run_cli, tiny_run_overrides
from sasrec import train as student_train
from sasrec.model import SASRecConfig
from sasrec.module import load_sasrec

EPOCHS = "train.max_epochs=2"


def fingerprint(data) -> str:
    return json.loads((data / "meta.json").read_text())["fingerprint"]


def distill_overrides(pipeline, soft_dir, run_dir, *extra) -> list[str]:
    return tiny_run_overrides(
        pipeline["data"],
        run_dir,
        f"distill.teacher_checkpoint_path={pipeline['teacher']}",
        f"distill.soft_labels_dir={soft_dir}",
        "distill.soft_label_samples=all",
        EPOCHS,
        *extra,
    )


def run_distill(pipeline, soft_dir, run_dir, *extra) -> str:
    """Run `distill` in-process; returns its stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run_cli(distill_train.main, distill_overrides(pipeline, soft_dir, run_dir, *extra))
    return stdout.getvalue()


def weights(run_dir, name="model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "best" / name)


def read_test_metrics(run_dir) -> dict:
    return json.loads((run_dir / "test_metrics.json").read_text())


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def soft_dir(tiny_pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    run_cli(
        precompute.main,
        tiny_run_overrides(
            tiny_pipeline["data"],
            root / "precompute",
            f"distill.teacher_checkpoint_path={tiny_pipeline['teacher']}",
            f"distill.soft_labels_dir={root / 'soft'}",
            "distill.soft_label_samples=all",
        ),
    )
    return root / "soft"


@pytest.fixture(scope="module")
def full_run(tiny_pipeline, soft_dir):
    run_dir = soft_dir.parent / "full"
    return run_dir, run_distill(tiny_pipeline, soft_dir, run_dir)


def test_killed_distillation_resumes_to_the_uninterrupted_result(
    tiny_pipeline, soft_dir, tmp_path, one_thread
):
    killed, full = tmp_path / "killed", tmp_path / "full"  # both on one thread, like the child
    kill_after_first_epoch(
        distill_train.main,
        distill_overrides(tiny_pipeline, soft_dir, killed),
        killed,
        tmp_path / "killed.out",
    )
    run_cli(distill_train.main, [f"train.resume={killed}", f"hydra.run.dir={tmp_path / 'again'}"])
    run_distill(tiny_pipeline, soft_dir, full)
    assert read_test_metrics(killed)["metrics"] == read_test_metrics(full)["metrics"]
    assert_same_weights(weights(killed), weights(full))
    assert_same_weights(
        weights(killed, "unfolded.safetensors"), weights(full, "unfolded.safetensors")
    )


def test_distill_writes_a_distilled_run(tiny_pipeline, soft_dir, full_run):
    run_dir, stdout = full_run
    assert stdout.strip().splitlines()[-1] == f"run_dir: {run_dir}"
    card = json.loads((run_dir / "checkpoints" / "best" / "card.json").read_text())
    assert card["kind"] == "sasrec-distilled" and card["hparams"]["folded"] is True
    assert card["hparams"]["ed_weight"] == 0.3 and card["hparams"]["loss"]["lam"] == 0.7
    soft_card = json.loads((soft_dir / "card.json").read_text())
    assert card["distillation"]["teacher_digest"] == soft_card["teacher_digest"]
    assert card["distillation"]["num_samples"] == soft_card["num_samples"] == 110
    assert card["data"]["fingerprint"] == fingerprint(tiny_pipeline["data"])
    metrics = read_test_metrics(run_dir)
    assert metrics["model"] == "sasrec-distilled" and metrics["split"] == "test"
    assert metrics["metrics"] == card["metrics"]["test"]
    assert (run_dir / "test_predictions.parquet").is_file() and (run_dir / "config.yaml").is_file()


def test_soft_labels_are_aligned_by_key_not_by_row_order(
    tiny_pipeline, soft_dir, full_run, tmp_path
):
    labels = read_soft_labels(soft_dir, fingerprint=fingerprint(tiny_pipeline["data"]))
    perm = torch.randperm(len(labels.user_ids), generator=torch.Generator().manual_seed(1))
    shuffled = write_soft_labels(
        tmp_path / "shuffled",
        SoftLabels(
            labels.user_ids[perm],
            labels.positions[perm],
            labels.topk_items[perm],
            labels.topk_scores[perm],
            labels.item_embeddings,
            labels.card,
        ),
    )
    stored = read_soft_labels(shuffled, fingerprint=fingerprint(tiny_pipeline["data"]))
    assert torch.equal(stored.user_ids, labels.user_ids[perm])  # really stored in another order
    run_distill(tiny_pipeline, shuffled, tmp_path / "run")
    run_dir, _ = full_run
    assert_same_weights(weights(tmp_path / "run"), weights(run_dir))
    assert_same_weights(
        weights(tmp_path / "run", "unfolded.safetensors"), weights(run_dir, "unfolded.safetensors")
    )
    assert read_test_metrics(tmp_path / "run")["metrics"] == read_test_metrics(run_dir)["metrics"]


def test_export_folds_the_embedding_distillation_into_a_plain_sasrec(
    tiny_pipeline, soft_dir, full_run
):
    best = full_run[0] / "checkpoints" / "best"
    plain, card = load_sasrec(best, kinds=("sasrec-distilled",))
    dm = SequentialDataModule(tiny_pipeline["data"], max_seq_len=16, num_candidates=0)
    dm.setup()
    # the distillation module as it trained: unfolded student table + teacher-embedding projection
    labels = read_soft_labels(soft_dir, fingerprint=dm.fingerprint)
    module = DistillModule(
        SASRecConfig(**card["hparams"]["model"]),
        labels=labels,
        store=dm.store,
        loss=DLLM2RecLoss(),
        ed_weight=card["hparams"]["ed_weight"],
    )
    unfolded = load_file(best / "unfolded.safetensors")
    for prefix, target in (
        ("model.", module.model),
        ("embedding_distillation.", module.embedding_distillation),
    ):
        target.load_state_dict(
            {k.removeprefix(prefix): v for k, v in unfolded.items() if k.startswith(prefix)}
        )
    module.eval()
    # the fold is not trivial: the exported table differs from the student's own table
    delta = (plain.item_table() - module.model.item_table()).detach()
    assert delta[1:].abs().amax() > 1e-2 and torch.equal(delta[0], torch.zeros_like(delta[0]))
    with torch.no_grad():
        for split in ("valid", "test"):
            for batch in dm.loader(split):
                expected = module.score(batch)
                got = plain.score(batch["history"])
                assert torch.isneginf(got[:, 0]).all() and torch.isneginf(expected[:, 0]).all()
                torch.testing.assert_close(got[:, 1:], expected[:, 1:], rtol=0, atol=1e-5)


def test_without_distillation_terms_the_run_equals_the_baseline_student(
    tiny_pipeline, soft_dir, tmp_path
):
    """lam=0 and ed_weight=0 reduce DLLM2Rec to the plain student: same seed and config give the
    same weights and test metrics, so baseline-vs-distilled compares the distillation alone."""
    run_cli(
        student_train.main, tiny_run_overrides(tiny_pipeline["data"], tmp_path / "baseline", EPOCHS)
    )
    run_distill(
        tiny_pipeline, soft_dir, tmp_path / "distilled", "distill.lam=0", "distill.ed_weight=0"
    )
    assert_same_weights(weights(tmp_path / "distilled"), weights(tmp_path / "baseline"))
    baseline, distilled = (
        read_test_metrics(tmp_path / "baseline"),
        read_test_metrics(tmp_path / "distilled"),
    )
    for key in ("metrics", "metrics_masked", "metrics_unmasked"):
        assert distilled[key] == baseline[key]


ABLATIONS = [
    "distill.gamma_position=0",
    "distill.gamma_confidence=0",
    "distill.gamma_consistency=0",
    "distill.ranking_loss=listwise",
    "distill.lam=0",
    "distill.ed_weight=0",
    "distill.consistency_weight=original",
]


@pytest.mark.parametrize("masked", [True, False])
def test_the_consistency_set_excludes_the_history_when_asked(
    tiny_pipeline, soft_dir, tmp_path, monkeypatch, masked
):
    """distill.consistency_masks_history: the student's top-K that the consistency weight reads
    never holds an item of the sample's own prefix (the teacher's list never does)."""
    seen = []
    original = DLLM2RecLoss.__call__

    def spy(
        self,
        ce,
        student_scores,
        items,
        scores,
        negatives=None,
        valid_mask=None,
        num_samples=None,
        consistency_scores=None,
    ):
        seen.append((student_scores.detach(), consistency_scores))
        return original(
            self,
            ce,
            student_scores,
            items,
            scores,
            negatives,
            valid_mask,
            num_samples,
            consistency_scores,
        )

    monkeypatch.setattr(DLLM2RecLoss, "__call__", spy)
    run_distill(
        tiny_pipeline,
        soft_dir,
        tmp_path / "run",
        "train.max_epochs=1",
        f"distill.consistency_masks_history={str(masked).lower()}",
    )
    assert seen
    for student, consistency in seen:
        if not masked:
            assert consistency is None
            continue
        hidden = torch.isinf(consistency) & ~torch.isinf(student)
        assert hidden.any(1).all()  # every sample has a history item hidden
        assert torch.equal(consistency[~hidden], student[~hidden])


@pytest.mark.parametrize("switch", ABLATIONS)
def test_each_ablation_switch_runs_and_changes_the_model(
    tiny_pipeline, soft_dir, full_run, tmp_path, switch
):
    run_distill(tiny_pipeline, soft_dir, tmp_path / "run", switch)
    card = json.loads((tmp_path / "run" / "checkpoints" / "best" / "card.json").read_text())
    name, value = switch.removeprefix("distill.").split("=")
    loss_key = {"ranking_loss": "form", "consistency_weight": "consistency"}.get(name, name)
    recorded = (
        card["hparams"]["ed_weight"] if name == "ed_weight" else card["hparams"]["loss"][loss_key]
    )
    assert str(recorded) in (value, f"{value}.0")
    assert set(read_test_metrics(tmp_path / "run")["metrics"]) >= {"hr@5", "ndcg@5"}
    ablated, full = (
        weights(tmp_path / "run", "unfolded.safetensors"),
        weights(full_run[0], "unfolded.safetensors"),
    )
    assert any(not torch.equal(ablated[k], full[k]) for k in full)  # the switch acts on training


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "distill.teacher_source=nope",
            "error: distill.teacher_source must be one of precomputed, service, got 'nope'",
        ),
        (
            "distill.ranking_loss=nope",
            "error: distill.ranking_loss must be one of pointwise, listwise, got 'nope'",
        ),
        (
            "distill.gamma_confidence=-1",
            "error: distill.gamma_confidence must be a number >= 0, got -1.0",
        ),
        (
            "distill.rank_loss_average=batch",
            "error: distill.rank_loss_average must be one of labeled, all, got 'batch'",
        ),
        (
            "distill.consistency_weight=sum",
            "error: distill.consistency_weight must be one of normalised, original, got 'sum'",
        ),
        ("distill.retry_budget=-1", "error: distill.retry_budget must be a number >= 0, got -1.0"),
        (
            "distill.max_retries=3",
            "error: distill.max_retries=3 is no longer used: service requests are retried for "
            "distill.retry_budget seconds; set that instead (distill.max_retries=null clears it, "
            "e.g. in an older run's config)",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(
    tiny_pipeline, soft_dir, tmp_path, capsys, override, message
):
    with pytest.raises(SystemExit) as exit_info:
        run_distill(tiny_pipeline, soft_dir, tmp_path / "run", override)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not (tmp_path / "run").exists()  # refused before any training, no run dir left


def _out_of_range(directory, labels):
    items = labels.topk_items.clone()
    items[3, 2] = 41  # the tiny data has 40 items
    write_soft_labels(
        directory,
        SoftLabels(
            labels.user_ids,
            labels.positions,
            items,
            labels.topk_scores,
            labels.item_embeddings,
            labels.card,
        ),
    )


def _truncate(name):
    def damage(directory, labels):
        data = (directory / name).read_bytes()
        (directory / name).write_bytes(data[: len(data) // 2])

    return damage


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            _out_of_range,
            "soft: the top-K list of sample (user_id, position) = ({u}, "
            "{p}) holds item 41, outside 1..40",
        ),
        (
            _truncate("soft_labels.parquet"),
            "soft/soft_labels.parquet: unreadable soft-label table (",
        ),
        (
            _truncate("item_embeddings.safetensors"),
            "soft/item_embeddings.safetensors: not a readable safetensors file (",
        ),
        (
            lambda d, _: (d / "card.json").write_text("[]"),
            "soft/card.json: not a soft-label card (a JSON object with an integer k)",
        ),
    ],
)
def test_damaged_soft_labels_are_refused_at_load_in_one_line(
    tiny_pipeline, soft_dir, tmp_path, capsys, damage, message
):
    labels = read_soft_labels(soft_dir, fingerprint=fingerprint(tiny_pipeline["data"]))
    damaged = tmp_path / "soft"
    shutil.copytree(soft_dir, damaged)
    damage(damaged, labels)
    with pytest.raises(SystemExit) as exit_info:
        run_distill(tiny_pipeline, damaged, tmp_path / "run")
    assert exit_info.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith(
        f"error: {tmp_path}/"
        + message.format(u=int(labels.user_ids[3]), p=int(labels.positions[3]))
    ), err
    assert not (tmp_path / "run").exists()


def service_overrides(service, tmp_path) -> list[str]:
    return [
        "distill.teacher_source=service",
        f"distill.teacher_url={service.url}",
        f"distill.service_cache_dir={tmp_path / 'service-cache'}",
    ]


def test_service_mode_distills_exactly_like_precomputed(
    tiny_pipeline, soft_dir, full_run, teacher_service, tmp_path
):
    """Same teacher, same batches: the labels fetched from the service are bitwise the
    precomputed ones, so the distilled student is the same model."""
    run_distill(
        tiny_pipeline, soft_dir, tmp_path / "run", *service_overrides(teacher_service, tmp_path)
    )
    card = json.loads((tmp_path / "run" / "checkpoints" / "best" / "card.json").read_text())
    assert (
        card["distillation"]["source"] == "service" and card["distillation"]["num_samples"] == 110
    )
    for name in ("model.safetensors", "unfolded.safetensors"):
        assert_same_weights(weights(tmp_path / "run", name), weights(full_run[0], name))
    assert (
        read_test_metrics(tmp_path / "run")["metrics"] == read_test_metrics(full_run[0])["metrics"]
    )


def test_service_mode_refuses_a_service_with_another_teacher(
    tiny_pipeline, soft_dir, teacher_service, tmp_path, capsys
):
    other = shutil.copytree(tiny_pipeline["teacher"], tmp_path / "other-teacher")
    data = bytearray((other / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # another teacher's weights: another digest
    (other / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exit_info:
        run_distill(
            tiny_pipeline,
            soft_dir,
            tmp_path / "run",
            *service_overrides(teacher_service, tmp_path),
            f"distill.teacher_checkpoint_path={other}",
        )
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "the teacher service serves teacher" in line and "not the expected" in line
    assert f"({other}, distill.teacher_checkpoint_path)" in line


def test_soft_labels_missing_a_training_sample_are_refused(
    tiny_pipeline, soft_dir, tmp_path, capsys
):
    labels = read_soft_labels(soft_dir, fingerprint=fingerprint(tiny_pipeline["data"]))
    keep = torch.arange(len(labels.user_ids)) != 12
    partial = tmp_path / "partial"
    write_soft_labels(
        partial,
        SoftLabels(
            labels.user_ids[keep],
            labels.positions[keep],
            labels.topk_items[keep],
            labels.topk_scores[keep],
            labels.item_embeddings,
            labels.card,
        ),
    )
    with pytest.raises(SystemExit) as exit_info:
        run_distill(tiny_pipeline, partial, tmp_path / "run")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    key = (int(labels.user_ids[12]), int(labels.positions[12]))
    assert (
        len(err) == 1
        and f"lack 1 of 110 training samples (first missing key (user_id, position) = {key})"
        in err[0]
    )
    shutil.rmtree(partial)


@pytest.mark.parametrize(("form", "average"), [("pointwise", "all"), ("listwise", "labeled")])
def test_the_objective_in_row_blocks_equals_the_whole_batch_with_its_gradients(
    tiny_pipeline, soft_dir, monkeypatch, form, average
):
    """A catalogue too large for one positions x items matrix: CE and ranking distillation summed
    over checkpointed row blocks give the whole batch's loss and gradients."""
    import runkit.chunking

    dm = SequentialDataModule(tiny_pipeline["data"], max_seq_len=16, batch_size=6, num_candidates=0)
    dm.setup()
    labels = read_soft_labels(soft_dir, fingerprint=dm.fingerprint)
    torch.manual_seed(0)
    module = DistillModule(
        SASRecConfig(
            num_items=dm.num_items, hidden_size=16, num_blocks=1, num_heads=1, max_seq_len=16
        ),
        labels=labels,
        store=dm.store,
        loss=DLLM2RecLoss(form=form, average=average),
    ).eval()
    with torch.no_grad():  # a non-zero projection, so the teacher embeddings enter the table
        module.embedding_distillation.proj.weight.normal_(std=0.1)
    batch = next(iter(dm.train_dataloader()))
    params = [p for p in module.parameters() if p.requires_grad]

    def loss_and_grads():
        torch.manual_seed(7)  # the same sampled negatives for both
        loss = module.training_step(batch, 0)
        return loss, torch.autograd.grad(loss, params)

    whole, want = loss_and_grads()
    monkeypatch.setattr(runkit.chunking, "LOGITS_BUDGET", 5 * (dm.num_items + 1))  # 5 rows a block
    blocked, got = loss_and_grads()
    torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
