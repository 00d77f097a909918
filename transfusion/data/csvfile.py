"""Reading label CSV files with errors that name the file, the line and what to fix."""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import math
from pathlib import Path
from typing import Iterator, Sequence

from transfusion.errors import DataError


def read_text(path: Path) -> str:
    """The whole file (plain or .gz) as text. UTF-8, a leading BOM dropped (spreadsheet programs
    write one; it is not a header character). Not UTF-8 -> DataError naming the line."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}; replace the file") from e
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {data[e.start]:#04x}); save the "
                        "file as UTF-8") from None


def read_rows(path: str | Path, required: Sequence[str], what: str
              ) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header and an iterator of (line number, row). Raises DataError if a column is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what}: label file {path} does not exist. Point the root at the folder "
                        f"that holds it (expected columns: {', '.join(required)})")
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: the file is empty; expected a header with {', '.join(required)}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}, line 1: missing column(s) {', '.join(missing)} (header is "
                        f"{','.join(header)}); {what} needs {', '.join(required)}")

    def rows():
        for lineno, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < len(header):
                raise DataError(f"{path}, line {lineno}: {len(row)} fields, the header has "
                                f"{len(header)}; fix or remove the line")
            yield lineno, row

    return header, rows()


def parse_int_label(value: str, allowed: range, path, lineno: int, column: str) -> int:
    try:
        v = float(value)
    except ValueError:
        v = None
    if v is None or not math.isfinite(v) or v != int(v) or int(v) not in allowed:
        raise DataError(f"{path}, line {lineno}: {column} must be an integer in "
                        f"{allowed.start}..{allowed.stop - 1}, got {value!r}")
    return int(v)


def read_table(path: str | Path, required: Sequence[str], what: str) -> tuple[list[str], list[list[str]], list[int]]:
    """The whole file at once (fast for large label files): header, rows, line number per row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what}: label file {path} does not exist. Point the root at the folder "
                        f"that holds it (expected columns: {', '.join(required)})")
    rows = list(csv.reader(read_text(path).splitlines()))
    if not rows:
        raise DataError(f"{path}: the file is empty; expected a header with {', '.join(required)}") from None
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}, line 1: missing column(s) {', '.join(missing)} (header is "
                        f"{','.join(header)}); {what} needs {', '.join(required)}")
    body = rows[1:]
    lines = list(range(2, len(body) + 2))
    if not all(body):  # drop blank lines, keep the numbering of the others
        keep = [i for i, r in enumerate(body) if r and any(x.strip() for x in r)]
        body, lines = [body[i] for i in keep], [lines[i] for i in keep]
    n = len(header)
    short = [i for i, r in enumerate(body) if len(r) < n] if min(map(len, body), default=n) < n else []
    if short:
        i = short[0]
        raise DataError(f"{path}, line {lines[i]}: {len(body[i])} fields, the header has {n}; "
                        "fix or remove the line")
    return header, body, lines


def check_inside_root(values: Sequence[str], path, lines: Sequence[int], column: str) -> None:
    """Refuse label-file entries that would reach outside the dataset root: an absolute path, a
    drive letter or a ``..`` part (a hostile or broken label file must not read other files)."""
    joined = "\n".join(values)
    if ".." not in joined and "\n/" not in "\n" + joined and "\\" not in joined and ":" not in joined:
        return
    for value, lineno in zip(values, lines):
        parts = value.replace("\\", "/").split("/")
        if value.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise DataError(f"{path}, line {lineno}: {column} {value!r} points outside the dataset "
                            "folder (absolute path or '..'); label files may only name images "
                            "inside the dataset root: fix or remove the line")
