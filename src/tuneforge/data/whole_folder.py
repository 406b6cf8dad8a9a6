"""Write a generated data folder so that it appears whole or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def whole_folder(out_dir):
    """Yield a temp folder beside `out_dir`; when the block ends without error it replaces `out_dir` in one
    rename, so an interrupted writer never leaves a half-written data set where a run would read it."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
