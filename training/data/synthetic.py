"""A synthetic look-alike of MovieLens-1M, for measuring how training scales (the real files are not
shipped here). Deterministic by seed.

What it imitates (ML-1M: 6,040 users, 3,706 rated movies, 1,000,209 ratings, every user >= 20):
  * user activity: 20 + a log-normal count (ML-1M: median ~96, mean ~165 ratings per user, a long
    tail to ~2,300), scaled so the total is exactly `n_ratings`;
  * item popularity: Zipf-like, weight ~ 1 / (rank + 10)^1.1 (at 1M the top 10% of the movies hold
    48% of the ratings, the median movie has 126; the tail is thinner than ML-1M's, none below 45);
  * taste: 18 genres; each user prefers a few of them (Dirichlet), so what a user rates depends on
    who the user is and models have something to learn beyond popularity;
  * time: movies have an era; a user's ratings follow the eras of the movies with noise, so the
    order of a history carries signal for the sequential models; timestamps 2000-2003 as in ML-1M;
  * ratings 1-5 with ML-1M's shares (6 / 11 / 26 / 35 / 22 %), higher where the user's taste fits.

Users scale with the number of ratings (6,040 at 1M, 604 at 100K), so every size has ML-1M's
activity profile; the catalogue stays at 3,706 items. `write_grouplens_1m` writes the set as the
original ML-1M files, so the CLI, `make tune` and `make eval` read it with `--dataset ml-1m`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training.data.movielens import ML1M_AGE_BANDS, ML1M_OCCUPATIONS
from training.data.types import MOVIELENS_SCALE, Dataset, Item, Ratings, User

ML1M_USERS = 6040
ML1M_ITEMS = 3706
ML1M_RATINGS = 1_000_209
SIZES = (100_000, 250_000, 500_000, 1_000_000)
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
# Share of each rating value 1..5 in ML-1M.
RATING_SHARES = np.array([0.056, 0.108, 0.261, 0.349, 0.226])
MIN_PER_USER = 20
FIRST_TIMESTAMP, LAST_TIMESTAMP = 956_703_932, 1_046_454_590  # ML-1M's range (2000-04 to 2003-02)


def users_for(n_ratings: int) -> int:
    """ML-1M's users per rating: 6,040 at 1M ratings."""
    return max(10, round(ML1M_USERS * n_ratings / 1_000_000))


def activity(n_users: int, n_ratings: int, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: 20 + log-normal (median 76, mean ~145), capped at 60% of the catalogue and
    rescaled so the counts add up to `n_ratings` exactly."""
    floor = min(MIN_PER_USER, n_ratings // n_users)
    cap = int(0.6 * n_items)
    extra = rng.lognormal(mean=4.33, sigma=1.14, size=n_users)
    extra *= (n_ratings - floor * n_users) / extra.sum()
    counts = np.minimum(floor + np.floor(extra).astype(np.int64), cap)
    # Hand out what rounding and the cap left over, one each to the users with room, most active first.
    while (short := n_ratings - counts.sum()) > 0:
        room = np.flatnonzero(counts < cap)
        if not room.size:
            raise ValueError(f"{n_ratings} ratings do not fit {n_users} users x {cap} items")
        counts[room[np.argsort(-extra[room], kind="stable")[:short]]] += 1
    return counts


def synthetic_movielens(n_ratings: int = ML1M_RATINGS, n_users: int | None = None, n_items: int = ML1M_ITEMS, seed: int = 0) -> Dataset:
    """A Dataset of `n_ratings` ratings (see the module docstring); the same seed gives the same set."""
    n_users = n_users or users_for(n_ratings)
    rng = np.random.default_rng(seed)
    counts = activity(n_users, n_ratings, n_items, rng)

    # Items: a popularity rank (shuffled against the ids), a genre and an era in [0, 1].
    popularity = 1.0 / (rng.permutation(n_items) + 10.0) ** 1.1
    genre = rng.integers(len(GENRES), size=n_items)
    era = rng.random(n_items)
    quality = rng.normal(0.0, 0.5, size=n_items)
    # Users: a taste over genres (a few strong ones) and a preferred era.
    taste = rng.dirichlet(np.full(len(GENRES), 0.3), size=n_users)

    users_col, items_col, fit_col, time_col = [], [], [], []
    log_pop = np.log(popularity)
    for u in range(n_users):
        affinity = taste[u, genre]  # (n_items,)
        # Weighted draw without replacement by the Gumbel-top-k trick: weight = popularity * (taste + 0.05).
        keys = log_pop + np.log(affinity + 0.05) + rng.gumbel(size=n_items)
        chosen = np.argpartition(-keys, counts[u] - 1)[: counts[u]]
        # Time order follows the movies' eras with noise: neighbours in a history are related.
        order = np.argsort(era[chosen] + rng.normal(0.0, 0.15, size=len(chosen)), kind="stable")
        chosen = chosen[order]
        users_col.append(np.full(len(chosen), u, dtype=np.int32))
        items_col.append(chosen.astype(np.int32))
        fit_col.append(np.log(affinity[chosen] + 0.05) + quality[chosen] + rng.normal(0.0, 0.8, size=len(chosen)))
        start = rng.integers(FIRST_TIMESTAMP, LAST_TIMESTAMP - 86_400 * 60)
        steps = rng.exponential(scale=3_600.0, size=len(chosen)).astype(np.int64) + 1
        time_col.append(np.minimum(start + np.cumsum(steps), LAST_TIMESTAMP))

    fit = np.concatenate(fit_col)
    # Ratings by the quantiles of fit, so the shares of 1..5 are ML-1M's.
    cuts = np.quantile(fit, np.cumsum(RATING_SHARES)[:-1])
    rating = (np.searchsorted(cuts, fit) + 1).astype(np.float32)
    ratings = Ratings(user=np.concatenate(users_col), item=np.concatenate(items_col), rating=rating, timestamp=np.concatenate(time_col))

    ages = list(ML1M_AGE_BANDS.values())
    users = [
        User(
            user_id=str(u + 1),
            age=ages[rng.integers(len(ages))],
            gender="MF"[rng.integers(2)],
            occupation=ML1M_OCCUPATIONS[rng.integers(len(ML1M_OCCUPATIONS))],
        )
        for u in range(n_users)
    ]
    years = 1930 + np.round(era * 70).astype(int)
    items = [Item(item_id=str(i + 1), title=f"Synthetic Movie {i + 1}", genres=(GENRES[genre[i]],), year=int(years[i])) for i in range(n_items)]
    return Dataset(name=f"synthetic-{n_ratings // 1000}k", users=users, items=items, ratings=ratings, scale=MOVIELENS_SCALE)


def write_grouplens_1m(dataset: Dataset, folder: Path) -> Path:
    """Write `dataset` as ML-1M's `ratings.dat`, `movies.dat`, `users.dat` ('::' separated)."""
    folder.mkdir(parents=True, exist_ok=True)
    codes = {band: code for code, band in ML1M_AGE_BANDS.items()}
    occupation = {name: code for code, name in enumerate(ML1M_OCCUPATIONS)}
    with (folder / "users.dat").open("w") as fh:
        for u in dataset.users:
            fh.write(f"{u.user_id}::{u.gender}::{codes[u.age]}::{occupation[u.occupation]}::00000\n")
    with (folder / "movies.dat").open("w") as fh:
        for it in dataset.items:
            fh.write(f"{it.item_id}::{it.title} ({it.year})::{'|'.join(it.genres)}\n")
    r = dataset.ratings
    user_ids = np.array([u.user_id for u in dataset.users])
    item_ids = np.array([it.item_id for it in dataset.items])
    lines = np.char.add(np.char.add(np.char.add(user_ids[r.user], "::"), np.char.add(item_ids[r.item], "::")),
                        np.char.add(np.char.add(r.rating.astype(np.int64).astype(str), "::"), r.timestamp.astype(str)))
    (folder / "ratings.dat").write_text("\n".join(lines.tolist()) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.synthetic", description="Write a synthetic ML-1M look-alike as ML-1M's files.")
    parser.add_argument("--ratings", type=int, default=ML1M_RATINGS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for ratings.dat, movies.dat, users.dat")
    args = parser.parse_args(argv)
    dataset = synthetic_movielens(args.ratings, seed=args.seed)
    write_grouplens_1m(dataset, args.out)
    print(f"{args.out}: {dataset.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
