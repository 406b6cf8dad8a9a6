"""Uploaded training files are checked before anything trains on them, and the first bad line is named.

Two passes, both through the data package's own readers so the server accepts exactly what `tuneforge train`
accepts:
- on upload: UTF-8, one JSON object per non-empty line (`read_records`);
- on job creation: every record has the layout the job's task reads. For supervised jobs that is a record of
  any data.format layout (OpenAI's chat format with tools and weights, alpaca, sharegpt, ...), checked with
  `to_conversation`; for DPO jobs a preference pair (OpenAI's `input` / `preferred_output` /
  `non_preferred_output`, or `{prompt, chosen, rejected}`), checked with `pair_fields`. Other tasks check
  their records in the worker, which fails the job naming the line in the same way.
"""
from __future__ import annotations

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
    from ..data import read_records

    if not name.lower().endswith(".jsonl"):
        raise FileValidationError(f"{name}: fine-tuning files must be JSONL (a .jsonl file name)")
    try:
        return len(read_records(path))
    except DataError as err:
        raise _describe(err, name) from None


def check_records(path: Path, name: str, task: str, data_format: str = "auto") -> None:
    """Check the records of a stored file against what the job's task reads (see the module docstring)."""
    from ..data import pair_fields, read_records, to_conversation

    if task not in ("sft", "dpo"):
        return
    try:
        for index, record in enumerate(read_records(path)):
            line = getattr(record, "line", index + 1)
            if task == "dpo":
                pair_fields(record, source=None, line=line)
            else:
                to_conversation(record, data_format, source=None, line=line)
    except DataError as err:
        raise _describe(err, name) from None
