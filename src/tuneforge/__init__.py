"""tuneforge: adapt pretrained networks to new tasks.

The top-level names are imported lazily so `import tuneforge` stays fast (torch is only loaded when used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "tuneforge.models",
    "load_tokenizer": "tuneforge.models",
    "add_adapter": "tuneforge.methods",
    "set_active_adapters": "tuneforge.methods",
    "delete_adapter": "tuneforge.methods",
    "disable_adapters": "tuneforge.methods",
    "mixed_batch": "tuneforge.methods",
    "merge_adapters": "tuneforge.methods",
    "unmerge_adapters": "tuneforge.methods",
    "unload": "tuneforge.methods",
    "save_adapter": "tuneforge.io",
    "load_adapter": "tuneforge.io",
    "load_config": "tuneforge.config",
    "train": "tuneforge.train",
    "generate": "tuneforge.eval",
    "evaluate": "tuneforge.eval",
    "merge": "tuneforge.io",
    "export_model": "tuneforge.io",
    "combine": "tuneforge.methods",
    "combine_adapters": "tuneforge.io",
    "push_folder": "tuneforge.io.hub",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tuneforge' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
