"""Line-by-line readers that turn every parse failure into a DataError naming file, line and field.

Text decoding rule, one for every file: a UTF-8 byte-order mark is dropped, then the whole file is
decoded as strict UTF-8. Files that may hold text (titles, locations) are the GroupLens and
BookCrossing releases, which are latin-1; when such a file is not valid UTF-8 the whole file is
decoded as latin-1 instead, so both the originals and UTF-8 re-saves read correctly. Files of ids
and numbers only (ratings) have no fallback: a stray byte there is an error at its line and field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path

from training.data.errors import DataError

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(path, "file not found")
    return path


def decode_text(
    path: Path,
    data: bytes,
    *,
    latin1_fallback: bool = False,
    field_at: Callable[[str], str | None] | None = None,
) -> str:
    """Decode a whole file by the module's rule. `field_at(text of the line before the bad byte)`
    names the field an undecodable byte sits in, for the error message."""
    if data.startswith(UTF16_BOMS):
        raise DataError(path, "UTF-16 text is not supported; save the file as UTF-8")
    data = data.removeprefix(UTF8_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if latin1_fallback:
            return data.decode("latin-1")
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        before = data[line_start : exc.start].decode("utf-8")
        raise DataError(
            path,
            f"not valid UTF-8 text (byte 0x{data[exc.start]:02x} at column {len(before) + 1})",
            line=data.count(b"\n", 0, exc.start) + 1,
            field=field_at(before) if field_at else None,
        ) from None


def read_text(path: Path, **decode) -> str:
    require_file(path)
    return decode_text(path, path.read_bytes(), **decode)


def read_delimited(
    path: Path,
    sep: str,
    fields: list[str],
    *,
    latin1_fallback: bool = False,
    skip_header: bool = False,
    min_fields: int | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {field: text}) for each non-empty line of a plain separated file.

    `min_fields` lets trailing optional columns be absent; extra columns are an error because they
    usually mean the wrong separator or file.
    """
    need = len(fields) if min_fields is None else min_fields

    def field_at(before: str) -> str | None:
        column = before.count(sep)
        return fields[column] if column < len(fields) else None

    text = read_text(path, latin1_fallback=latin1_fallback, field_at=field_at)
    for line_no, line in enumerate(io.StringIO(text, newline=""), start=1):
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


def read_atomic(
    path: Path, *, required: list[str], latin1_fallback: bool = False
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {column: text}) from a RecBole atomic file: tab-separated, with a header
    of `name:type` columns that must hold `required`. Columns are named without their type."""
    data = require_file(path).read_bytes()
    raw_header = data.removeprefix(UTF8_BOM).split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    columns = [c.split(":", 1)[0].strip() for c in raw_header.split("\t")]

    def field_at(before: str) -> str | None:
        column = before.count("\t")
        return columns[column] if column < len(columns) else None

    lines = io.StringIO(decode_text(path, data, latin1_fallback=latin1_fallback, field_at=field_at), newline="")
    header = next(lines, "").rstrip("\r\n")
    if not header.strip():
        raise DataError(path, "the file is empty; an atomic file starts with a header of name:type columns")
    columns = [c.split(":", 1)[0].strip() for c in header.split("\t")]
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(path, f"header lacks column(s) {missing}; found {columns}", line=1)
    for line_no, line in enumerate(lines, start=2):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != len(columns):
            raise DataError(
                path, f"expected {len(columns)} tab-separated fields as in the header, found {len(parts)}", line=line_no
            )
        yield line_no, dict(zip(columns, parts))


def read_csv_rows(
    path: Path, *, sep: str, required: list[str], latin1_fallback: bool = True
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a quoted CSV with a header that must hold `required` columns."""
    text = read_text(path, latin1_fallback=latin1_fallback)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sep, quotechar='"', escapechar="\\")
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(path, f"header lacks column(s) {missing}; found {header}", line=1)
        for row in reader:
            if None in row or any(row.get(c) is None for c in required):
                raise DataError(path, "row has the wrong number of columns", line=reader.line_num)
            yield reader.line_num, row
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


def require_rows(path: Path, n_rows: int, what: str) -> None:
    """An input table that holds nothing is an error, not a silent fallback to bare ids."""
    if n_rows == 0:
        raise DataError(path, f"no {what}: the file holds no data lines")
