"""`core.forked.Forked`: a call in a forked child (what `core.validate` checks the second half
of a large es_data with): its value, its refusal, the caller's own run when it fails, no fork
where Beam is loaded, and no child outliving its caller."""

from __future__ import annotations

import json
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


_OUTCOMES = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from core.forked import Forked
work = Path(sys.argv[1])
def call(folder):
    with open(work / "calls", "a") as f:
        f.write(f"{os.getpid()} {folder.name}\\n")
    if sys.argv[2] == "fail":
        raise ValueError("the call failed")
    if sys.argv[2] == "refuse":
        from core.errors import CorruptArchive
        raise CorruptArchive("es_data", 7, "not valid JSON", "/a.zip")
    return {"value": folder.name, "mode": oct(folder.stat().st_mode & 0o777)}
job = Forked(call, work / "child")
forked = job.forked
try:
    out = {"value": job.result(lambda: call(work))}
except Exception as exc:
    out = {"error": f"{type(exc).__name__}: {exc}"}
finally:
    job.stop()
print(json.dumps({"forked": forked, "pid": os.getpid(), **out}))
"""


@pytest.mark.parametrize("outcome", ["pass", "refuse", "fail"])
def test_a_forked_call_hands_back_its_value_or_refusal_and_runs_here_when_it_fails(
    tmp_path: Path, outcome: str
) -> None:
    """In a process with one thread and no Beam, the call runs in a forked child, in a folder of
    its own (0700); its value, or its refusal (a CfysnapError), comes back to the caller. When
    the child delivers nothing (here: the call fails otherwise), the caller runs `here()` and
    its error is raised."""
    run = subprocess.run([sys.executable, "-c", _OUTCOMES, str(tmp_path), outcome, str(ROOT)],
                         capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    calls = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    assert out["forked"] is True
    assert int(calls[0][0]) != out["pid"] and calls[0][1] == "child"  # the child, in its folder
    if outcome == "pass":
        assert out["value"] == {"value": "child", "mode": "0o700"} and len(calls) == 1
    elif outcome == "refuse":  # raised by the caller as the child found it, not run again
        assert out["error"] == "CorruptArchive: /a.zip: es_data:7: not valid JSON"
        assert len(calls) == 1
    else:
        assert out["error"] == "ValueError: the call failed"
        assert [[int(calls[1][0]), calls[1][1]]] == [[out["pid"], tmp_path.name]]  # here


def test_no_fork_where_beam_is_loaded() -> None:
    """Beam's gRPC threads are invisible to `threading`: with Beam imported (as in this test
    process) nothing is forked and the call runs here."""
    import apache_beam  # noqa: F401

    from core.forked import Forked, fork_is_safe

    assert not fork_is_safe()
    job = Forked(lambda folder: 1, Path("/nonexistent/never-made"))
    assert not job.forked and job.result(lambda: 2) == 2


_INTERRUPTED = """
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import core.forked
from core.forked import Forked
children = []
_fork = os.fork
def fork():  # a Ctrl-C arriving while SIGINT is blocked for the fork: pending until unblocked
    pid = _fork()
    if pid:
        children.append(pid)
        os.kill(os.getpid(), signal.SIGINT)
    return pid
core.forked.os.fork = fork
def slow(folder):
    time.sleep(120)
try:
    Forked(slow, Path(sys.argv[1]) / "child")
    print("no interrupt")
except KeyboardInterrupt:
    print(children[0])
"""


def test_a_ctrl_c_during_the_fork_leaves_no_child(tmp_path: Path) -> None:
    """A Ctrl-C that arrives while the fork blocks SIGINT is raised once it is unblocked; the
    child already forked is killed and reaped before the interrupt goes on."""
    run = subprocess.run([sys.executable, "-c", _INTERRUPTED, str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=60, check=True)
    child = int(run.stdout.strip())
    assert not _alive(child)
