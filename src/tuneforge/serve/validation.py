"""Uploaded training files are checked before anything trains on them, and the first bad line is named.

Two passes, both through the data package's own readers so the server accepts exactly what `tuneforge train`
accepts, and both streaming (one line in memory: a 500 MB upload must not cost gigabytes of records):
- on upload: UTF-8, one JSON object per non-empty line (`iter_jsonl`, read_records' rules);
- on job creation: every record has the layout the job's task reads. For supervised jobs that is a record of
  any data.format layout (OpenAI's chat format with tools and weights, alpaca, sharegpt, ...), checked with
  `to_conversation`; for DPO jobs a preference pair (OpenAI's `input` / `preferred_output` /
  `non_preferred_output`, or `{prompt, chosen, rejected}`), checked with `pair_fields`. Other tasks check
  their records in the worker, which fails the job naming the line in the same way.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from ..errors import DataError


class FileValidationError(ValueError):
    """A bad line in an uploaded file; the message reads `<name> line <n>: <problem>`."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def _describe(err: DataError, name: str) -> FileValidationError:
    where = f"{name} line {err.line}" if err.line is not None else name
    key = f" (key '{err.key}')" if err.key else ""
    return FileValidationError(f"{where}{key}: {err.message}", err.line)


def check_jsonl(path: Path, name: str) -> int:
    """Number of records of a JSONL file (stored under a .jsonl path); FileValidationError naming the first bad
    line. `name` is the client's file name, used in messages instead of our path."""
    from ..data.readers import iter_jsonl

    if not name.lower().endswith(".jsonl"):
        raise FileValidationError(f"{name}: fine-tuning files must be JSONL (a .jsonl file name)")
    count = 0
    try:
        for _ in iter_jsonl(path):
            count += 1
    except DataError as err:
        raise _describe(err, name) from None
    if count == 0:
        raise FileValidationError(f"{name}: data set is empty (no records)")
    return count


def check_records(path: Path, name: str, task: str, data_format: str = "auto") -> None:
    """Check the records of a stored file against what the job's task reads (see the module docstring)."""
    from ..data import pair_fields, to_conversation
    from ..data.readers import iter_jsonl

    if task not in ("sft", "dpo"):
        return
    try:
        for record in iter_jsonl(path):
            if task == "dpo":
                pair_fields(record, source=None, line=record.line)
            else:
                to_conversation(record, data_format, source=None, line=record.line)
    except DataError as err:
        raise _describe(err, name) from None


def safe_filename(given: str | None, default: str = "upload.jsonl") -> str:
    """The client's file name as we store and show it: the last path part (either separator), without control or
    format characters (NUL, newlines, bidi overrides), at most 255 characters; `default` when nothing is left."""
    name = (given or "").replace("\\", "/")
    name = os.path.basename(name)
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn") or c == " ")
    name = name.strip().strip(".") if name.strip() in (".", "..") else name.strip()
    return name[:255] or default
