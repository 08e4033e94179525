"""Parsing of the three raw layouts: values, titles, years, genres and line-numbered errors."""

from __future__ import annotations

import numpy as np
import pytest
from recdata_testkit import (
    CLEAN_TITLES,
    DATASET_OF_LAYOUT,
    LAYOUTS,
    MOVIES,
    RATINGS,
    T0,
    WRITERS,
    write_ml1m,
    write_original,
    write_recbole,
)

from recdata.errors import DataError
from recdata.parse import (
    _parse_interaction_lines,
    _parse_interactions_fast,
    _read_lines,
    clean_title,
    detect_layout,
    parse_raw,
    split_title_year,
)
from recdata.sources import dataset_spec


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Usual Suspects, The", "The Usual Suspects"),
        ("American President, An", "An American President"),
        ("Few Good Men, A", "A Few Good Men"),
        ("Appartement, L'", "L'Appartement"),
        ("Misérables, Les", "Les Misérables"),
        # a trailing parenthetical (the original title) is kept after the moved article
        (
            "City of Lost Children, The (Cité des enfants perdus, La)",
            "The City of Lost Children (Cité des enfants perdus, La)",
        ),
        ("Good, the Bad and the Ugly, The", "The Good, the Bad and the Ugly"),
        ("Toy Story", "Toy Story"),
        ("Taxi Driver  ", "Taxi Driver"),
        ("Them, Theodore", "Them, Theodore"),  # not an article
    ],
)
def test_clean_title(raw, clean):
    assert clean_title(raw) == clean


@pytest.mark.parametrize(
    ("text", "title", "year"),
    [
        ("Toy Story (1995)", "Toy Story", 1995),
        ("Usual Suspects, The (1995)", "The Usual Suspects", 1995),
        ("Big Blue, The (Grand bleu, Le) (1988)", "The Big Blue (Grand bleu, Le)", 1988),
        (
            "Shanghai Triad (Yao a yao yao dao waipo qiao) (1995) ",
            "Shanghai Triad (Yao a yao yao dao waipo qiao)",
            1995,
        ),
        ("unknown", "unknown", None),
        ("Nineteen (19)", "Nineteen (19)", None),
    ],
)
def test_split_title_year(text, title, year):
    assert split_title_year(text) == (title, year)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_parses_to_the_same_values(tmp_path, layout):
    raw = WRITERS[layout](tmp_path / layout)
    spec = dataset_spec(DATASET_OF_LAYOUT[layout])
    detected, inter, items = parse_raw(raw, spec.layouts)
    assert detected == layout
    # interactions in file order, exactly as written
    expected = np.array(RATINGS)
    np.testing.assert_array_equal(inter.users, expected[:, 0])
    np.testing.assert_array_equal(inter.items, expected[:, 1])
    np.testing.assert_array_equal(inter.ratings, expected[:, 2].astype(np.float32))
    np.testing.assert_array_equal(inter.timestamps, T0 + expected[:, 3])
    assert inter.lines.tolist() == list(range(2, 18) if layout == "recbole" else range(1, 17))
    assert inter.users.dtype == np.int64 and inter.ratings.dtype == np.float32
    # every movie, including the never-rated one, with a cleaned title, its year and genres
    assert sorted(items) == sorted(MOVIES)
    for raw_id, (_, year, genres) in MOVIES.items():
        assert items[raw_id].title == CLEAN_TITLES[raw_id]
        assert items[raw_id].year == year
        assert items[raw_id].genres == genres


def test_ml1m_movies_are_read_as_latin1(tmp_path):
    raw = write_ml1m(tmp_path)
    assert b"Cit\xe9 des enfants" in (raw / "movies.dat").read_bytes()  # one latin-1 byte
    _, _, items = parse_raw(raw, ("ml-1m",))
    assert items[12].title == "The City of Lost Children (Cité des enfants perdus, La)"


def test_latin1_control_bytes_do_not_split_lines(tmp_path):
    """Byte 0x85 decodes to U+0085, which str.splitlines() treats as a line break."""
    movies = dict(MOVIES)
    movies[42] = ("He\x85at", 1995, ["Action"])
    raw = write_ml1m(tmp_path, movies=movies)
    assert len(_read_lines(raw / "movies.dat", "latin-1")) == len(movies)
    _, _, items = parse_raw(raw, ("ml-1m",))
    assert items[42].title == "He\x85at" and items[42].year == 1995


def test_original_layout_drops_unknown_genre_and_falls_back_to_release_date(tmp_path):
    raw = write_original(tmp_path)
    with open(raw / "u.item", "a", encoding="latin-1") as handle:
        flags = ["1"] + ["0"] * 18  # only "unknown"
        handle.write(f"267|unknown|01-Jan-1996||http://x|{'|'.join(flags)}\n")
        handle.write(
            f"268|No Year Film|05-Mar-1997||http://x|{'|'.join(['0'] * 8 + ['1'] + ['0'] * 10)}\n"
        )
    _, _, items = parse_raw(raw, ("recbole", "ml-100k-original"))
    assert (items[267].title, items[267].year, items[267].genres) == ("unknown", 1996, [])
    assert (items[268].title, items[268].year, items[268].genres) == (
        "No Year Film",
        1997,
        ["Drama"],
    )


def test_recbole_item_without_year_and_unknown_class(tmp_path):
    raw = write_recbole(tmp_path)
    with open(raw / "ml-100k.item", "a", encoding="utf-8") as handle:
        handle.write("267\tunknown\t\tunknown\n")
    _, _, items = parse_raw(raw, ("recbole",))
    assert (items[267].title, items[267].year, items[267].genres) == ("unknown", None, [])


def test_layout_detection_prefers_the_first_complete_layout(tmp_path):
    write_recbole(tmp_path)
    write_original(tmp_path)
    assert detect_layout(tmp_path, ("recbole", "ml-100k-original")) == "recbole"
    (tmp_path / "ml-100k.item").unlink()  # recbole incomplete -> the original layout
    assert detect_layout(tmp_path, ("recbole", "ml-100k-original")) == "ml-100k-original"
    with pytest.raises(
        DataError, match=r"no dataset files found \(expected ratings.dat\+movies.dat\)"
    ):
        detect_layout(tmp_path, ("ml-1m",))


# --- fast path (pyarrow) versus the reference line loop --------------------------------------


@pytest.mark.parametrize("sep", ["::", "\t"])
def test_fast_path_equals_line_loop_on_random_files(tmp_path, sep):
    rng = np.random.default_rng(0)
    n = 5000
    rows = np.stack(
        [
            rng.integers(1, 7000, n),
            rng.integers(1, 4000, n),
            rng.integers(1, 6, n),
            rng.integers(9 * 10**8, 10**9, n),
        ],
        1,
    )
    path = tmp_path / "r.dat"
    path.write_text("".join(f"{u}{sep}{i}{sep}{r}{sep}{t}\n" for u, i, r, t in rows.tolist()))
    fast = _parse_interactions_fast(path, sep, skip_rows=0)
    slow = _parse_interaction_lines(path, _read_lines(path, "latin-1"), sep, "x", 1)
    assert fast is not None
    for name in ("users", "items", "ratings", "timestamps"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast.users, rows[:, 0])


@pytest.mark.parametrize(
    "content",
    [
        "1::2::5::100\n3::4::3.5::200.0\n",  # float timestamp (the recbole column type)
        "1::2::5::100\r\n\n   \n3::4::3.5::200\r\n",  # CRLF, blank and whitespace-only lines
        "1::2::5::100\n3::4::3.5::200",  # no final newline
    ],
)
def test_irregular_but_valid_files_parse_like_the_line_loop(tmp_path, content):
    path = tmp_path / "ratings.dat"
    path.write_text(content)
    (tmp_path / "movies.dat").write_text("2::A (2000)::Drama\n4::B (2001)::Comedy\n")
    _, inter, _ = parse_raw(tmp_path, ("ml-1m",))
    np.testing.assert_array_equal(inter.users, [1, 3])
    np.testing.assert_array_equal(inter.items, [2, 4])
    np.testing.assert_array_equal(inter.ratings, np.array([5, 3.5], np.float32))
    np.testing.assert_array_equal(inter.timestamps, [100, 200])


# --- malformed input: file and line number in one message -------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "layout", "file", "lineno"),
    [
        ("1::2::x::100", "ml-1m", "ratings.dat", 3),
        ("1::2::5", "ml-1m", "ratings.dat", 3),
        ("1:2::5::100", "ml-1m", "ratings.dat", 3),
        ("1::2::5::100::7", "ml-1m", "ratings.dat", 3),
        ("1::2::5::inf", "ml-1m", "ratings.dat", 3),
        ("1\t2\t5", "recbole", "ml-100k.inter", 4),  # line 1 is the header
        ("1\ttwo\t5\t100", "ml-100k-original", "u.data", 3),
    ],
)
def test_malformed_interaction_line_names_file_and_line(tmp_path, bad_line, layout, file, lineno):
    raw = WRITERS[layout](tmp_path)
    lines = (raw / file).read_text(encoding="latin-1").splitlines()
    header = 1 if layout == "recbole" else 0
    lines.insert(header + 2, bad_line)  # becomes line `lineno`
    (raw / file).write_text("\n".join(lines) + "\n", encoding="latin-1")
    spec = dataset_spec(DATASET_OF_LAYOUT[layout])
    with pytest.raises(DataError) as info:
        parse_raw(raw, spec.layouts)
    message = str(info.value)
    assert message.startswith(f"{raw / file}:{lineno}: expected ")
    assert repr(bad_line) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("layout", "file", "line", "pattern"),
    [
        (
            "ml-1m",
            "movies.dat",
            "99::Broken Title (1999)",
            r"movies.dat:9: expected MovieID::Title",
        ),
        (
            "ml-1m",
            "movies.dat",
            "x::Broken (1999)::Drama",
            r"movies.dat:9: expected an integer MovieID, got 'x'",
        ),
        (
            "recbole",
            "ml-100k.item",
            "99\tBroken\t1999",
            r"ml-100k.item:10: expected item_id<TAB>movie_title",
        ),
        (
            "ml-100k-original",
            "u.item",
            "99|Broken (1999)|01-Jan-1999||u|1|0",
            r"u.item:9: expected 24 '\|'-separated fields",
        ),
        (
            "ml-100k-original",
            "u.item",
            "99|Broken (1999)|01-Jan-1999||u|" + "|".join(["2"] + ["0"] * 18),
            r"u.item:9: expected 0/1 genre flags",
        ),
        (
            "recbole",
            "ml-100k.item",
            "7\tAgain\t1999\tDrama",
            r"ml-100k.item:10: item id 7 appears again \(first on line 3\)",
        ),
        (
            "ml-100k-original",
            "u.item",
            "42|Heat (1995)|01-Jan-1995||u|" + "|".join(["0"] * 19),
            r"u.item:9: item id 42 appears again \(first on line 7\)",
        ),
    ],
)
def test_malformed_item_line_names_file_and_line(tmp_path, layout, file, line, pattern):
    raw = WRITERS[layout](tmp_path)
    with open(raw / file, "a", encoding="latin-1") as handle:
        handle.write(line + "\n")
    spec = dataset_spec(DATASET_OF_LAYOUT[layout])
    with pytest.raises(DataError, match=pattern):
        parse_raw(raw, spec.layouts)


def test_recbole_bad_header_and_bad_encoding(tmp_path):
    raw = write_recbole(tmp_path)
    text = (raw / "ml-100k.inter").read_text()
    (raw / "ml-100k.inter").write_text(text.replace("user_id:token", "uid:token", 1))
    with pytest.raises(DataError, match=r"ml-100k.inter:1: expected a header starting with"):
        parse_raw(raw, ("recbole",))
    (raw / "ml-100k.inter").write_text(text)
    (raw / "ml-100k.item").write_bytes(
        (raw / "ml-100k.item").read_bytes() + b"99\tCaf\xe9\t1999\tDrama\n"
    )
    with pytest.raises(DataError, match=r"ml-100k.item: not utf-8 text"):
        parse_raw(raw, ("recbole",))


def test_empty_and_header_only_files(tmp_path):
    raw = write_ml1m(tmp_path / "a")
    (raw / "ratings.dat").write_text("")
    with pytest.raises(DataError, match=r"ratings.dat: no interactions"):
        parse_raw(raw, ("ml-1m",))
    raw = write_recbole(tmp_path / "b")
    (raw / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    )
    with pytest.raises(DataError, match=r"ml-100k.inter: no interactions"):
        parse_raw(raw, ("recbole",))
    (raw / "ml-100k.inter").write_text("")
    with pytest.raises(DataError, match=r"ml-100k.inter: empty file"):
        parse_raw(raw, ("recbole",))
