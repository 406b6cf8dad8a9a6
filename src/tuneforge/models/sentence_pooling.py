"""Which pooling a sentence-transformers checkpoint was trained with (its `modules.json` Pooling module), so a
classifier built on it can pool the way its encoder learned to: all-MiniLM-L6-v2 was trained on mean-pooled
states, and its `[CLS]` pooler (dense + tanh) was never trained for sentence meaning."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelNotFound
from .packaged import resolve_model


def sentence_pooling(name_or_path: str | os.PathLike) -> str | None:
    """"mean" or "cls" for a local sentence-transformers directory (or packaged alias); None for anything else."""
    try:
        source = resolve_model(name_or_path)
    except ModelNotFound:
        return None
    if source.is_hub or source.is_gguf:
        return None
    root = Path(source.location)
    if not (root / "modules.json").is_file():
        return None
    try:
        modules = json.loads((root / "modules.json").read_text())
        for module in modules:
            config = root / module.get("path", "") / "config.json"
            if module.get("type", "").endswith("Pooling") and config.is_file():
                settings = json.loads(config.read_text())
                if settings.get("pooling_mode_mean_tokens"):
                    return "mean"
                if settings.get("pooling_mode_cls_token"):
                    return "cls"
    except (OSError, ValueError, AttributeError):
        return None
    return None
