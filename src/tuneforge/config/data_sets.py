"""Named data sets: `alpaca:train` in a config means split `train` of data set `alpaca`, wherever it lives.

One rule, so the same config works in a plain clone, on a machine with the full data and in CI:
1. a path that exists is used as given;
2. `NAME:SPLIT` reads `$TUNEFORGE_DATA/NAME/SPLIT.jsonl` (the full data sets, e.g. TUNEFORGE_DATA=../shared/data);
3. else the slice shipped in the repository, `data/NAME/SPLIT.jsonl` (a few hundred rows each), saying so once.
$TUNEFORGE_DATA set to a folder that does not exist is an error, not a quiet fall-back to the slices: a relative
path resolved from another directory would otherwise turn a full-data run into a slice run with one stderr line.
`NAME:` alone names the data set's folder (a BEIR corpus directory such as `scifact:`).
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from ..errors import ConfigError

REFERENCE = re.compile(r"^(?P<name>[a-z][a-z0-9_]+):(?P<split>[A-Za-z0-9_.-]*)$")
ENV = "TUNEFORGE_DATA"
_announced: set[str] = set()


def slice_roots() -> list[Path]:
    """Where the in-repo slices may be: the checkout this package runs from (an editable install), then the
    working directory's data/ folder."""
    roots = [Path(__file__).resolve().parents[3] / "data", Path.cwd() / "data"]
    return [root for i, root in enumerate(roots) if root.is_dir() and root not in roots[:i]]


def _candidate(root: Path, name: str, split: str) -> Path:
    return root / name / f"{split}.jsonl" if split else root / name


def resolve_data_path(value: str | os.PathLike | None, key: str | None = None) -> str | None:
    """The file or folder a data value names (see the module docstring); ConfigError naming the key when a data
    set reference is found nowhere."""
    if value is None:
        return None
    text = os.fspath(value)
    match = REFERENCE.match(text)
    if match is None or Path(text).exists():
        return text
    name, split = match["name"], match["split"]
    full = os.environ.get(ENV)
    if full and not Path(full).is_dir():
        raise ConfigError(
            f"data set {text!r}: ${ENV} is {full!r}, which is not a folder (from {Path.cwd()} it resolves to "
            f"{Path(full).resolve()}); point it at the folder holding {name}/, or unset it to use the repository's "
            f"data/ slices", key=key)
    if full and _candidate(Path(full), name, split).exists():
        return str(_candidate(Path(full), name, split))
    for root in slice_roots():
        path = _candidate(root, name, split)
        if path.exists():
            _announce(text, path, full)
            return str(path)
    where = f"${ENV} ({full})" if full else f"${ENV} (not set)"
    roots = ([Path(full)] if full and Path(full).is_dir() else []) + slice_roots()
    known = sorted({p.name for root in roots for p in root.iterdir() if p.is_dir()})
    raise ConfigError(
        f"data set {text!r} not found: looked in {where} and in the repository's data/ slices (data sets: "
        f"{', '.join(known) or 'none'}){_suggestion(name, split, roots, known)}; point {ENV} at a folder holding "
        f"{name}/{split or ''}{'.jsonl' if split else ''} (e.g. {ENV}=../shared/data) or give a file path", key=key)


def _suggestion(name: str, split: str, roots: list[Path], known: list[str]) -> str:
    """"did you mean" for a mistyped data set name or split: the closest existing reference, if any is close."""
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        return f"; did you mean {close[0]}:{split}?" if close else ""
    splits = sorted({p.stem for root in roots for p in (root / name).glob("*.jsonl")})
    close = difflib.get_close_matches(split, splits, n=1)
    if close:
        return f"; did you mean {name}:{close[0]}?"
    return f"; {name} has the splits {', '.join(splits)}" if splits else ""


def _announce(reference: str, path: Path, full: str | None) -> None:
    """Once per data set and process: a run on a slice must say it is one (its figures are not the full data's)."""
    if reference in _announced:
        return
    _announced.add(reference)
    rows = sum(1 for _ in path.open(encoding="utf-8")) if path.is_file() else None
    size = f" ({rows} rows)" if rows is not None else ""
    reason = f"not in ${ENV}={full}" if full else f"${ENV} is not set"
    print(f"{reference}: using the in-repo slice {path}{size} ({reason}; set {ENV} to a folder with the full "
          f"data sets for the full split)", file=sys.stderr)
