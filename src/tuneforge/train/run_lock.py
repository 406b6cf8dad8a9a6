"""One live run per output_dir: an flock on `output_dir/.lock`, held for the run's whole life.

Why: two runs writing one output_dir overwrite each other's checkpoints and metrics, and a second run started
while the first is saving would "resume" from a checkpoint that is still moving. The kernel releases an flock
when its process dies, however it dies (kill -9 included), so a crashed run never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputDirInUse

LOCK = ".lock"


@contextmanager
def output_dir_lock(output_dir: str | os.PathLike):
    """Hold the lock of output_dir (created if missing) or raise OutputDirInUse at once, naming the holder. A
    directory this call created and the run left empty (it failed before writing) is removed again."""
    out = Path(output_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise OutputDirInUse(
            f"output_dir {out} is in use by another training run (process {holder}); wait for it to finish or stop "
            f"it, or set another output_dir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield out
    finally:
        if created and os.listdir(out) == [LOCK]:  # the run failed before writing anything: leave no trace
            (out / LOCK).unlink(missing_ok=True)
            try:
                out.rmdir()
            except OSError:
                pass
        handle.close()  # closing the last descriptor releases the flock
