"""Real files that are subtly wrong either load correctly or fail with one DataError that names the
file (and the line and field where there is one) before any training starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, load_dataset
from training.data.bookcrossing import load_bookcrossing
from training.data.embedded import ensure_ml100k
from training.data.movielens import load_atomic, load_grouplens_1m, load_grouplens_100k

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("RECRANKER_CACHE_DIR", REPO / ".cache"))  # as tests/conftest.py
GENRE_FLAGS = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)  # Comedy
UDATA = "1\t10\t5\t881250949\n1\t20\t2\t881250950\n2\t10\t4\t881250951\n"
UITEM = f"10|Misérables, Les (1995)|01-Jan-1995||http://x|{GENRE_FLAGS}\n20|Cérémonie, La (1995)|01-Jan-1995||http://y|{GENRE_FLAGS}\n"
UUSER = "1|24|M|technician|85711\n2|53|F|other|94043\n"


def write(folder: Path, name: str, text: str | bytes, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


@pytest.fixture
def ml100k_files(tmp_path: Path) -> Path:
    write(tmp_path, "u.data", UDATA)
    write(tmp_path, "u.item", UITEM, encoding="latin-1")
    write(tmp_path, "u.user", UUSER)
    return tmp_path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def load_error(loader, folder: Path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        loader(folder, **kwargs)
    return info.value


# Empty data sets


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_ratings_file_is_an_error_naming_it(ml100k_files, content):
    write(ml100k_files, "u.data", content)
    err = load_error(load_grouplens_100k, ml100k_files)
    assert err.path.name == "u.data" and "no ratings" in str(err)


def test_cli_rejects_an_empty_ratings_file_in_one_line_before_training(ml100k_files):
    write(ml100k_files, "u.data", "")
    result = run_cli("data", "--dataset", "ml-100k", "--data-path", str(ml100k_files))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {ml100k_files / 'u.data'}: no ratings: the file holds no data lines"



def test_a_data_set_where_no_user_has_three_likes_stops_before_training(ml100k_files):
    """Ratings but nothing to hold out: a split without validation or test users is refused."""
    rows = "".join(f"{u}\t{i}\t2\t{880000000 + i}\n" for u in (1, 2) for i in (1, 2, 3))
    write(ml100k_files, "u.data", rows)
    result = run_cli("data", "--dataset", "ml-100k", "--data-path", str(ml100k_files))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {ml100k_files}: no user has 3 or more liked ratings")
    assert "Traceback" not in result.stderr

def test_empty_ml1m_ratings_file_is_an_error_naming_it(tmp_path):
    write(tmp_path, "ratings.dat", "")
    write(tmp_path, "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n")
    write(tmp_path, "users.dat", "1::F::1::10::48067\n")
    assert load_error(load_grouplens_1m, tmp_path).path.name == "ratings.dat"


def test_atomic_ratings_file_with_only_a_header_is_an_error_naming_it(tmp_path):
    atomic_set(tmp_path, "x", inter_rows="")
    err = load_error(load_atomic, tmp_path)
    assert err.path.name == "x.inter" and "no ratings" in str(err)


# Empty item and user tables


@pytest.mark.parametrize(("name", "what"), [("u.item", "no items"), ("u.user", "no users")])
def test_empty_ml100k_item_or_user_file_is_an_error_naming_it(ml100k_files, name, what):
    write(ml100k_files, name, "")
    err = load_error(load_grouplens_100k, ml100k_files)
    assert err.path.name == name and what in str(err)


@pytest.mark.parametrize(("name", "what"), [("movies.dat", "no movies"), ("users.dat", "no users")])
def test_empty_ml1m_movie_or_user_file_is_an_error_naming_it(tmp_path, name, what):
    write(tmp_path, "ratings.dat", "1::1193::5::978300760\n")
    write(tmp_path, "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n")
    write(tmp_path, "users.dat", "1::F::1::10::48067\n")
    write(tmp_path, name, "")
    err = load_error(load_grouplens_1m, tmp_path)
    assert err.path.name == name and what in str(err)


@pytest.mark.parametrize(("ext", "what"), [("item", "no items"), ("user", "no users")])
def test_atomic_item_or_user_file_with_only_a_header_is_an_error_naming_it(tmp_path, ext, what):
    atomic_set(tmp_path, "x", **{f"{ext}_rows": ""})
    err = load_error(load_atomic, tmp_path)
    assert err.path.name == f"x.{ext}" and what in str(err)


# Byte-order marks and encodings


def test_byte_order_mark_is_stripped_so_the_first_user_is_not_a_phantom(ml100k_files):
    write(ml100k_files, "u.data", b"\xef\xbb\xbf" + UDATA.encode())
    write(ml100k_files, "u.user", b"\xef\xbb\xbf" + UUSER.encode())
    write(ml100k_files, "u.item", b"\xef\xbb\xbf" + UITEM.encode())
    ds = load_grouplens_100k(ml100k_files)
    assert ds.summary() == {"dataset": "ml-100k", "users": 2, "items": 2, "ratings": 3}
    assert [u.user_id for u in ds.users] == ["1", "2"] and ds.users[0].age == 24
    assert [it.item_id for it in ds.items] == ["10", "20"]


def test_byte_order_mark_is_stripped_from_a_csv_header(tmp_path):
    bookcrossing_set(tmp_path)
    ratings = tmp_path / "BX-Book-Ratings.csv"
    ratings.write_bytes(b"\xef\xbb\xbf" + ratings.read_bytes())
    assert load_bookcrossing(tmp_path, min_user=2, min_item=2).summary()["ratings"] == 4


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_item_titles_are_the_same_from_the_latin1_original_and_a_utf8_resave(ml100k_files, encoding):
    write(ml100k_files, "u.item", UITEM, encoding=encoding)
    ds = load_grouplens_100k(ml100k_files)
    assert [it.title for it in ds.items] == ["Misérables, Les", "Cérémonie, La"]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_ml1m_titles_are_the_same_from_the_latin1_original_and_a_utf8_resave(tmp_path, encoding):
    write(tmp_path, "ratings.dat", "1::1::5::978300760\n")
    write(tmp_path, "movies.dat", "1::Misérables, Les (1995)::Drama|Musical\n", encoding=encoding)
    write(tmp_path, "users.dat", "1::F::25::10::48067\n")
    assert load_grouplens_1m(tmp_path).items[0].title == "Misérables, Les"


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_bookcrossing_titles_are_the_same_from_the_latin1_original_and_a_utf8_resave(tmp_path, encoding):
    bookcrossing_set(tmp_path, encoding=encoding)
    write(
        tmp_path,
        "BX-Books.csv",
        '"ISBN";"Book-Title";"Book-Author"\n"A";"Les Misérables";"Victor Hugo"\n"B";"Clara Callan";"R. B. Wright"\n',
        encoding=encoding,
    )
    ds = load_bookcrossing(tmp_path, min_user=2, min_item=2)
    assert ds.items[ds.item_index["A"]].title == "Les Misérables by Victor Hugo"


def test_undecodable_byte_in_ratings_names_file_line_and_field(ml100k_files):
    write(ml100k_files, "u.data", b"1\t10\t5\t881250949\n1\t2\xe90\t2\t881250950\n")
    err = load_error(load_grouplens_100k, ml100k_files)
    assert (err.path.name, err.line, err.field) == ("u.data", 2, "item_id")
    assert "not valid UTF-8" in str(err) and "0xe9" in str(err)


def test_undecodable_byte_in_atomic_ratings_names_file_line_and_field(tmp_path):
    atomic_set(tmp_path, "x", inter_rows="1\t2\t4\t10\n1\t3\t5\t1\xe91\n")
    (tmp_path / "x.inter").write_bytes((tmp_path / "x.inter").read_text().encode("latin-1"))
    err = load_error(load_atomic, tmp_path)
    assert (err.path.name, err.line, err.field) == ("x.inter", 3, "timestamp")


def test_cli_reports_an_undecodable_byte_with_its_line_and_field(ml100k_files):
    write(ml100k_files, "u.data", b"1\t10\t5\t881250949\n1\t20\t2\t88125\xff0950\n")
    result = run_cli("data", "--dataset", "ml-100k", "--data-path", str(ml100k_files))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {ml100k_files / 'u.data'}, line 2, field 'timestamp': not valid UTF-8")


def test_utf16_file_is_an_error_not_garbage(ml100k_files):
    write(ml100k_files, "u.user", UUSER, encoding="utf-16")
    err = load_error(load_grouplens_100k, ml100k_files)
    assert err.path.name == "u.user" and "UTF-16" in str(err)


# Demographics


def test_ml1m_age_codes_become_their_bands(tmp_path):
    codes = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
    write(tmp_path, "users.dat", "".join(f"{n}::F::{code}::0::1\n" for n, code in enumerate(codes, start=1)))
    write(tmp_path, "ratings.dat", "".join(f"{n}::1::5::97830076{n}\n" for n in range(1, len(codes) + 1)))
    write(tmp_path, "movies.dat", "1::Heat (1995)::Action\n")
    ds = load_grouplens_1m(tmp_path)
    assert [u.age for u in ds.users] == list(codes.values())


def test_ml1m_unknown_age_code_names_line_and_field(tmp_path):
    write(tmp_path, "users.dat", "1::F::25::0::1\n2::M::30::0::1\n")
    write(tmp_path, "ratings.dat", "1::1::5::978300760\n")
    write(tmp_path, "movies.dat", "1::Heat (1995)::Action\n")
    err = load_error(load_grouplens_1m, tmp_path)
    assert (err.path.name, err.line, err.field) == ("users.dat", 2, "age")


def test_bookcrossing_implausible_ages_are_dropped(tmp_path):
    bookcrossing_set(
        tmp_path,
        raters=("1", "2", "3", "4"),
        users='"1";"nyc, new york, usa";"0"\n"2";"stockton, california, usa";"244"\n"3";"x";"34"\n"4";"y";NULL\n',
    )
    ds = load_bookcrossing(tmp_path, min_user=1, min_item=1)
    assert {u.user_id: u.age for u in ds.users} == {"1": None, "2": None, "3": 34, "4": None}


def test_ml100k_implausible_age_is_dropped(ml100k_files):
    write(ml100k_files, "u.user", "1|0|M|technician|85711\n2|53|F|other|94043\n")
    ds = load_grouplens_100k(ml100k_files)
    assert [u.age for u in ds.users] == [None, 53]


# BookCrossing filters


def test_bookcrossing_set_the_k_core_filter_leaves_empty_is_an_error(tmp_path):
    bookcrossing_set(tmp_path)
    err = load_error(load_bookcrossing, tmp_path, min_user=10, min_item=10)
    assert err.path.name == "BX-Book-Ratings.csv" and "no ratings left after the k-core filter" in str(err)


def test_bookcrossing_set_of_only_implicit_ratings_is_an_error(tmp_path):
    bookcrossing_set(tmp_path, rating="0")
    err = load_error(load_bookcrossing, tmp_path, min_user=1, min_item=1)
    assert err.path.name == "BX-Book-Ratings.csv" and "no explicit ratings" in str(err)


@pytest.mark.parametrize("name", ["BX-Books.csv", "BX-Users.csv"])
def test_bookcrossing_books_or_users_file_without_rows_is_an_error_naming_it(tmp_path, name):
    bookcrossing_set(tmp_path)
    path = tmp_path / name
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert load_error(load_bookcrossing, tmp_path, min_user=2, min_item=2).path.name == name


# Atomic sets of any name


def atomic_set(folder: Path, name: str, *, inter_rows: str | None = None, item_rows: str | None = None, user_rows: str | None = None):
    write(
        folder,
        f"{name}.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + ("1\t2\t4\t10\n1\t3\t5\t11\n" if inter_rows is None else inter_rows),
    )
    write(
        folder,
        f"{name}.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
        + ("2\tHeat\t1995\tAction Crime\n3\tBabe\t1995\tComedy\n" if item_rows is None else item_rows),
    )
    write(
        folder,
        f"{name}.user",
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        + ("1\t30\tF\twriter\t1\n" if user_rows is None else user_rows),
    )


def test_atomic_set_is_found_by_extension_whatever_its_name(tmp_path):
    atomic_set(tmp_path, "amazon-books")
    ds = load_dataset("atomic", tmp_path)
    assert ds.summary() == {"dataset": "amazon-books", "users": 1, "items": 2, "ratings": 2}
    assert ds.items[ds.item_index["2"]].genres == ("Action", "Crime")
    assert (ds.users[0].age, ds.users[0].occupation) == (30, "writer")


def test_atomic_folder_without_an_inter_file_is_an_error(tmp_path):
    atomic_set(tmp_path, "x")
    (tmp_path / "x.inter").unlink()
    with pytest.raises(DataError, match=r"no \.inter file"):
        load_dataset("atomic", tmp_path)


def test_atomic_folder_with_several_inter_files_is_an_error_listing_them(tmp_path):
    atomic_set(tmp_path, "x")
    write(tmp_path, "y.inter", (tmp_path / "x.inter").read_text())
    with pytest.raises(DataError, match=r"several \.inter files \(x\.inter, y\.inter\)"):
        load_dataset("atomic", tmp_path)


def test_atomic_ratings_header_without_a_rating_column_is_an_error(tmp_path):
    atomic_set(tmp_path, "x")
    write(tmp_path, "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t10\n")
    err = load_error(load_atomic, tmp_path)
    assert (err.path.name, err.line) == ("x.inter", 1) and "rating" in str(err)


# The embedded default is untouched


def test_embedded_ml100k_matches_an_independent_parse_of_the_wheel_files(ml100k):
    folder = ensure_ml100k(CACHE)

    def rows(ext: str) -> list[list[str]]:
        lines = (folder / f"ml-100k.{ext}").read_text(encoding="utf-8").splitlines()[1:]
        return [line.split("\t") for line in lines]

    items = [
        (i, t if t != "unkonwn" else f"movie {i}", tuple(g for g in c.split() if g != "unknown"), int(y) if y.isdigit() else None)
        for i, t, y, c in rows("item")
    ]
    assert [(it.item_id, it.title, it.genres, it.year) for it in ml100k.items] == items
    users = [(u, int(a), g, o) for u, a, g, o, _ in rows("user")]
    assert [(u.user_id, u.age, u.gender, u.occupation, u.location) for u in ml100k.users] == [(*u, None) for u in users]
    inter = rows("inter")
    assert [ml100k.users[u].user_id for u in ml100k.ratings.user] == [r[0] for r in inter]
    assert [ml100k.items[i].item_id for i in ml100k.ratings.item] == [r[1] for r in inter]
    assert np.array_equal(ml100k.ratings.rating, np.array([float(r[2]) for r in inter], dtype=np.float32))
    assert ml100k.ratings.timestamp.tolist() == [int(float(r[3])) for r in inter]
    assert ml100k.summary() == {"dataset": "ml-100k", "users": 943, "items": 1682, "ratings": 100000}


def bookcrossing_set(
    folder: Path, *, rating: str = "9", raters: tuple[str, ...] = ("1", "2"), users: str | None = None, encoding: str = "latin-1"
):
    """Every rater rates books A and B."""
    ratings = ['"User-ID";"ISBN";"Book-Rating"'] + [f'"{u}";"{isbn}";"{rating}"' for u in raters for isbn in ("A", "B")]
    write(folder, "BX-Book-Ratings.csv", "\n".join(ratings) + "\n", encoding=encoding)
    write(
        folder,
        "BX-Books.csv",
        '"ISBN";"Book-Title";"Book-Author"\n"A";"Clara Callan";"R. B. Wright"\n"B";"Babe";"Dick King-Smith"\n',
        encoding=encoding,
    )
    write(
        folder,
        "BX-Users.csv",
        '"User-ID";"Location";"Age"\n'
        + (users if users is not None else '"1";"nyc, new york, usa";NULL\n"2";"stockton, california, usa";"18"\n'),
        encoding=encoding,
    )
