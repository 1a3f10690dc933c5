"""`core.forked.Forked`: a call in a forked child (its result, refusal and fallback are tested
through the restore's check, tests/test_restore.py); here, a child never outlives its caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_CALLER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from core.forked import Forked
def slow(folder):
    time.sleep(120)
    return 1
job = Forked(slow, Path(sys.argv[1]) / "child")
print(job._pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, waiting for a reaper) or no process is not."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_forked_child_dies_with_its_caller(tmp_path: Path) -> None:
    """A caller killed outright (SIGKILL: no `stop`, no finally) takes its child with it."""
    caller = subprocess.Popen([sys.executable, "-c", _CALLER, str(tmp_path), str(ROOT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert caller.stdout is not None
        child = int(caller.stdout.readline())
        assert child > 0 and _alive(child)
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        caller.kill()
        caller.wait()
