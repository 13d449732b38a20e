"""Every source format loads into the same typed form; broken files fail with file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.data import DataError, load_dataset
from training.data.bookcrossing import load_bookcrossing
from training.data.movielens import load_atomic, load_grouplens_1m, load_grouplens_100k

REPO = Path(__file__).resolve().parents[2]


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_text(text, encoding=encoding)
    return path


@pytest.fixture
def grouplens_100k(tmp_path: Path) -> Path:
    flags = ["0"] * 19
    comedy = flags.copy()
    comedy[5] = "1"
    write(tmp_path, "u.data", "1\t10\t5\t881250949\n1\t20\t2\t881250950\n2\t10\t4\t881250951\n")
    write(
        tmp_path,
        "u.item",
        "10|Misérables, Les (1995)|01-Jan-1995||http://x|" + "|".join(comedy) + "\n"
        "20|Toy Story (1995)|01-Jan-1995||http://y|" + "|".join(flags) + "\n",
        encoding="latin-1",
    )
    write(tmp_path, "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return tmp_path


def test_grouplens_100k_loads_titles_years_genres_and_user_features(grouplens_100k):
    ds = load_grouplens_100k(grouplens_100k)
    assert ds.summary() == {"dataset": "ml-100k", "users": 2, "items": 2, "ratings": 3}
    item = ds.items[ds.item_index["10"]]
    assert (item.title, item.year, item.genres) == ("Misérables, Les", 1995, ("Comedy",))
    user = ds.users[ds.user_index["2"]]
    assert (user.age, user.gender, user.occupation) == (53, "F", "other")
    assert ds.ratings.timestamp.tolist() == [881250949, 881250950, 881250951]


def test_grouplens_1m_decodes_genres_occupation_and_age_codes(tmp_path):
    write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    write(tmp_path, "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n")
    write(tmp_path, "users.dat", "1::F::1::10::48067\n")
    ds = load_grouplens_1m(tmp_path)
    assert len(ds.ratings) == 2
    assert ds.items[ds.item_index["661"]].genres == ("Animation", "Children's", "Musical")
    assert (ds.users[0].occupation, ds.users[0].age) == ("K-12 student", "under 18")


def test_bookcrossing_drops_implicit_zero_ratings_and_applies_k_core(tmp_path):
    ratings = ['"User-ID";"ISBN";"Book-Rating"']
    for u in ("1", "2"):
        for isbn in ("A", "B"):
            ratings.append(f'"{u}";"{isbn}";"9"')
    ratings.append('"3";"A";"0"')  # implicit: dropped
    ratings.append('"3";"C";"7"')  # user 3 and book C fall below the 2-core
    write(tmp_path, "BX-Book-Ratings.csv", "\n".join(ratings) + "\n", encoding="latin-1")
    write(
        tmp_path,
        "BX-Books.csv",
        '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher"\n'
        '"A";"Classical Mythology";"Mark P. O. Morford";"2002";"OUP"\n'
        '"B";"Clara Callan";"Richard Bruce Wright";"2001";"HarperFlamingo"\n',
        encoding="latin-1",
    )
    write(tmp_path, "BX-Users.csv", '"User-ID";"Location";"Age"\n"1";"nyc, new york, usa";NULL\n"2";"stockton, california, usa";"18"\n', encoding="latin-1")
    ds = load_bookcrossing(tmp_path, min_user=2, min_item=2)
    assert ds.summary() == {"dataset": "bookcrossing", "users": 2, "items": 2, "ratings": 4}
    assert ds.items[ds.item_index["A"]].title == "Classical Mythology by Mark P. O. Morford"
    assert ds.users[ds.user_index["2"]].age == 18 and ds.users[ds.user_index["1"]].age is None
    assert ds.scale.liked_at_least == 8


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("1\t10\tfive\t881250949", "rating", "expected a number"),
        ("1\t10\t7\t881250949", "rating", "outside 1-5"),
        ("1\t10\t5\tyesterday", "timestamp", "expected an integer"),
    ],
)
def test_bad_rating_value_names_file_line_and_field(grouplens_100k, line, field, needle):
    write(grouplens_100k, "u.data", "1\t20\t2\t881250950\n" + line + "\n")
    with pytest.raises(DataError) as info:
        load_grouplens_100k(grouplens_100k)
    err = info.value
    assert (err.path.name, err.line, err.field) == ("u.data", 2, field)
    assert needle in str(err) and f"u.data, line 2, field '{field}'" in str(err)


def test_wrong_column_count_is_reported_with_its_line(grouplens_100k):
    write(grouplens_100k, "u.data", "1\t10\t5\t881250949\n1,20,2,881250950\n")
    with pytest.raises(DataError, match=r"u\.data, line 2: expected 4 fields"):
        load_grouplens_100k(grouplens_100k)


def test_missing_file_is_named(grouplens_100k):
    (grouplens_100k / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user: file not found"):
        load_grouplens_100k(grouplens_100k)


def test_atomic_header_row_is_skipped_and_bad_rows_are_reported(tmp_path):
    write(tmp_path, "x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t4\t10\n1\t3\t\t11\n")
    write(tmp_path, "x.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n2\tHeat\t1995\tAction Crime\n3\tBabe\t1995\tComedy\n")
    write(tmp_path, "x.user", "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t30\tF\twriter\t1\n")
    with pytest.raises(DataError) as info:
        load_atomic(tmp_path, "x")
    assert (info.value.path.name, info.value.line, info.value.field) == ("x.inter", 3, "rating")


def test_unknown_format_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset format 'netflix'"):
        load_dataset("netflix", tmp_path)
    with pytest.raises(DataError, match="data folder not found"):
        load_dataset("ml-1m", tmp_path / "nope")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_reports_a_corrupt_file_in_one_line_and_exits_non_zero(grouplens_100k):
    write(grouplens_100k, "u.data", "1\t10\t5\t881250949\n1\t20\tbad\t881250950\n")
    result = run_cli("data", "--dataset", "ml-100k", "--data-path", str(grouplens_100k))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0] == f"error: {grouplens_100k / 'u.data'}, line 2, field 'rating': expected a number, got 'bad'"


def test_cli_reports_a_missing_folder_in_one_line(tmp_path):
    result = run_cli("data", "--dataset", "ml-1m", "--data-path", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'absent'}: data folder not found"
