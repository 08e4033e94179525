"""`precompute-soft-labels`: the teacher-output contract, equality with a direct
teacher computation, resumable shards merged by key, atomic output, and refusing soft labels
that belong to other data, another teacher or a smaller K."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from distill import precompute
from distill.soft_labels import SoftLabelError, SoftLabels, read_soft_labels
from ilora.checkpoint import load_item_embeddings, load_teacher
from ilora.inference import teacher_digest, topk_with_history_masked
from recdata.contract import load_prepared
from recdata.splits import SampleKeys
from runkit.testing import run_cli, tiny_run_overrides

K = 10  # distill.candidate_topk default
MAX_SEQ_LEN = 16  # student.max_seq_len of tiny_run_overrides


def run_precompute(pipeline, out, *extra):
    run_dir = out.parent / f"run-{out.name}"
    run_cli(
        precompute.main,
        tiny_run_overrides(
            pipeline["data"],
            run_dir,
            f"distill.teacher_checkpoint_path={pipeline['teacher']}",
            f"distill.soft_labels_dir={out}",
            "distill.soft_label_samples=all",
            *extra,
        ),
    )
    return out


def sequences(data) -> dict[int, list[int]]:
    table = pq.read_table(data / "sequences.parquet").to_pydict()
    return dict(zip(table["user_id"], table["item_ids"], strict=True))


def expected_keys(seqs) -> list[tuple[int, int]]:
    """Split rule: train predicts every index 1..L-3 of each user, in (user_id, position) order."""
    return [(u, p) for u in sorted(seqs) for p in range(1, len(seqs[u]) - 2)]


@pytest.fixture(scope="module")
def reference(tiny_pipeline, tmp_path_factory):
    out = run_precompute(tiny_pipeline, tmp_path_factory.mktemp("precompute") / "soft")
    fingerprint = json.loads((tiny_pipeline["data"] / "meta.json").read_text())["fingerprint"]
    return {
        "dir": out,
        "fingerprint": fingerprint,
        "labels": read_soft_labels(out, fingerprint=fingerprint),
    }


def test_precompute_writes_the_teacher_output_contract(tiny_pipeline, reference):
    out, seqs = reference["dir"], sequences(tiny_pipeline["data"])
    # no shards, no temp dirs
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(("soft", ".soft"))) == [
        "soft"
    ]
    table = pq.read_table(out / "soft_labels.parquet")
    assert (
        table.schema.field("user_id").type == pa.int32()
        and table.schema.field("position").type == pa.int32()
    )
    assert table.schema.field("topk_items").type == pa.list_(pa.int32())
    assert table.schema.field("topk_scores").type == pa.list_(pa.float32())
    rows = table.to_pydict()
    keys = list(zip(rows["user_id"], rows["position"], strict=True))
    assert keys == expected_keys(seqs)  # every training sample once, in key order
    for (user, position), items, scores in zip(
        keys, rows["topk_items"], rows["topk_scores"], strict=True
    ):
        assert len(items) == K and len(set(items)) == K
        assert (
            all(a >= b for a, b in zip(scores, scores[1:], strict=False))
            and torch.isfinite(torch.tensor(scores)).all()
        )
        assert 0 not in items
        assert not set(items) & set(seqs[user][:position])  # mask_history_in_topk: no history item
    teacher_vectors = load_item_embeddings(tiny_pipeline["teacher"])
    assert torch.equal(
        load_file(out / "item_embeddings.safetensors")["item_embeddings"], teacher_vectors
    )
    assert teacher_vectors.shape[0] == max(i for s in seqs.values() for i in s) + 1  # (N+1, H)
    card = json.loads((out / "card.json").read_text())
    assert card["teacher_digest"] == teacher_digest(tiny_pipeline["teacher"])
    assert card["data_fingerprint"] == reference["fingerprint"]
    assert card["k"] == K and card["num_samples"] == len(keys) and card["history_masked"] is True
    assert card["samples"] == "all" and card["source"] == "precomputed"


def teacher_top_k(pipeline, keys, k=K, mask_history=True):
    """The same top-K computed directly: load the teacher, left-pad each history by hand."""
    dataset = load_prepared(pipeline["data"])
    teacher, _ = load_teacher(pipeline["teacher"], dataset)
    seqs = sequences(pipeline["data"])
    items, scores = [], []
    for user, position in keys:
        prefix = seqs[user][:position]
        window = prefix[-MAX_SEQ_LEN:]
        with torch.no_grad():
            s = teacher(torch.tensor([[0] * (MAX_SEQ_LEN - len(window)) + window]))
        i, v = topk_with_history_masked(s, torch.tensor([prefix]) if mask_history else None, k)
        items.append(i[0]), scores.append(v[0])
    return torch.stack(items), torch.stack(scores)


def rows_of(labels: SoftLabels, keys):
    index = {
        (int(u), int(p)): r
        for r, (u, p) in enumerate(zip(labels.user_ids, labels.positions, strict=True))
    }
    rows = torch.tensor([index[key] for key in keys])
    return labels.topk_items[rows], labels.topk_scores[rows]


def test_top_k_equals_a_direct_teacher_computation(tiny_pipeline, reference):
    keys = [(1, 1), (3, 7), (10, 11)]  # shortest prefix, a middle one, the last training sample
    items, scores = teacher_top_k(tiny_pipeline, keys)
    got_items, got_scores = rows_of(reference["labels"], keys)
    assert torch.equal(got_items, items)
    torch.testing.assert_close(got_scores, scores, rtol=0, atol=1e-5)


def test_unmasked_top_k_is_the_plain_teacher_ranking(tiny_pipeline, tmp_path):
    out = run_precompute(tiny_pipeline, tmp_path / "soft", "distill.mask_history_in_topk=false")
    labels = read_soft_labels(
        out, fingerprint=json.loads((out / "card.json").read_text())["data_fingerprint"]
    )
    assert labels.card["history_masked"] is False
    keys = [(2, 5), (9, 11)]
    items, scores = teacher_top_k(tiny_pipeline, keys, mask_history=False)
    got_items, got_scores = rows_of(labels, keys)
    assert torch.equal(got_items, items)
    torch.testing.assert_close(got_scores, scores, rtol=0, atol=1e-5)
    assert not (labels.topk_items == 0).any()


class CountingScorer:
    """Wraps label_shard: records each shard's first unit; raises on call number `crash_on`."""

    def __init__(self, crash_on: int | None = None):
        self.real, self.crash_on, self.starts = precompute.label_shard, crash_on, []

    def __call__(self, path, lo, hi, *args):
        self.starts.append(lo)
        if len(self.starts) == self.crash_on:
            raise RuntimeError("simulated crash while scoring a shard")
        return self.real(path, lo, hi, *args)


def crash_after_first_shard(pipeline, out, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # let the exception through instead of exit(1)
    monkeypatch.setattr(precompute, "SHARD_SIZE", 3)  # 10 user windows -> 4 shards
    monkeypatch.setattr(precompute, "label_shard", CountingScorer(crash_on=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_precompute(pipeline, out)
    shard_dir = out.with_name(out.name + ".shards")
    assert not out.exists()  # a crashed run leaves no soft labels a reader could take for complete
    assert sorted(p.name for p in shard_dir.iterdir()) == ["shard_000000.parquet"]
    return shard_dir


def test_crash_leaves_only_shards_and_a_rerun_keeps_finished_ones_merged_by_key(
    tiny_pipeline, reference, tmp_path, monkeypatch
):
    out = tmp_path / "soft"
    shard_dir = crash_after_first_shard(tiny_pipeline, out, monkeypatch)
    # Mark the finished shard (sentinel scores) and reverse its rows: the re-run must keep it
    # as it is (not recompute it) and merge it by key, not by the order rows appear in.
    path = shard_dir / "shard_000000.parquet"
    table = pq.read_table(path)
    kept = set(
        zip(table.column("user_id").to_pylist(), table.column("position").to_pylist(), strict=True)
    )
    sentinel = [1000.0 - j for j in range(K)]
    marked = table.set_column(
        table.schema.get_field_index("topk_scores"),
        "topk_scores",
        pa.array([sentinel] * table.num_rows, pa.list_(pa.float32())),
    )
    marked = marked.take(pa.array(list(range(table.num_rows))[::-1]))
    pq.write_table(marked.replace_schema_metadata(table.schema.metadata), path)

    scorer = CountingScorer()
    monkeypatch.setattr(precompute, "label_shard", scorer)
    run_precompute(tiny_pipeline, out)
    assert scorer.starts == [3, 6, 9]  # shard 0 was kept
    assert not shard_dir.exists()  # merged and cleaned up
    labels, ref = read_soft_labels(out, fingerprint=reference["fingerprint"]), reference["labels"]
    # key order
    assert torch.equal(labels.user_ids, ref.user_ids) and torch.equal(
        labels.positions, ref.positions
    )
    assert torch.equal(labels.topk_items, ref.topk_items)
    in_kept = torch.tensor(
        [(int(u), int(p)) in kept for u, p in zip(labels.user_ids, labels.positions, strict=True)]
    )
    assert 0 < int(in_kept.sum()) < len(in_kept)
    # the kept shard, by key
    assert torch.equal(labels.topk_scores[in_kept], torch.tensor([sentinel] * int(in_kept.sum())))
    # recomputed in shards of 3 windows, the reference in one batch of 10: equal up to the rounding
    # of batch-dependent matmuls, which shows with more than one thread (bitwise with one)
    torch.testing.assert_close(
        labels.topk_scores[~in_kept], ref.topk_scores[~in_kept], rtol=0, atol=1e-5
    )


def test_shards_of_another_job_are_recomputed_not_merged(
    tiny_pipeline, reference, tmp_path, monkeypatch
):
    out = tmp_path / "soft"
    crash_after_first_shard(tiny_pipeline, out, monkeypatch)  # a finished shard for K=10
    scorer = CountingScorer()
    monkeypatch.setattr(precompute, "label_shard", scorer)
    run_precompute(tiny_pipeline, out, "distill.candidate_topk=5")
    assert scorer.starts == [0, 3, 6, 9]  # the K=10 shard does not count as done for K=5
    labels = read_soft_labels(out, fingerprint=reference["fingerprint"])
    assert labels.k == 5 and labels.card["k"] == 5
    assert torch.equal(labels.topk_items, reference["labels"].topk_items[:, :5])


def _tiny_teacher(pipeline, run, *extra):
    from ilora import train as teacher_train
    from ilora.testing import tiny_teacher_overrides

    run_cli(
        teacher_train.main,
        tiny_run_overrides(
            pipeline["data"],
            run,
            *tiny_teacher_overrides(pipeline["llm"], pipeline["student"]),
            "train.max_steps=2",
            *extra,
        ),
    )
    return {**pipeline, "teacher": run / "checkpoints" / "best"}


@pytest.mark.parametrize(
    "teacher_args",
    [
        ("teacher.prompt_mode=prefix",),
        ("teacher.max_sequence_items=5", "teacher.sequence_window_stride=2"),
    ],
)
def test_each_key_is_scored_as_its_prefix_alone_with_the_context_it_was_read_with(
    tiny_pipeline, tmp_path, teacher_args
):
    """A prefix-mode teacher scores each prefix; a sequence-mode teacher whose window (5 items) is
    shorter than the histories reads each key out of one of several overlapping windows, with
    that window's context (at least width - stride + 1 = 4 items): the top-K equals the teacher
    run on exactly that context alone, and every training key appears once."""
    from recdata.splits import split_keys
    from recdata.windows import plan_windows

    pipeline = _tiny_teacher(tiny_pipeline, tmp_path / "teacher", *teacher_args)
    out = run_precompute(pipeline, tmp_path / "soft")
    seqs = sequences(pipeline["data"])
    labels = read_soft_labels(
        out, fingerprint=json.loads((out / "card.json").read_text())["data_fingerprint"]
    )
    keys = list(zip(labels.user_ids.tolist(), labels.positions.tolist(), strict=True))
    assert keys == expected_keys(seqs)
    dataset = load_prepared(pipeline["data"])
    teacher, _ = load_teacher(pipeline["teacher"], dataset)
    start = {(u, p): 0 for u, p in keys}  # prefix mode: the whole (window-truncated) history
    if teacher.config.prompt_mode == "sequence":
        plan = plan_windows(split_keys(dataset.lengths, "train"), 5, 2)
        for u, e, f in zip(
            plan.user_ids.tolist(), plan.ends.tolist(), plan.first_positions.tolist(), strict=True
        ):
            start.update({(u, p): max(e - 5, 0) for p in range(f, e + 1)})
        assert min(p - start[(u, p)] for u, p in keys if p > 5) == 4
    for row in range(0, len(keys), 7):
        user, position = keys[row]
        context = seqs[user][start[(user, position)] : position][-MAX_SEQ_LEN:]
        with torch.no_grad():
            s = teacher(torch.tensor([[0] * (MAX_SEQ_LEN - len(context)) + context]))
        items, scores = topk_with_history_masked(s, torch.tensor([seqs[user][:position]]), K)
        assert torch.equal(labels.topk_items[row], items[0])
        torch.testing.assert_close(labels.topk_scores[row], scores[0], rtol=0, atol=1e-5)


def test_read_soft_labels_refuses_what_does_not_belong(tiny_pipeline, reference, tmp_path):
    directory, fingerprint = reference["dir"], reference["fingerprint"]
    digest = teacher_digest(tiny_pipeline["teacher"])
    assert read_soft_labels(directory, fingerprint=fingerprint, teacher=digest, min_k=K).k == K
    refusals = [
        ({"fingerprint": "0" * 64}, "computed on other data"),
        ({"fingerprint": fingerprint, "teacher": "f" * 64}, "computed by another teacher"),
        (
            {"fingerprint": fingerprint, "min_k": K + 1},
            f"holds top-{K} lists; distillation needs K >= {K + 1}",
        ),
    ]
    (tmp_path / "empty").mkdir()
    for kwargs, message in refusals:
        with pytest.raises(SoftLabelError, match=re.escape(message)) as error:
            read_soft_labels(directory, **kwargs)
        assert str(directory) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(
        SoftLabelError,
        match="holds no soft labels \\(no card.json\\); run precompute-soft-labels first",
    ):
        read_soft_labels(tmp_path / "empty", fingerprint=fingerprint)


def test_aligned_to_reorders_by_key_and_names_the_first_missing_key(reference):
    ref = reference["labels"]
    keys = SampleKeys(ref.user_ids.clone(), ref.positions.clone())
    perm = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))
    shuffled = SoftLabels(
        ref.user_ids[perm],
        ref.positions[perm],
        ref.topk_items[perm],
        ref.topk_scores[perm],
        ref.item_embeddings,
        ref.card,
    )
    aligned = shuffled.aligned_to(keys)
    assert torch.equal(aligned.topk_items, ref.topk_items) and torch.equal(
        aligned.topk_scores, ref.topk_scores
    )
    keep = torch.ones(len(keys), dtype=torch.bool)
    keep[[40, 7]] = False  # the first missing key in key order is row 7's
    partial = SoftLabels(
        ref.user_ids[keep],
        ref.positions[keep],
        ref.topk_items[keep],
        ref.topk_scores[keep],
        ref.item_embeddings,
        ref.card,
    )
    first = (int(ref.user_ids[7]), int(ref.positions[7]))
    with pytest.raises(
        SoftLabelError,
        match=re.escape(
            f"lack 2 of {len(keys)} training samples (first missing key "
            f"(user_id, position) = {first})"
        ),
    ):
        partial.aligned_to(keys)
