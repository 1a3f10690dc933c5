"""A call run in a forked child process beside the caller, its result handed back by file.

    job = Forked(check, folder)       # forks now, where that is safe; otherwise nothing yet
    ...                               # the caller goes on meanwhile (another core)
    value = job.result(here)          # the child's value, or its CfysnapError raised; `here()`
                                      # when the child delivered nothing (or never forked)
    job.stop()                        # in a `finally`: kill and reap a child still running

Forked only where that is safe: a POSIX system, no Python thread but this one, and no Beam
loaded (nor so its gRPC threads, which `threading` does not see). numpy's BLAS pool may hold
native threads; it re-initialises itself in a forked child, as every `multiprocessing` fork
pool relies on. SIGINT is blocked while forking and stays blocked in the child, which the
caller kills if it is interrupted (`stop`); on Linux the child is also killed by the kernel
when the caller dies (`PR_SET_PDEATHSIG`), so a killed caller leaves no orphan behind.

The child runs `call(folder)` (`folder` made for it, mode 0700: what it writes there can be
a snapshot's secrets), pickles the outcome into the folder and leaves with `os._exit`: nothing
of the caller's (buffers, temporary folders, atexit) is flushed or removed twice. The outcome is
the value, or a `CfysnapError` (picklable), which `result` raises. Anything else (the child
died, the fork failed, the outcome cannot be read) makes `result` run `here()` instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from core.errors import CfysnapError

__all__ = ["Forked", "fork_is_safe"]

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


def fork_is_safe() -> bool:
    """Whether this process may fork a child that runs Python: see the module docstring."""
    return (
        hasattr(os, "fork")
        and threading.active_count() == 1
        and "apache_beam" not in sys.modules
    )


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the forked child
    """On Linux, have the kernel kill this child when its parent dies (a parent killed outright
    never calls `stop`, nor would a child's own children be stopped): no orphan goes on."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


class Forked(Generic[T]):
    """`call(folder)` in a forked child; see the module docstring."""

    def __init__(self, call: Callable[[Path], T], folder: Path) -> None:
        self._call, self.folder = call, folder
        self._pid: int | None = None
        self._result = folder / "result.pickle"
        if fork_is_safe():
            self._fork()

    @property
    def forked(self) -> bool:
        """Whether a child runs the call (or ran it, until `result` or `stop`)."""
        return self._pid is not None

    def _fork(self) -> None:
        try:
            self.folder.mkdir(mode=0o700)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        except OSError:
            return  # `result` runs the call here instead
        parent = os.getpid()
        try:
            self._pid = os.fork()
        except OSError:
            self._pid = None
        if self._pid == 0:  # pragma: no cover - the forked child
            try:
                _die_with(parent)
                self._child()
            finally:
                os._exit(1)
        try:  # a Ctrl-C pending since the block is raised here: the child must not outlive it
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        except BaseException:
            self.stop()
            raise

    def _child(self) -> None:  # pragma: no cover - runs in the forked child
        code = 1
        try:
            try:
                outcome: tuple[str, Any] = ("result", self._call(self.folder))
            except CfysnapError as exc:
                outcome = ("refused", exc)
            temp = self._result.with_suffix(".partial")
            with open(temp, "wb") as out:
                pickle.dump(outcome, out)
            os.rename(temp, self._result)
            code = 0
        except BaseException:  # noqa: BLE001, S110 - the caller then runs `here()`
            pass
        finally:
            os._exit(code)

    def result(self, here: Callable[[], T]) -> T:
        """The child's value, or its refusal raised; `here()` when it delivered nothing."""
        outcome: tuple[str, Any] | None = None
        if self._pid is not None:
            try:
                _, status = os.waitpid(self._pid, 0)
                delivered = os.waitstatus_to_exitcode(status) == 0
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): the file says
                delivered = True
            self._pid = None
            if delivered:
                with contextlib.suppress(Exception):  # unreadable for any reason: `here()`
                    with open(self._result, "rb") as f:
                        outcome = pickle.load(f)  # noqa: S301 - written by our own child, just now
        if outcome is None:
            return here()
        kind, value = outcome
        if kind == "refused":
            raise value
        return value  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Kill and reap a child still running (the caller was interrupted or gave up)."""
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = None
