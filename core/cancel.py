"""Ctrl-C that always counts.

Python turns SIGINT into KeyboardInterrupt wherever the main thread is, and some places swallow
it: a generator closed by the garbage collector, a runner that catches broad exceptions. A job
interrupted there would go on and publish its output as if nothing happened. So the command line
`install()`s a handler that also remembers the interrupt, and every job calls `checkpoint()`
before it makes its result visible (renames an archive into place, records a restore as
finished): once interrupted, it raises KeyboardInterrupt there, and the job's own cleanup runs
(staging removed, no archive at the output path).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["install", "checkpoint", "requested"]

_requested = threading.Event()


def _handler(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT by remembering it and raising KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def requested() -> bool:
    return _requested.is_set()


def checkpoint() -> None:
    """KeyboardInterrupt when an interrupt came, even one that something swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt
