"""`sasrec.export`: the ONNX export of a student ranks exactly as its checkpoint."""

from __future__ import annotations

import json

import pytest

from recdata.errors import UserError
from sasrec.export import META_FILE, export_onnx, load_export, main
from sasrec.recommend import Query, Recommender


@pytest.fixture(scope="module")
def exported(tiny_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "student"
    meta = export_onnx(tiny_pipeline["student"], out, tiny_pipeline["data"])
    return out, meta


def test_the_export_ranks_as_the_checkpoint(exported, tiny_pipeline):
    out, meta = exported
    checkpoint = Recommender.load(tiny_pipeline["student"], tiny_pipeline["data"])
    onnx = load_export(out, tiny_pipeline["data"])
    c = checkpoint.catalogue
    n, width = c.num_items, checkpoint.max_seq_len
    histories = [c.user_history(u) for u in c.user_raw]  # every user's whole sequence
    histories += [[1], [(3 * t) % n + 1 for t in range(width + 9)], []]  # short, long, new user
    queries = [Query(h, 20, exclude_history=i % 2 == 0) for i, h in enumerate(histories)]
    queries += [Query([2, 3], 5, candidates=list(range(10, 30)), exclude=[12])]
    for expected, got in zip(checkpoint.rank(queries), onnx.rank(queries), strict=True):
        assert got.items == expected.items and got.fallback == expected.fallback
        assert max(abs(a - b) for a, b in zip(got.scores, expected.scores, strict=True)) < 1e-4
    assert meta["check"]["equal"] and meta["check"]["histories"] == len(c.user_raw)
    assert json.loads((out / META_FILE).read_text())["input"]["shape"] == ["batch", width]


def test_export_refuses_to_overwrite_a_directory_that_is_not_an_export(tiny_pipeline, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a student export"):
        export_onnx(tiny_pipeline["student"], tmp_path, tiny_pipeline["data"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_cli_names_a_bad_checkpoint_in_one_line(tiny_pipeline, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tiny_pipeline["teacher"]), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "ilora-teacher" in err
