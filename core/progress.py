"""Progress for long work: a bar (documents and bytes) on a terminal, plain lines otherwise.

A job opens one `Progress` around its work; code deep inside (including Beam DoFns running in
this process, as on the default in-process runner) calls `report(docs, nbytes)`. In worker
processes of a multi-process or distributed runner there is no active Progress and `report` does
nothing: those jobs print their summary at the end from Beam's counters.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any

from core.text import format_size

__all__ = ["Progress", "report"]

_LOG = logging.getLogger("cfysnap")
_active: Progress | None = None
_lock = threading.Lock()


def report(docs: int = 0, nbytes: int = 0) -> None:
    """Advance the active progress of this process, if any. Thread-safe, cheap."""
    current = _active
    if current is not None:
        current.advance(docs, nbytes)


class Progress:
    """`with Progress("create", total=n): ...` — shows documents, bytes and docs/s as work advances."""

    def __init__(
        self,
        description: str,
        total: int | None = None,
        *,
        enabled: bool = True,
        interval: float = 5.0,
    ) -> None:
        self.description, self.total = description, total
        self.docs = 0
        self.nbytes = 0
        self.started = time.monotonic()
        self._enabled = enabled
        self._interval = interval
        self._last_line = self.started
        self._bar: Any = None
        self._task: Any = None
        self._tty = enabled and sys.stderr.isatty()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> Progress:
        global _active
        self.started = time.monotonic()
        if self._tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as Bar,
            )

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("docs"),
                TextColumn("{task.fields[size]}"),  # bytes written, not the document count
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, size="")
        with _lock:
            _active = self
        return self

    def advance(self, docs: int = 0, nbytes: int = 0) -> None:
        with _lock:
            self.docs += docs
            self.nbytes += nbytes
        if self._bar is not None:
            self._bar.update(self._task, completed=self.docs, size=format_size(self.nbytes))  # type: ignore[arg-type]
        elif self._enabled:
            now = time.monotonic()
            if now - self._last_line >= self._interval:
                self._last_line = now
                _LOG.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """`create: 40,000/100,000 documents (40%), 12.3 MiB, 8,000 docs/s, about 8 s left`:
        what a log (no terminal) shows every few seconds."""
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.docs / elapsed
        done = f"{self.docs:,}"
        left = ""
        if self.total:
            done += f"/{self.total:,} documents ({100 * self.docs / self.total:.0f}%)"
            if rate > 0 and self.docs < self.total:
                left = f", about {(self.total - self.docs) / rate:,.0f} s left"
        else:
            done += " documents"
        return f"{self.description}: {done}, {format_size(self.nbytes)}, {rate:,.0f} docs/s{left}"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _active
        with _lock:
            if _active is self:
                _active = None
        if self._bar is not None:
            self._bar.stop()
