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
    read_delimited,
    require_file,
    require_nonempty,
)
from training.data.types import MOVIELENS_SCALE, Dataset, Item, User, build_dataset

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


def load_atomic(folder: Path, name: str = "ml-100k") -> Dataset:
    """RecBole atomic files: `<name>.inter`, `<name>.item`, `<name>.user` (tab-separated, typed header)."""
    inter, item_file, user_file = (folder / f"{name}.{ext}" for ext in ("inter", "item", "user"))
    for path in (inter, item_file, user_file):
        require_file(path)
    items = []
    for line, row in read_delimited(
        item_file, "\t", ["item_id", "movie_title", "release_year", "class"], skip_header=True
    ):
        title = row["movie_title"].strip()
        items.append(
            Item(
                item_id=require_nonempty(item_file, line, "item_id", row["item_id"]),
                # One ML-100K movie has no title at all ('unkonwn' in the source).
                title=title if title and title != "unkonwn" else f"movie {row['item_id']}",
                genres=tuple(g for g in row["class"].split() if g != "unknown"),
                year=parse_optional_int(row["release_year"]),
            )
        )
    users = []
    for line, row in read_delimited(
        user_file, "\t", ["user_id", "age", "gender", "occupation", "zip_code"], skip_header=True
    ):
        users.append(
            User(
                user_id=require_nonempty(user_file, line, "user_id", row["user_id"]),
                age=parse_int(user_file, line, "age", row["age"]),
                gender=row["gender"] or None,
                occupation=row["occupation"] or None,
            )
        )
    rows = [
        _rating_row(inter, line, r["user_id"], r["item_id"], r["rating"], r["timestamp"])
        for line, r in read_delimited(
            inter, "\t", ["user_id", "item_id", "rating", "timestamp"], skip_header=True
        )
    ]
    return build_dataset(name, users, items, rows, MOVIELENS_SCALE)


def load_grouplens_100k(folder: Path) -> Dataset:
    """The original ML-100K release: `u.data`, `u.item`, `u.user` (latin-1, pipe/tab separated)."""
    data, item_file, user_file = folder / "u.data", folder / "u.item", folder / "u.user"
    for path in (data, item_file, user_file):
        require_file(path)
    item_fields = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
    items = []
    for line, row in read_delimited(item_file, "|", item_fields, encoding="latin-1"):
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
    users = [
        User(
            user_id=require_nonempty(user_file, line, "user_id", row["user_id"]),
            age=parse_int(user_file, line, "age", row["age"]),
            gender=row["gender"] or None,
            occupation=row["occupation"] or None,
        )
        for line, row in read_delimited(
            user_file, "|", ["user_id", "age", "gender", "occupation", "zip_code"], encoding="latin-1"
        )
    ]
    rows = [
        _rating_row(data, line, r["user_id"], r["item_id"], r["rating"], r["timestamp"])
        for line, r in read_delimited(data, "\t", ["user_id", "item_id", "rating", "timestamp"])
    ]
    return build_dataset("ml-100k", users, items, rows, MOVIELENS_SCALE)


def load_grouplens_1m(folder: Path) -> Dataset:
    """The original ML-1M release: `ratings.dat`, `movies.dat`, `users.dat` ('::' separated, latin-1)."""
    ratings, movie_file, user_file = folder / "ratings.dat", folder / "movies.dat", folder / "users.dat"
    for path in (ratings, movie_file, user_file):
        require_file(path)
    items = []
    for line, row in read_delimited(movie_file, "::", ["item_id", "title", "genres"], encoding="latin-1"):
        title, year = split_title_year(row["title"])
        items.append(
            Item(
                item_id=require_nonempty(movie_file, line, "item_id", row["item_id"]),
                title=title,
                genres=tuple(g for g in row["genres"].split("|") if g),
                year=year,
            )
        )
    users = []
    for line, row in read_delimited(
        user_file, "::", ["user_id", "gender", "age", "occupation", "zip_code"], encoding="latin-1"
    ):
        code = parse_int(user_file, line, "occupation", row["occupation"])
        if not 0 <= code < len(ML1M_OCCUPATIONS):
            raise DataError(user_file, f"unknown occupation code {code}", line=line, field="occupation")
        users.append(
            User(
                user_id=require_nonempty(user_file, line, "user_id", row["user_id"]),
                age=parse_int(user_file, line, "age", row["age"]),
                gender=row["gender"] or None,
                occupation=ML1M_OCCUPATIONS[code],
            )
        )
    rows = [
        _rating_row(ratings, line, r["user_id"], r["item_id"], r["rating"], r["timestamp"])
        for line, r in read_delimited(
            ratings, "::", ["user_id", "item_id", "rating", "timestamp"], encoding="latin-1"
        )
    ]
    return build_dataset("ml-1m", users, items, rows, MOVIELENS_SCALE)
