"""Training objectives, one file each, registered in `tuneforge.registry.TASKS`.

Every module in this package is imported here so its `@TASKS.register` runs; adding a task means adding its
file, nothing else.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import BaseTask, Task, batch_context

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["BaseTask", "Task", "batch_context"]
