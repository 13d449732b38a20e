"""Line-by-line readers that turn every parse failure into a DataError naming file, line and field."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from training.data.errors import DataError


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(path, "file not found")
    return path


def read_delimited(
    path: Path,
    sep: str,
    fields: list[str],
    *,
    encoding: str = "utf-8",
    skip_header: bool = False,
    min_fields: int | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {field: text}) for each non-empty line of a plain separated file.

    `min_fields` lets trailing optional columns be absent; extra columns are an error because they
    usually mean the wrong separator or file.
    """
    require_file(path)
    need = len(fields) if min_fields is None else min_fields
    try:
        with path.open(encoding=encoding, newline="") as fh:
            for line_no, line in enumerate(fh, start=1):
                if skip_header and line_no == 1:
                    continue
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                parts = line.split(sep)
                if not need <= len(parts) <= len(fields):
                    raise DataError(
                        path,
                        f"expected {len(fields)} fields separated by {sep!r}, found {len(parts)}",
                        line=line_no,
                    )
                yield line_no, dict(zip(fields, parts))
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid {encoding} text ({exc.reason})") from exc


def read_csv_rows(
    path: Path, *, sep: str, encoding: str, required: list[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a quoted CSV with a header that must hold `required` columns."""
    require_file(path)
    try:
        with path.open(encoding=encoding, newline="") as fh:
            reader = csv.DictReader(fh, delimiter=sep, quotechar='"', escapechar="\\")
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(path, f"header lacks column(s) {missing}; found {header}", line=1)
            for row in reader:
                if None in row or any(row.get(c) is None for c in required):
                    raise DataError(path, "row has the wrong number of columns", line=reader.line_num)
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid {encoding} text ({exc.reason})") from exc
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV ({exc})") from exc


def parse_int(path: Path, line: int, field: str, text: str) -> int:
    try:
        return int(float(text)) if "." in text else int(text)
    except ValueError:
        raise DataError(path, f"expected an integer, got {text!r}", line=line, field=field) from None


def parse_float(path: Path, line: int, field: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"expected a number, got {text!r}", line=line, field=field) from None
    if value != value:  # NaN
        raise DataError(path, "value is NaN", line=line, field=field)
    return value


def parse_optional_int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def require_nonempty(path: Path, line: int, field: str, text: str) -> str:
    text = text.strip()
    if not text:
        raise DataError(path, "empty value", line=line, field=field)
    return text
