"""Shared helpers for bench scripts: run a command in a child process and read its peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["peak_rss_mb", "CFYSNAP"]

CFYSNAP = [sys.executable, "-m", "cli"]


def peak_rss_mb(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Run `argv` in a fresh child; return (peak RSS of it and its children in MB, seconds, rc).

    Each call forks a new intermediate process so `RUSAGE_CHILDREN` holds this command alone.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: run the command, report its children's peak, exit
        os.close(read_fd)
        import resource

        started = time.monotonic()
        rc = subprocess.call(list(argv), env=env, stdout=subprocess.DEVNULL)
        seconds = time.monotonic() - started
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        os.write(write_fd, f"{peak_kb} {seconds} {rc}".encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        fields = pipe.read().split()
    os.waitpid(pid, 0)
    return int(fields[0]) / 1024, float(fields[1]), int(fields[2])
