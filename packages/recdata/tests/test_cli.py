"""`recdata fetch|prepare|stats` in-process: a local HTTP mirror, --from, and bad input that
ends in one `error:` line, exit code 2 and no processed directory."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import threading
import zipfile

import pytest
from recdata_testkit import T0, make_ml1m_zip, write_ml1m, write_original, write_recbole

from recdata.cli import main

ML1M_FILES = ["README", "movies.dat", "ratings.dat", "users.dat"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A local http.server on a free port serving a small ml-1m.zip; yields (url, sha256)."""
    site = tmp_path / "site"
    site.mkdir()
    archive = make_ml1m_zip(site / "ml-1m.zip", write_ml1m(tmp_path / "zip-src"))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        yield f"http://127.0.0.1:{port}/ml-1m.zip", digest
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of `recdata <args>` run in-process."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The single `error:` line; progress bars (tqdm, on stderr) aside, nothing else."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    others = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("error:")]
    assert all("|" in ln and "%" in ln for ln in others), others  # only progress bars
    return errors[0]


def roots(tmp_path):
    return ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]


def test_fetch_from_a_mirror_with_checksum(tmp_path, capsys, mirror):
    url, digest = mirror
    code, out, err = run_cli(
        ["fetch", "ml-1m", *roots(tmp_path), "--url", url, "--sha256", digest], capsys
    )
    assert code == 0, err
    raw = tmp_path / "data" / "ml-1m"
    assert sorted(p.name for p in raw.iterdir()) == ML1M_FILES
    assert (raw / "ratings.dat").read_bytes() == (tmp_path / "zip-src" / "ratings.dat").read_bytes()
    assert f"fetched ml-1m into {raw}" in out
    assert (tmp_path / "cache" / "downloads" / "ml-1m.zip").is_file()  # kept for a re-fetch

    # then prepare works offline from the fetched files
    code, out, err = run_cli(["prepare", "ml-1m", *roots(tmp_path)], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "data" / "processed" / "ml-1m" / "meta.json").read_text())
    assert meta["counts"]["users"] == 3 and meta["counts"]["dropped_users"] == 1
    assert "train samples" in out and "prepared ml-1m into" in out
    code, out, _ = run_cli(["stats", "ml-1m", *roots(tmp_path)], capsys)
    assert code == 0 and meta["fingerprint"][:16] in out


def test_checksum_mismatch_is_refused(tmp_path, capsys, mirror):
    url, _ = mirror
    code, _, err = run_cli(
        ["fetch", "ml-1m", *roots(tmp_path), "--url", url, "--sha256", "0" * 64], capsys
    )
    assert code == 2
    line = error_line(err)
    assert line.startswith("error: checksum mismatch for ") and "expected " + "0" * 64 in line
    assert not (tmp_path / "data" / "ml-1m").exists()
    assert not (tmp_path / "cache" / "downloads" / "ml-1m.zip").exists()  # bad download removed
    assert not list((tmp_path / "data").glob(".*"))  # and no temporary directory either


def test_unreachable_mirror(tmp_path, capsys, mirror):
    url, digest = mirror
    missing = url.replace("ml-1m.zip", "nothing.zip")
    code, _, err = run_cli(
        ["fetch", "ml-1m", *roots(tmp_path), "--url", missing, "--sha256", digest], capsys
    )
    assert code == 2
    assert error_line(err).startswith(f"error: download of {missing} failed: File not found")
    assert not (tmp_path / "data" / "ml-1m").exists()


def test_fetch_from_directory_and_zip(tmp_path, capsys):
    src = write_ml1m(tmp_path / "downloaded")
    code, _, err = run_cli(["fetch", "ml-1m", *roots(tmp_path), "--from", str(src)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "data" / "ml-1m").iterdir()) == ML1M_FILES

    archive = make_ml1m_zip(tmp_path / "ml-1m.zip", src)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    other = ["--data-root", str(tmp_path / "d2"), "--cache-dir", str(tmp_path / "cache")]
    code, _, err = run_cli(
        ["fetch", "ml-1m", *other, "--from", str(archive), "--sha256", digest], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "d2" / "ml-1m").iterdir()) == ML1M_FILES

    # without --sha256 a zip is checked against the official GroupLens digest
    code, _, err = run_cli(
        ["fetch", "ml-1m", "--data-root", str(tmp_path / "d3"), "--from", str(archive)], capsys
    )
    assert code == 2 and "checksum mismatch" in error_line(err)
    assert not (tmp_path / "d3" / "ml-1m").exists()


def test_unsafe_zip_members_are_refused(tmp_path, capsys):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/../../escape.txt", "x")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    code, _, err = run_cli(
        ["fetch", "ml-1m", *roots(tmp_path), "--from", str(archive), "--sha256", digest], capsys
    )
    assert code == 2 and "unsafe member name" in error_line(err)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "data" / "ml-1m").exists()


@pytest.mark.parametrize(
    ("dataset", "writer"),
    [("ml-100k", write_recbole), ("ml-100k", write_original), ("ml-1m", write_ml1m)],
)
def test_prepare_from_each_layout(tmp_path, capsys, dataset, writer):
    src = writer(tmp_path / "src")
    code, out, err = run_cli(["prepare", dataset, *roots(tmp_path), "--from", str(src)], capsys)
    assert code == 0, err
    processed = tmp_path / "data" / "processed" / dataset
    assert sorted(p.name for p in processed.iterdir()) == [
        "items.parquet",
        "meta.json",
        "sequences.parquet",
    ]
    assert out.splitlines()[-1].startswith(f"prepared {dataset} into {processed} in ")
    # "label<padding>  value" rows of format_stats
    values = {k.strip(): v for k, v in (ln.rsplit(None, 1) for ln in out.splitlines()[:-1])}
    assert values["users"] == "3" and values["items"] == "7" and values["interactions"] == "14"
    assert values["dropped users (< 3 interactions)"] == "1"
    assert (values["train samples"], values["valid samples"], values["test samples"]) == (
        "5",
        "3",
        "3",
    )


# --- bad input ---------------------------------------------------------------------------------


def _replace_line(src, number, line, name="ratings.dat"):
    lines = (src / name).read_text(encoding="latin-1").splitlines()
    lines[number - 1] = line
    (src / name).write_text("\n".join(lines) + "\n", encoding="latin-1")


def _append(src, text, name="ratings.dat"):
    with open(src / name, "a", encoding="latin-1") as handle:
        handle.write(text)


def _cut_short(src):
    """The file ends in the middle of its last timestamp, as a truncated copy does."""
    text = (src / "ratings.dat").read_text()
    (src / "ratings.dat").write_text(text[: len(text) - 5])


T = T0 + 1000  # a plausible timestamp
BAD_INPUT = [
    (
        lambda s: _replace_line(s, 5, "5::12::five::100"),
        r"src/ratings.dat:5: expected UserID::MovieID::Rating::Timestamp, got '5::12::five::100'$",
    ),
    (
        lambda s: _append(s, "99::No Genres Here (1999)\n", "movies.dat"),
        r"src/movies.dat:9: expected MovieID::Title \(Year\)::Genre\|Genre",
    ),
    (
        lambda s: (s / "movies.dat").unlink(),
        r"src: no dataset files found \(expected ratings.dat\+movies.dat\)$",
    ),
    (
        lambda s: (s / "ratings.dat").write_text(f"1::3::5::{T}\n1::7::4::{T}\n2::3::3::{T}\n"),
        r"ml-1m: no user has at least 3 interactions; the dataset is empty after filtering$",
    ),
    (
        lambda s: _append(s, f"9::777::4::{T}\n"),
        r"src: items \[777\] are rated but have no metadata$",
    ),
    (
        lambda s: _replace_line(s, 3, "2::7::5::-50"),
        r"src/ratings.dat:3: timestamp -50 is negative$",
    ),
    (
        lambda s: _replace_line(s, 4, f"5::3::6::{T}"),
        r"src/ratings.dat:4: rating 6 is outside ml-1m's rating scale 1..5$",
    ),
    (
        lambda s: _replace_line(s, 4, f"5::3::0::{T}"),
        r"src/ratings.dat:4: rating 0 is outside ml-1m's rating scale 1..5$",
    ),
    (
        lambda s: _replace_line(s, 2, f"5::12::nan::{T}"),
        r"src/ratings.dat:2: rating is NaN, not on ml-1m's rating scale 1..5$",
    ),
    (
        _cut_short,
        r"src/ratings.dat:16: timestamp 88361 is before 1995-01-01, earlier than any ml-1m "
        r"rating \(is the line cut short\?\)$",
    ),
    (
        lambda s: _append(s, "3::Toy Story Again (1995)::Comedy\n", "movies.dat"),
        r"src/movies.dat:9: item id 3 appears again \(first on line 1\)$",
    ),
]


@pytest.mark.parametrize(("damage", "pattern"), BAD_INPUT)
def test_bad_input_is_one_error_line_naming_the_users_file(tmp_path, capsys, damage, pattern):
    src = write_ml1m(tmp_path / "src")
    damage(src)
    code, out, err = run_cli(["prepare", "ml-1m", *roots(tmp_path), "--from", str(src)], capsys)
    assert code == 2
    assert error_line(err) == err.strip()
    assert re.match(r"^error: (\S+/)?" + pattern, err.strip()), err
    assert not (tmp_path / "data").exists()  # neither a raw copy nor a processed directory


def test_a_bad_copy_never_replaces_a_good_one(tmp_path, capsys):
    good = write_ml1m(tmp_path / "good")
    assert run_cli(["prepare", "ml-1m", *roots(tmp_path), "--from", str(good)], capsys)[0] == 0
    raw, processed = tmp_path / "data" / "ml-1m", tmp_path / "data" / "processed" / "ml-1m"
    before = {p.name: p.read_bytes() for d in (raw, processed) for p in d.iterdir()}
    bad = write_ml1m(tmp_path / "bad")
    _replace_line(bad, 4, f"5::3::6::{T}")
    for command in ("prepare", "fetch"):
        code, _, err = run_cli([command, "ml-1m", *roots(tmp_path), "--from", str(bad)], capsys)
        assert code == 2 and error_line(err).startswith(f"error: {bad / 'ratings.dat'}:4: rating 6")
        assert {p.name: p.read_bytes() for d in (raw, processed) for p in d.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "ml-1m",
        "processed",
    ]  # no temporaries


def test_errors_inside_a_zip_name_the_member_of_the_users_zip(tmp_path, capsys):
    src = write_ml1m(tmp_path / "src")
    _replace_line(src, 3, "2::7::5::-50")
    archive = make_ml1m_zip(tmp_path / "ml-1m.zip", src)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    code, _, err = run_cli(
        ["prepare", "ml-1m", *roots(tmp_path), "--from", str(archive), "--sha256", digest], capsys
    )
    assert (
        code == 2
        and error_line(err) == f"error: {archive}:ml-1m/ratings.dat:3: timestamp -50 is negative"
    )
    assert not (tmp_path / "data").exists()


def test_recbole_malformed_line_counts_the_header(tmp_path, capsys):
    src = write_recbole(tmp_path / "src")
    _append(src, "1\t2\n", "ml-100k.inter")
    code, _, err = run_cli(["prepare", "ml-100k", *roots(tmp_path), "--from", str(src)], capsys)
    assert code == 2
    assert error_line(err) == (
        f"error: {src}/ml-100k.inter:18: expected user_id<TAB>item_id<TAB>rating<TAB>timestamp, "
        "got '1\\t2'"
    )
    assert not (tmp_path / "data" / "processed" / "ml-100k").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "ml-20m"], "error: unknown dataset 'ml-20m'; known datasets: ml-100k, ml-1m"),
        (["fetch", "netflix"], "error: unknown dataset 'netflix'; known datasets: ml-100k, ml-1m"),
        (
            ["stats", "ml-1m"],
            "is not a prepared dataset (no meta.json); run `recdata prepare <dataset>`",
        ),
        (
            ["prepare", "ml-1m", "--from", "/nonexistent/dir"],
            "error: --from /nonexistent/dir: no such file or directory",
        ),
    ],
)
def test_user_errors(tmp_path, capsys, args, message):
    code, _, err = run_cli([*args, *roots(tmp_path)], capsys)
    assert code == 2
    assert message in error_line(err) and err.strip() == error_line(err)
    assert not (tmp_path / "data" / "processed").exists()


def test_usage_errors_exit_2(capsys):
    code, _, err = run_cli(["prepare"], capsys)
    assert code == 2 and "usage: recdata prepare" in err
