"""Training: the one loop (`run_training`), its optimizer and schedule, checkpoints, reports, and the tasks.

`train` (api.py) is imported lazily so `import tuneforge.train` does not load config, models or data."""
from __future__ import annotations

from .loop import TrainResult, run_training


def __getattr__(name):
    if name == "train":
        from .api import train

        return train
    raise AttributeError(f"module 'tuneforge.train' has no attribute {name!r}")


__all__ = ["TrainResult", "run_training", "train"]
