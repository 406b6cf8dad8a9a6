"""Errors users see. Each names where the problem is (file, line, key) so nothing has to be guessed."""
from __future__ import annotations


class TuneforgeError(Exception):
    """Base class: the CLI prints these without a traceback."""


def _where(file=None, line=None, key=None) -> str:
    parts = []
    if file is not None and getattr(file, "rows", False):  # a datasets source: its row index, not a line
        parts.append(str(file) + (f" row {line}" if line is not None else ""))
    elif file is not None:
        parts.append(str(file) + (f":{line}" if line is not None else ""))
    elif line is not None:
        parts.append(f"line {line}")
    if key is not None:
        parts.append(f"key '{key}'")
    return ", ".join(parts)


class ConfigError(TuneforgeError, ValueError):
    def __init__(self, message: str, file=None, line=None, key=None):
        self.file, self.line, self.key, self.message = file, line, key, message
        where = _where(file, line, key)
        super().__init__(f"{where}: {message}" if where else message)


class DataError(TuneforgeError, ValueError):
    def __init__(self, message: str, file=None, line=None, key=None):
        self.file, self.line, self.key, self.message = file, line, key, message
        where = _where(file, line, key)
        super().__init__(f"{where}: {message}" if where else message)


class TargetNotFound(TuneforgeError, ValueError):
    """A target module pattern matched nothing; the message lists the modules that exist."""


class NotMergeable(TuneforgeError, TypeError):
    """The method changes activations or inputs, not weights, so it has no weight delta to merge."""


class ModelNotFound(TuneforgeError, FileNotFoundError):
    pass


class AdapterMismatch(TuneforgeError, ValueError):
    """An adapter file does not fit the model it is loaded into (saved for another base)."""


class PickleRefused(TuneforgeError):
    """Weights stored as a pickle (torch.save) were found and pickle was not allowed: unpickling a file can run
    code, so loading one is an explicit choice (`--allow-pickle`, `allow_pickle: true`)."""

    def __init__(self, path, alternative: str = "model.safetensors"):
        self.path = path
        super().__init__(
            f"{path}: pickle weights are not loaded by default (unpickling can run code from the file). Save them "
            f"as {alternative} (safetensors), or if you trust this file pass --allow-pickle (allow_pickle: true "
            "in the model config, allow_pickle=True in Python)")


class NonFiniteLoss(TuneforgeError, ArithmeticError):
    """Training met a nan/inf loss or gradient norm: it stops before the update, so no NaN weights are saved."""


class OutputDirInUse(TuneforgeError, RuntimeError):
    """Another live run holds output_dir (its lock file); two runs would overwrite each other's checkpoints."""
