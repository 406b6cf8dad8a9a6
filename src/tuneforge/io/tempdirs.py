"""Temporary directories for atomic writes that end up with the permissions `mkdir` would give.

`tempfile.mkdtemp` creates its directory 0700 whatever the umask, so an adapter or checkpoint written through a
temp dir renamed into place came out owner-only, unlike every other output. `temp_dir` applies the user's umask.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def temp_dir(parent, prefix: str) -> Path:
    """A fresh directory in `parent` (created if missing) with mode 0777 & ~umask, as `mkdir` makes them."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o777 & ~current_umask())
    return path


def apply_umask(tree) -> None:
    """Give every file and folder under `tree` (itself included) the mode the umask gives new ones: writers such
    as safetensors create their files 0600, which made saved adapters and checkpoints owner-only."""
    mask = current_umask()
    tree = Path(tree)
    tree.chmod(0o777 & ~mask)
    for folder, dirs, files in os.walk(tree):
        for name in dirs:
            Path(folder, name).chmod(0o777 & ~mask)
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o666 & ~mask)
