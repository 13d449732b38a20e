"""Loaders for MovieLens: RecBole's atomic files (the embedded default) and the original GroupLens
ML-100K and ML-1M releases."""

from __future__ import annotations

import re
from pathlib import Path

from training.data.errors import DataError
from training.data.readers import (
    parse_float,
    parse_int,
    parse_optional_int,
    read_atomic,
    read_delimited,
    require_file,
    require_nonempty,
    require_rows,
)
from training.data.types import MOVIELENS_SCALE, Dataset, Item, User, build_dataset, plausible_age

RatingRow = tuple[str, str, float, int]

# Column order of the genre flags in GroupLens ML-100K's u.item (from its u.genre file).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
# ML-1M's users.dat codes occupations as numbers (from its README).
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
# ML-1M's users.dat records age as the code of a band (from its README), not in years.
ML1M_AGE_BANDS = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
# Column names RecBole's atomic item files use for a title, genres and a year, first found wins.
ATOMIC_TITLE_COLUMNS = ("movie_title", "title", "book_title")
ATOMIC_GENRE_COLUMNS = ("class", "genre", "categories")
ATOMIC_YEAR_COLUMNS = ("release_year", "year")
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def split_title_year(raw: str) -> tuple[str, int | None]:
    match = _TITLE_YEAR.match(raw.strip())
    if match:
        return match.group("title"), int(match.group("year"))
    return raw.strip(), None


def _rating_row(path: Path, line: int, uid: str, iid: str, rating: str, ts: str) -> RatingRow:
    value = parse_float(path, line, "rating", rating)
    if not MOVIELENS_SCALE.validate(value):
        raise DataError(path, f"rating {value:g} outside 1-5", line=line, field="rating")
    return (
        require_nonempty(path, line, "user_id", uid),
        require_nonempty(path, line, "item_id", iid),
        value,
        parse_int(path, line, "timestamp", ts),
    )


def atomic_files(folder: Path) -> tuple[Path, Path, Path]:
    """The `.inter`, `.item` and `.user` file of a RecBole atomic set, found by extension."""
    found = []
    for ext in ("inter", "item", "user"):
        matches = sorted(p for p in folder.glob(f"*.{ext}") if p.is_file())
        if not matches:
            raise DataError(folder, f"no .{ext} file; an atomic data set is <name>.inter, <name>.item and <name>.user")
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise DataError(folder, f"several .{ext} files ({names}); keep one atomic data set per folder")
        found.append(matches[0])
    return found[0], found[1], found[2]


def _first_column(row: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in row), None)


def load_atomic(folder: Path, name: str | None = None) -> Dataset:
    """A RecBole atomic set: `<name>.inter`, `<name>.item`, `<name>.user` (tab-separated, typed header).

    Without `name` the files are found by extension and the set is named after the `.inter` file.
    Columns are read by their header name; `.inter` needs user_id, item_id and rating (events without
    a timestamp are ordered by their line), `.item` needs item_id and a title column.
    """
    if name is None:
        inter, item_file, user_file = atomic_files(folder)
        name = inter.stem
    else:
        inter, item_file, user_file = (require_file(folder / f"{name}.{ext}") for ext in ("inter", "item", "user"))
    items = []
    for line, row in read_atomic(item_file, required=["item_id"], latin1_fallback=True):
        title_col = _first_column(row, ATOMIC_TITLE_COLUMNS)
        if title_col is None:
            raise DataError(item_file, f"header has no title column (one of {list(ATOMIC_TITLE_COLUMNS)})", line=1)
        genre_col, year_col = _first_column(row, ATOMIC_GENRE_COLUMNS), _first_column(row, ATOMIC_YEAR_COLUMNS)
        item_id = require_nonempty(item_file, line, "item_id", row["item_id"])
        title = row[title_col].strip()
        items.append(
            Item(
                item_id=item_id,
                # One ML-100K movie has no title at all ('unkonwn' in the source).
                title=title if title and title != "unkonwn" else f"movie {item_id}",
                genres=tuple(g for g in row[genre_col].split() if g != "unknown") if genre_col else (),
                year=parse_optional_int(row[year_col]) if year_col else None,
            )
        )
    require_rows(item_file, len(items), "items")
    users = []
    for line, row in read_atomic(user_file, required=["user_id"], latin1_fallback=True):
        age = row.get("age", "").strip()
        users.append(
            User(
                user_id=require_nonempty(user_file, line, "user_id", row["user_id"]),
                age=plausible_age(parse_int(user_file, line, "age", age)) if age else None,
                gender=row.get("gender") or None,
                occupation=row.get("occupation") or None,
            )
        )
    require_rows(user_file, len(users), "users")
    rows = [
        _rating_row(inter, line, r["user_id"], r["item_id"], r["rating"], r.get("timestamp", str(line)))
        for line, r in read_atomic(inter, required=["user_id", "item_id", "rating"])
    ]
    require_rows(inter, len(rows), "ratings")
    return build_dataset(name, users, items, rows, MOVIELENS_SCALE)


def load_grouplens_100k(folder: Path) -> Dataset:
    """The original ML-100K release: `u.data`, `u.item`, `u.user` (latin-1, pipe/tab separated)."""
    data, item_file, user_file = folder / "u.data", folder / "u.item", folder / "u.user"
    for path in (data, item_file, user_file):
        require_file(path)
    item_fields = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
    items = []
    for line, row in read_delimited(item_file, "|", item_fields, latin1_fallback=True):
        title, year = split_title_year(row["title"])
        flags = [row[g] for g in ML100K_GENRES]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(item_file, "genre flags must be 0 or 1", line=line, field="genres")
        items.append(
            Item(
                item_id=require_nonempty(item_file, line, "item_id", row["item_id"]),
                title=title if title and title != "unknown" else f"movie {row['item_id']}",
                genres=tuple(g for g, f in zip(ML100K_GENRES, flags) if f == "1" and g != "unknown"),
                year=year or parse_optional_int(row["release_date"][-4:]),
            )
        )
    require_rows(item_file, len(items), "items")
    users = [
        User(
            user_id=require_nonempty(user_file, line, "user_id", row["user_id"]),
            age=plausible_age(parse_int(user_file, line, "age", row["age"])),
            gender=row["gender"] or None,
            occupation=row["occupation"] or None,
        )
        for line, row in read_delimited(
            user_file, "|", ["user_id", "age", "gender", "occupation", "zip_code"], latin1_fallback=True
        )
    ]
    require_rows(user_file, len(users), "users")
    rows = [
        _rating_row(data, line, r["user_id"], r["item_id"], r["rating"], r["timestamp"])
        for line, r in read_delimited(data, "\t", ["user_id", "item_id", "rating", "timestamp"])
    ]
    require_rows(data, len(rows), "ratings")
    return build_dataset("ml-100k", users, items, rows, MOVIELENS_SCALE)


def load_grouplens_1m(folder: Path) -> Dataset:
    """The original ML-1M release: `ratings.dat`, `movies.dat`, `users.dat` ('::' separated, latin-1).

    Ages are band codes there; users get the band ("25-34"), not the code as if it were years."""
    ratings, movie_file, user_file = folder / "ratings.dat", folder / "movies.dat", folder / "users.dat"
    for path in (ratings, movie_file, user_file):
        require_file(path)
    items = []
    for line, row in read_delimited(movie_file, "::", ["item_id", "title", "genres"], latin1_fallback=True):
        title, year = split_title_year(row["title"])
        items.append(
            Item(
                item_id=require_nonempty(movie_file, line, "item_id", row["item_id"]),
                title=title,
                genres=tuple(g for g in row["genres"].split("|") if g),
                year=year,
            )
        )
    require_rows(movie_file, len(items), "movies")
    users = []
    for line, row in read_delimited(
        user_file, "::", ["user_id", "gender", "age", "occupation", "zip_code"], latin1_fallback=True
    ):
        code = parse_int(user_file, line, "occupation", row["occupation"])
        if not 0 <= code < len(ML1M_OCCUPATIONS):
            raise DataError(user_file, f"unknown occupation code {code}", line=line, field="occupation")
        age_code = parse_int(user_file, line, "age", row["age"])
        if age_code not in ML1M_AGE_BANDS:
            raise DataError(
                user_file, f"unknown age code {age_code}; ML-1M codes are {sorted(ML1M_AGE_BANDS)}", line=line, field="age"
            )
        users.append(
            User(
                user_id=require_nonempty(user_file, line, "user_id", row["user_id"]),
                age=ML1M_AGE_BANDS[age_code],
                gender=row["gender"] or None,
                occupation=ML1M_OCCUPATIONS[code],
            )
        )
    require_rows(user_file, len(users), "users")
    rows = [
        _rating_row(ratings, line, r["user_id"], r["item_id"], r["rating"], r["timestamp"])
        for line, r in read_delimited(ratings, "::", ["user_id", "item_id", "rating", "timestamp"])
    ]
    require_rows(ratings, len(rows), "ratings")
    return build_dataset("ml-1m", users, items, rows, MOVIELENS_SCALE)
