"""Labelled images from an image folder, a JSONL/CSV/JSON/parquet file of {image, label}, or a `datasets` image
column, as records {image, label} that remember where they came from.

- Image folder: `root/<class name>/*.png|jpg|...`; the label is the folder's name. A class folder holding no
  image is an error (a typo in a copy usually leaves one empty), as is a root with no class folders.
- File: each record names its image by a path, absolute or relative to the file's own folder (so the file and
  its images move together); errors name file and line.
- `datasets` source (save_to_disk folder, file set, hub id; see sources.py): the image column holds decoded PIL
  images or {bytes, path} dicts; errors name the data set, split and row.

Images are opened and fully decoded by `open_image`, which turns any failure (missing, truncated, not an image)
into a DataError naming the image's path, so a corrupt file stops the run before training, not in step 900.
"""
from __future__ import annotations

import io
from pathlib import Path

from ..errors import DataError
from .readers import Record, line_of
from .sources import is_plain_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_folder(path) -> bool:
    """A directory of class folders (not a `datasets` save_to_disk folder)."""
    p = Path(str(path))
    if not p.is_dir() or (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        return False
    return any(child.is_dir() for child in p.iterdir())


def folder_records(root) -> list[Record]:
    """{image: path, label: class folder name} for every image under root/<class>/, classes in sorted order."""
    root = Path(root)
    classes = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not classes:
        raise DataError("an image folder needs one sub-folder per class (root/<label>/*.png)", file=root)
    records = []
    for folder in classes:
        images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"label folder {folder.name!r} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                            file=folder)
        records += [Record({"image": str(p), "label": folder.name}) for p in images]
    return records


def image_records(path, image_field: str = "image", label_field: str = "label", *, split: str = "train",
                  revision: str | None = None, limit: int | None = None, seed: int = 0,
                  labelled: bool = True) -> tuple[list, object]:
    """(records, source for errors) of one split. A file's relative image paths are made absolute against the
    file's folder; every record must have both fields (with labelled=False, self-training's pool, the label may
    be missing: None)."""
    from .formatting import select_records
    from .sources import read_source

    if path is None:
        raise DataError("no data given")
    if is_image_folder(path):
        records = folder_records(path)
        return select_records(records, limit, seed) if limit is not None else records, str(path)
    records, source = read_source(str(path), split=split, revision=revision, limit=limit, seed=seed)
    records = list(records)
    base = Path(str(path)).parent if is_plain_file(path) else None
    out = []
    for i, record in enumerate(records):
        for field in (image_field, label_field) if labelled else (image_field,):
            if field not in record or record[field] is None:
                raise DataError(f"record has no {field!r} field (fields: {', '.join(map(str, record))})",
                                file=source, line=line_of(record, i), key=field)
        value = record[image_field]
        if isinstance(value, str) and base is not None and not Path(value).is_absolute():
            value = str(base / value)
        out.append(Record({"image": value, "label": record.get(label_field)}, line_of(record, i)))
    return out, source


def image_name(value) -> str:
    """How an image is named in messages: its path, else a description."""
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"<{type(value).__name__}>"


def open_image(value, source=None, line=None):
    """A fully decoded PIL image from a path, a PIL image, raw bytes or a datasets {bytes, path} dict; DataError
    naming the image (and the record's file and line) when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, (str, Path)) and not Path(value).is_file():
        raise DataError(f"image {value} not found", file=source, line=line, key="image")
    if not isinstance(value, (str, Path, dict, bytes, bytearray, Image.Image)):
        raise DataError(f"cannot read an image from a {type(value).__name__}", file=source, line=line, key="image")
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict):
            image = Image.open(value["path"])
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        else:
            image = Image.open(value)
        image.load()  # decode now: a truncated file fails here, not while training
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, KeyError, TypeError) as err:
        raise DataError(f"cannot read image {image_name(value)}: {err}",
                        file=source if source is not None else image_name(value), line=line, key="image") from None
    return image
