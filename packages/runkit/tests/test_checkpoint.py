"""The checkpoint contract (safetensors + card.json), its validation, and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
import torch

from recdata.atomic import atomic_directory, atomic_file, sha256_file, write_json
from recdata.errors import UserError
from runkit.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_state_strict,
    read_card,
    save_checkpoint,
)
from runkit.runs import find_newest_checkpoint, mark_complete, mark_incomplete

FP = "ab" * 32
DATA = {"dataset": "ml-100k", "fingerprint": FP, "num_items": 7}


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "item_emb.weight": torch.randn(8, 4, generator=g),
        "pos_emb.weight": torch.randn(5, 4, generator=g).to(torch.bfloat16),
        "steps": torch.tensor([3, 1, 4], dtype=torch.int64),
    }


# what each kind's card must record besides the common fields
PROVENANCE = {
    "sasrec": {},
    "sasrec-distilled": {"distillation": {"teacher_digest": "ef" * 32, "source": "precomputed"}},
    "ilora-teacher": {
        "base_llm": {"name": "tiny", "digest": "12" * 32},
        "student_checkpoint": {"path": "s", "weights_sha256": "34" * 32},
    },
}


def save(path, kind="sasrec", **kw):
    kw.setdefault("data", DATA)
    kw["extra"] = {**PROVENANCE.get(kind, {}), **kw.get("extra", {})}
    return save_checkpoint(
        path, kind=kind, tensors=tensors(), hparams={"hidden": 4, "layers": 2}, **kw
    )


def test_round_trip(tmp_path):
    directory = save(
        tmp_path / "ckpt",
        metrics={"hr@10": 0.25},
        extra={"student": "x"},
        files={"item_embeddings.safetensors": {"emb": torch.ones(8, 3)}},
    )
    # nothing pickled, no temporary left
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [CARD_FILE, WEIGHTS_FILE, "item_embeddings.safetensors"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    ckpt = load_checkpoint(directory, kinds="sasrec", fingerprint=FP, num_items=7)
    assert ckpt.kind == "sasrec" and ckpt.hparams == {"hidden": 4, "layers": 2}
    for name, tensor in tensors().items():
        assert ckpt.tensors[name].dtype == tensor.dtype
        assert torch.equal(ckpt.tensors[name], tensor)
    card = json.loads((directory / CARD_FILE).read_text())
    assert card == ckpt.card == read_card(directory)
    assert card["schema_version"] == 2 and card["data"] == DATA
    assert card["weights"] == {
        name: sha256_file(directory / name)
        for name in (WEIGHTS_FILE, "item_embeddings.safetensors")
    }
    assert card["metrics"] == {"hr@10": 0.25} and card["student"] == "x"
    assert card["code_version"].startswith("0.1.0") and card["created_at"].endswith("+00:00")

    module = torch.nn.Embedding(8, 4)
    load_state_strict(module, {"weight": ckpt.tensors["item_emb.weight"]}, directory)
    assert torch.equal(module.weight.detach(), tensors()["item_emb.weight"])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kinds": "ilora-teacher"}, r"is a 'sasrec' checkpoint; expected ilora-teacher"),
        (
            {"kinds": ("ilora-teacher", "sasrec-distilled")},
            r"is a 'sasrec' checkpoint; expected ilora-teacher or sasrec-distilled",
        ),
        (
            {"kinds": "sasrec", "fingerprint": "cd" * 32},
            r"was built on other data \(dataset 'ml-100k', fingerprint abababababab…\) than the "
            r"current dataset \(fingerprint cdcdcdcdcdcd…\)",
        ),
        (
            {"kinds": "sasrec", "fingerprint": FP, "num_items": 9},
            r"scores 7 items; the dataset has 9",
        ),
    ],
)
def test_mismatches_are_refused_with_a_specific_message(tmp_path, kw, message):
    directory = save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(directory, **kw)
    assert isinstance(info.value, UserError) and str(directory) in str(info.value)


def test_shape_and_key_mismatches_in_load_state_strict(tmp_path):
    module = torch.nn.Linear(4, 5)
    good = {"weight": torch.zeros(5, 4), "bias": torch.zeros(5)}
    with pytest.raises(
        CheckpointError,
        match=r"ck does not match the model: weight has shape \(3, 4\), model expects \(5, 4\)",
    ):
        load_state_strict(module, {**good, "weight": torch.zeros(3, 4)}, tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"missing \['bias'\]; unexpected \['extra'\]"):
        load_state_strict(module, {"weight": good["weight"], "extra": torch.zeros(1)}, tmp_path)
    before = module.weight.detach().clone()
    with pytest.raises(CheckpointError):
        load_state_strict(module, {**good, "bias": torch.zeros(6)}, tmp_path)
    assert torch.equal(module.weight.detach(), before)  # nothing was loaded


def test_broken_checkpoint_directories(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", kinds="sasrec")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"is not a checkpoint directory \(no card.json\)"):
        load_checkpoint(tmp_path / "empty", kinds="sasrec")
    directory = save(tmp_path / "ckpt")
    card = json.loads((directory / CARD_FILE).read_text())
    (directory / CARD_FILE).write_text(json.dumps({**card, "schema_version": 7}))
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint card \(schema_version 7\)"):
        load_checkpoint(directory, kinds="sasrec")
    (directory / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(directory, kinds="sasrec")
    (directory / CARD_FILE).write_text(json.dumps(card))
    (directory / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_checkpoint(directory, kinds="sasrec")
    with pytest.raises(ValueError, match="unknown checkpoint kind 'bert4rec'"):
        save(tmp_path / "other", kind="bert4rec")
    assert not (tmp_path / "other").exists()


def run(root, name, kind="sasrec", complete=True, data=DATA):
    """A run directory with an exported best checkpoint, complete (test metrics + marker) or not."""
    best = save(root / name / "checkpoints" / "best", kind=kind, data=data)
    if complete:
        write_json(root / name / "test_metrics.json", {"metrics": {}})
        mark_complete(root / name)
    return best


def test_find_newest_checkpoint(tmp_path):
    old = run(tmp_path, "result_1")
    time.sleep(0.01)
    new = run(tmp_path, "result_2")
    run(tmp_path, "result_3", kind="ilora-teacher")
    # created_at has second resolution: the later mtime decides a tie
    os.utime(old / CARD_FILE, (1, 1))
    assert find_newest_checkpoint(tmp_path, ("sasrec",)) == new
    assert find_newest_checkpoint(tmp_path, ("ilora-teacher",)).parent.parent.name == "result_3"
    with pytest.raises(CheckpointError, match="no complete sasrec-distilled run found"):
        find_newest_checkpoint(tmp_path, ("sasrec-distilled",))


def test_newest_run_lookup_skips_incomplete_runs_and_says_which(tmp_path, caplog):
    done = run(tmp_path, "result_1")
    time.sleep(0.01)
    run(tmp_path, "result_2", complete=False)  # killed: best exported, never tested
    run(tmp_path, "result_3")
    (tmp_path / "result_3" / "test_metrics.json").unlink()  # killed while writing its metrics
    resumed = run(tmp_path, "result_5")
    mark_incomplete(resumed.parents[1])  # resumed, so running again
    with caplog.at_level("WARNING", logger="runkit.runs"):
        assert find_newest_checkpoint(tmp_path, ("sasrec",)) == done
    (message,) = [r.getMessage() for r in caplog.records]
    assert "skipped 3" in message
    for name, why in (
        ("result_2", "no test metrics"),
        ("result_3", "no test metrics"),
        ("result_5", "no completion marker"),
    ):
        assert f"{tmp_path / name} ({why}: killed, failed or still running)" in message
    (tmp_path / "result_1" / "run_complete.json").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"no complete sasrec run found under .* \(skipped 4 incomplete or unreadable\)",
    ):
        find_newest_checkpoint(tmp_path, ("sasrec",))


def test_newest_run_lookup_keeps_to_the_dataset_it_is_asked_for(tmp_path):
    """Several datasets share one result dir: a lookup for one dataset never picks another's
    newer run, and says why none was found when only other datasets have runs."""
    mine = run(tmp_path, "result_1")
    time.sleep(0.01)
    run(tmp_path, "result_2", data={**DATA, "dataset": "other", "fingerprint": "f" * 64})
    assert find_newest_checkpoint(tmp_path, ("sasrec",)) != mine  # unfiltered: the newer one
    assert find_newest_checkpoint(tmp_path, ("sasrec",), fingerprint=DATA["fingerprint"]) == mine
    with pytest.raises(
        CheckpointError,
        match=r"no complete sasrec run on this dataset \(fingerprint 0{12}…\) "
        r"found under .* \(2 built on other datasets\)",
    ):
        find_newest_checkpoint(tmp_path, ("sasrec",), fingerprint="0" * 64)


# --- what loading refuses ------------------------------------------------------------------------


def test_card_kind_edited_by_hand_is_refused(tmp_path):
    directory = save(tmp_path / "ckpt")
    card = json.loads((directory / CARD_FILE).read_text())
    (directory / CARD_FILE).write_text(json.dumps({**card, "kind": "sasrec-distilled"}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory, kinds="sasrec-distilled")
    assert str(info.value) == (
        f"{directory / CARD_FILE}: a sasrec-distilled card must record "
        "distillation.teacher_digest; this one does not (was its kind edited by hand?)"
    )
    with pytest.raises(ValueError, match="a ilora-teacher checkpoint must record base_llm.digest"):
        save_checkpoint(
            tmp_path / "t", kind="ilora-teacher", tensors=tensors(), hparams={}, data=DATA
        )


def test_weights_changed_after_export_are_refused(tmp_path):
    a, b = save(tmp_path / "a"), save(tmp_path / "b", extra={"note": "other"})
    save_checkpoint(b, kind="sasrec", tensors={"x": torch.ones(2)}, hparams={}, data=DATA)
    (a / WEIGHTS_FILE).write_bytes((b / WEIGHTS_FILE).read_bytes())  # weights swapped in
    with pytest.raises(
        CheckpointError,
        match=rf"^{a / WEIGHTS_FILE}: sha256 \w{{12}}… differs from its card's \w{{12}}…; "
        r"the weights were changed or replaced after export$",
    ):
        load_checkpoint(a, kinds="sasrec")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / CARD_FILE).write_text("[1, 2]"),
            "card.json: not a checkpoint card (a JSON list, expected an object)",
        ),
        (
            lambda d: (d / CARD_FILE).write_text('"sasrec"'),
            "card.json: not a checkpoint card (a JSON str, expected an object)",
        ),
        (lambda d: (d / CARD_FILE).write_bytes(b"\xff\xfe{"), "card.json: not valid JSON"),
        (
            lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:100]),
            "model.safetensors: not a readable safetensors file (Error while deserializing header",
        ),
        (
            lambda d: (d / WEIGHTS_FILE).write_bytes(b""),
            "model.safetensors: not a readable safetensors file",
        ),
    ],
)
def test_damaged_files_are_one_clear_error_naming_the_file(tmp_path, damage, message):
    directory = save(tmp_path / "ckpt")
    damage(directory)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory, kinds="sasrec")
    assert str(info.value).startswith(f"{directory}/{message}") and "\n" not in str(info.value)


def test_schema_1_cards_still_load(tmp_path):
    """Cards written before weight digests (schema 1) load; their kind requirements still hold."""
    directory = save(tmp_path / "ckpt")
    card = json.loads((directory / CARD_FILE).read_text())
    card["schema_version"] = 1
    del card["weights"]
    (directory / CARD_FILE).write_text(json.dumps(card))
    assert torch.equal(
        load_checkpoint(directory, kinds="sasrec").tensors["steps"], tensors()["steps"]
    )
    (directory / CARD_FILE).write_text(json.dumps({**card, "kind": "sasrec-distilled"}))
    with pytest.raises(CheckpointError, match="must record distillation.teacher_digest"):
        load_checkpoint(directory, kinds="sasrec-distilled")


# --- atomic writes -----------------------------------------------------------------------------


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary sibling

    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("second")
        raise RuntimeError("crash")
    assert [p.name for p in target.iterdir()] == ["a.txt"]  # the old copy is untouched
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # replaced as a whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(FileExistsError), atomic_directory(target, replace=False):
        pass
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_atomic_file_and_checkpoint_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]

    import runkit.checkpoint as checkpoint_module

    def broken_write_json(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "write_json", broken_write_json)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_sha256_file(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    (tmp_path / "x").write_bytes(data)
    assert sha256_file(tmp_path / "x", chunk_size=1024) == hashlib.sha256(data).hexdigest()
