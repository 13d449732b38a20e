"""Errors raised for unreadable input files: each names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A data file is missing or malformed. `str()` is the one line a user sees."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, field: str | None = None):
        self.path = Path(path)
        self.line = line
        self.field = field
        self.message = message
        where = str(self.path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
