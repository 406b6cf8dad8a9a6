"""Read training records from .jsonl / .json / .csv / .parquet into plain dicts.

Every record remembers where it came from (`Record.line`: the line of a JSON/CSV file, the 1-based row of a
parquet file), so an error found much later (a missing key, a bad role) can still name file and line: a user
with 50k records should never have to bisect their data to find the broken one.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import DataError
from ..config.data_sets import resolve_data_path

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class Record(dict):
    """A dict that also knows its source line (compares equal to the plain dict)."""

    __slots__ = ("line",)

    def __init__(self, data: dict, line: int | None = None):
        super().__init__(data)
        self.line = line


def line_of(record: Any, index: int) -> int:
    """The line a record came from (a datasets row index, which may be 0); the 1-based position when it was
    built in memory."""
    line = getattr(record, "line", None)
    return line if line is not None else index + 1


def read_records(path: str | Path) -> list[dict]:
    """All records of a file, chosen by suffix (.jsonl/.json/.csv/.parquet). Raises DataError(file, line)
    for a missing file, a malformed JSON line, a line that is not an object, or a file with no records. A data set
    reference (`alpaca:validation`) is read from wherever `sets.resolve_data_path` finds it."""
    path = Path(resolve_data_path(path))
    if not path.exists():
        raise DataError("file not found", file=path)
    if path.is_dir():
        raise DataError("is a directory, expected a data file", file=path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        records = _read_parquet(path)
    elif suffix in (".jsonl", ".json", ".csv"):
        text = _read_text(path)
        if suffix == ".csv":
            records = _read_csv(text, path)
        elif suffix == ".json" and text.lstrip().startswith("["):
            records = _read_json_array(text, path)
        else:
            records = _read_jsonl(text, path)
    else:
        raise DataError(f"unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}", file=path)
    if not records:
        raise DataError("data set is empty (no records)", file=path)
    return records


def require_fields(records: Sequence[dict], fields: Iterable[str], source: str | Path | None = None) -> None:
    """Check every record has every field; the error names the file, the record's line and the missing key."""
    fields = list(fields)
    for i, rec in enumerate(records):
        for key in fields:
            if key not in rec:
                have = ", ".join(sorted(map(str, rec))) or "none"
                raise DataError(f"missing field '{key}' (record has: {have})", file=source, line=line_of(rec, i),
                                key=key)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=path, line=line) from None


def _as_record(obj: Any, path: Path, line: int) -> Record:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=line)
    return Record(obj, line)


def _read_jsonl(text: str, path: Path) -> list[Record]:
    records = []
    for n, raw in enumerate(text.split("\n"), start=1):  # not splitlines: JSON may hold U+2028
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=path, line=n) from None
        records.append(_as_record(obj, path, n))
    return records


def _read_json_array(text: str, path: Path) -> list[Record]:
    """Parse `[obj, obj, ...]` element by element so each record keeps the line it starts on."""
    decoder = json.JSONDecoder()

    def line_at(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    records = []
    pos = skip_ws(text.index("[") + 1)
    if pos < len(text) and text[pos] == "]":
        return records
    while True:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=path, line=e.lineno) from None
        records.append(_as_record(obj, path, line_at(pos)))
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip_ws(pos + 1)
        elif pos < len(text) and text[pos] == "]":
            if skip_ws(pos + 1) != len(text):
                raise DataError("extra data after the JSON array", file=path, line=line_at(skip_ws(pos + 1)))
            return records
        else:
            raise DataError("malformed JSON: expected ',' or ']' in array", file=path, line=line_at(pos))


def _read_csv(text: str, path: Path) -> list[Record]:
    """Header row gives the keys; a record's line is the line its row starts on (rows may span lines)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records, start = [], 2
    try:
        for row in reader:
            if None in row:
                raise DataError(f"row has {len(row[None]) + len(row) - 1} cells, header has {len(reader.fieldnames)}",
                                file=path, line=start)
            records.append(Record(dict(row), start))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", file=path, line=reader.line_num) from None
    return records


def _read_parquet(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"cannot read parquet: {e}", file=path) from None
    return [Record(row, i) for i, row in enumerate(rows, start=1)]


def iter_jsonl(path: str | Path):
    """The records of a .jsonl file one line at a time, with read_records' rules and errors (UTF-8, one JSON
    object per non-empty line), holding one line in memory: what checks a large upload without loading it."""
    path = Path(path)
    offset = 0
    with open(path, "rb") as handle:
        for n, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text ({e.reason} at byte {offset + e.start})", file=path,
                                line=n) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=path, line=n) from None
            yield _as_record(obj, path, n)
