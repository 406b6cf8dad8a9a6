"""Ctrl-C during training: an interrupt is held while a parameter update runs, so checkpoints stay whole."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Interrupts:
    """Ctrl-C raises KeyboardInterrupt at once, except inside `critical()` (the parameter update and its log line),
    where it is held until the update ends, so a checkpoint never holds half-updated weights or a step without its
    log line. `torn` is True if an
    interrupt escaped from inside an update anyway (raised by other code, not by the signal)."""

    def __init__(self):
        self.inside = self.pending = self.torn = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_signal(self, signum, frame):
        if self.inside:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def critical(self):
        self.inside = self.torn = True
        yield
        self.inside = self.torn = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
