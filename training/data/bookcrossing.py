"""Loader for the BookCrossing CSVs (`BX-Book-Ratings.csv`, `BX-Books.csv`, `BX-Users.csv`).

Decisions (the paper is silent): rating 0 is an implicit interaction and is dropped; the data has no
timestamps, so a user's events are ordered by their row in the ratings file; a k-core filter
(default 10 ratings per user and per item, applied until stable) plays the role of the paper's
unspecified filtering. Ages outside a plausible range (the file holds 0 and 244) are dropped. A set
the rating filters leave empty is an error, as is an empty books or users file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from training.data.errors import DataError
from training.data.readers import parse_float, parse_optional_int, read_csv_rows, require_nonempty, require_rows
from training.data.types import BOOKCROSSING_SCALE, Dataset, Item, User, build_dataset, plausible_age


def k_core(rows: list[tuple[str, str, float, int]], min_user: int, min_item: int):
    while True:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= min_user and items[r[1]] >= min_item]
        if len(kept) == len(rows):
            return kept
        rows = kept


def load_bookcrossing(folder: Path, *, min_user: int = 10, min_item: int = 10) -> Dataset:
    ratings_file = folder / "BX-Book-Ratings.csv"
    books_file = folder / "BX-Books.csv"
    users_file = folder / "BX-Users.csv"
    opts = {"sep": ";"}
    rows, n_read = [], 0
    for line, row in read_csv_rows(ratings_file, required=["User-ID", "ISBN", "Book-Rating"], **opts):
        n_read += 1
        value = parse_float(ratings_file, line, "Book-Rating", row["Book-Rating"])
        if value == 0:
            continue
        if not BOOKCROSSING_SCALE.validate(value):
            raise DataError(ratings_file, f"rating {value:g} outside 0-10", line=line, field="Book-Rating")
        rows.append(
            (
                require_nonempty(ratings_file, line, "User-ID", row["User-ID"]),
                require_nonempty(ratings_file, line, "ISBN", row["ISBN"]),
                value,
                line,
            )
        )
    require_rows(ratings_file, n_read, "ratings")
    if not rows:
        raise DataError(ratings_file, f"no explicit ratings (1-10): all {n_read} are implicit (0) and are dropped")
    explicit = len(rows)
    rows = k_core(rows, min_user, min_item)
    if not rows:
        raise DataError(
            ratings_file,
            f"no ratings left after the k-core filter ({min_user} per user, {min_item} per item) "
            f"of {explicit} explicit ratings; lower min_user/min_item or use a larger file",
        )
    wanted_users = {r[0] for r in rows}
    wanted_items = {r[1] for r in rows}
    items, n_books = [], 0
    for line, row in read_csv_rows(books_file, required=["ISBN", "Book-Title", "Book-Author"], **opts):
        isbn = require_nonempty(books_file, line, "ISBN", row["ISBN"])
        n_books += 1
        if isbn in wanted_items:
            author = row["Book-Author"].strip()
            title = row["Book-Title"].strip() or isbn
            items.append(
                Item(
                    item_id=isbn,
                    title=f"{title} by {author}" if author else title,
                    year=parse_optional_int(row.get("Year-Of-Publication") or ""),
                )
            )
    require_rows(books_file, n_books, "books")
    users, n_users = [], 0
    for line, row in read_csv_rows(users_file, required=["User-ID", "Location", "Age"], **opts):
        uid = require_nonempty(users_file, line, "User-ID", row["User-ID"])
        n_users += 1
        if uid in wanted_users:
            age = parse_optional_int(row["Age"]) if row["Age"] not in ("", "NULL") else None
            users.append(User(user_id=uid, age=plausible_age(age), location=row["Location"].strip() or None))
    require_rows(users_file, n_users, "users")
    return build_dataset("bookcrossing", users, items, rows, BOOKCROSSING_SCALE)
