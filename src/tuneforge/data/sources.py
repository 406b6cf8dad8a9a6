"""Where a split's records come from: a data file (readers.py), or a Hugging Face `datasets` source.

`data.train` / `data.validation` name one of:
- a .jsonl / .json / .csv / .parquet file: read by readers.py, each record keeps its line;
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (`load_from_disk`);
- a file set for `datasets.load_dataset`: a folder of data files, a glob (`data/*.parquet`) or an .arrow file;
- a hub id (`org/name`), with data.split / data.revision; data.streaming reads it lazily.

A record of a datasets source remembers its 0-based row index (`ds[row]`), and errors name the source as
`<name> [split] row <n>`. Nothing here reaches the network for local sources; a hub id with the hub
unreachable or HF_HUB_OFFLINE set fails with a DataError instead of hanging.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DataError
from .formatting import select_records
from .readers import SUFFIXES, Record, read_records

BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv",
            ".txt": "text"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class DatasetRef(str):
    """The name of a datasets source in error messages: `_where` prints `<name> row <n>` for it."""

    rows = True


def is_plain_file(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() in SUFFIXES and p.is_file()


def describe(path: str, split: str | None) -> DatasetRef:
    return DatasetRef(f"{path} [{split}]" if split else str(path))


def _saved_to_disk(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file() or (p / "state.json").is_file()


def _pick_split(obj, split: str, name: str):
    """One split of a DatasetDict (or the Dataset itself); an unknown split lists the ones there are."""
    if not hasattr(obj, "keys"):
        return obj
    if split not in obj:
        raise DataError(f"split {split!r} not found; the dataset has: {', '.join(obj.keys())} (set data.split)",
                        file=name)
    return obj[split]


def open_dataset(path: str, *, split: str = "train", revision: str | None = None, streaming: bool = False):
    """The `datasets` Dataset (or IterableDataset when streaming) one split of a source names."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of tuneforge
        raise DataError("reading a Hugging Face dataset needs the `datasets` package", file=path) from None
    p = Path(path)
    try:
        if p.is_dir() and _saved_to_disk(p):
            obj = datasets.load_from_disk(str(p))
            ds = _pick_split(obj, split, path)
            return ds.to_iterable_dataset() if streaming else ds
        if p.is_dir() or glob.has_magic(path) or (p.is_file() and p.suffix.lower() == ".arrow"):
            files = sorted(glob.glob(path)) if glob.has_magic(path) else None
            if files is not None and not files:
                raise DataError("no files match this pattern", file=path)
            if files is not None or p.is_file():
                suffixes = {Path(f).suffix.lower() for f in (files or [path])}
                builder = BUILDERS.get(next(iter(suffixes))) if len(suffixes) == 1 else None
                if builder is None:
                    raise DataError(f"a file set must be of one kind ({', '.join(sorted(BUILDERS))}), got "
                                    f"{', '.join(sorted(suffixes))}", file=path)
                return datasets.load_dataset(builder, data_files=files or [path], split="train", streaming=streaming)
            return datasets.load_dataset(str(p), split=split, streaming=streaming)
        if p.exists() or not HUB_ID.match(path):
            raise DataError("file not found (not a data file, a saved dataset folder, a file pattern or a hub id)",
                            file=path)
        return _from_hub(datasets, path, split, revision, streaming)
    except DataError:
        raise
    except ValueError as e:  # an unknown split, an empty folder, a file datasets cannot parse
        raise DataError(f"cannot read this dataset: {e}", file=path) from None
    except (OSError, ImportError) as e:
        raise DataError(f"cannot read this dataset: {e}", file=path) from None


def _from_hub(datasets, name: str, split: str, revision: str | None, streaming: bool):
    """A hub dataset. Offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or the hub unreachable) only what is cached
    can load; otherwise a clear DataError, never a hang on retries."""
    offline = bool(datasets.config.HF_HUB_OFFLINE) or not _hub_reachable()
    saved = datasets.config.HF_HUB_OFFLINE
    try:
        datasets.config.HF_HUB_OFFLINE = offline  # read the local cache only: no retries against a dead network
        return datasets.load_dataset(name, split=split, revision=revision, streaming=streaming)
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
        why = ("the Hugging Face hub is not reachable (offline) and this dataset is not in the local cache"
               if offline else f"{type(e).__name__}: {e}")
        raise DataError(f"cannot load hub dataset {name!r} (split {split!r}): {why}. Use a local file, a folder "
                        "saved with save_to_disk, or run once with network access to cache it", file=name) from None
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub's host (proxies aside), so an offline machine fails in seconds."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True  # through a proxy only the real request can tell

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _rows(ds, name: DatasetRef, indices: Iterable[int] | None = None) -> Iterator[Record]:
    if indices is None:
        for row, rec in enumerate(ds):
            yield Record(dict(rec), row)
    else:
        for row in indices:
            yield Record(dict(ds[row]), row)


def read_source(path: str, *, split: str = "train", revision: str | None = None, streaming: bool = False,
                limit: int | None = None, seed: int = 0) -> tuple[list | Iterator, object]:
    """(records, source name for errors) of one split. A data file or an in-memory dataset gives a list (the
    seeded `limit` subset, as `select_records` picks it); a stream gives an iterator over its first `limit`
    records (all when limit is None: the caller stops reading)."""
    if is_plain_file(path):
        return select_records(read_records(path), limit, seed), path
    ds = open_dataset(path, split=split, revision=revision, streaming=streaming)
    name = describe(path, split)
    if streaming or not hasattr(ds, "__len__"):
        stream = _rows(ds, name)
        if limit is not None:
            import itertools

            stream = itertools.islice(stream, limit)
        return stream, name
    n = len(ds)
    if n == 0:
        raise DataError("data set is empty (no records)", file=name)
    indices = range(n) if limit is None or limit >= n else select_records(list(range(n)), limit, seed)
    return list(_rows(ds, name, indices)), name
