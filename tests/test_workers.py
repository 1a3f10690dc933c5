"""`core.workers`: multi-processing workers forked from the launching process (each case in a
fresh interpreter: whether a process may fork depends on what runs in it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_PROBE = """
import json, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
import apache_beam as beam
from core.options import beam_options

mode = sys.argv[2]
sys.cfysnap_marker = "set in the launching process"  # what a forked worker sees, a new one not
if mode == "thread":  # another Python thread runs while the pipeline starts
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()

def look(x):
    if mode == "fail" and x == 7:
        raise ValueError("element 7 refused")
    return (x, x * x, os.getpid(), getattr(sys, "cfysnap_marker", None))

out = sys.argv[3]
options = beam_options(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
try:
    with beam.Pipeline(options=options) as p:
        _ = (p | beam.Create(list(range(40))) | beam.Reshuffle() | beam.Map(look)
               | beam.Map(json.dumps) | beam.io.WriteToText(out, shard_name_template=""))
    error = None
except Exception as exc:
    error = str(exc)
if mode == "thread":
    stop.set()
try:
    left = os.waitpid(-1, os.WNOHANG)
except ChildProcessError:
    left = None
print(json.dumps({"pid": os.getpid(), "runner": options.view_as(beam.options.pipeline_options.StandardOptions).runner,
                  "error": error, "children_left": left}))
"""


def run_probe(tmp_path: Path, mode: str) -> tuple[dict, list[list]]:
    out = tmp_path / f"{mode}.jsonl"
    run = subprocess.run([sys.executable, "-c", _PROBE, str(REPO), mode, str(out)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return report, sorted(rows)


def test_multi_processing_workers_are_forked_and_do_the_whole_job(tmp_path: Path) -> None:
    from core.options import FORKING_RUNNER

    report, rows = run_probe(tmp_path, "fork")
    assert report["runner"] == FORKING_RUNNER and report["error"] is None
    assert [(x, sq) for x, sq, _, _ in rows] == [(x, x * x) for x in range(40)]
    pids = {pid for _, _, pid, _ in rows}
    assert report["pid"] not in pids  # done in worker processes, not in the launching one
    assert {marker for *_, marker in rows} == {"set in the launching process"}  # forked from it
    assert report["children_left"] is None  # every zygote and worker reaped


def test_with_another_thread_running_beams_own_worker_processes_are_started(tmp_path: Path) -> None:
    report, rows = run_probe(tmp_path, "thread")
    assert report["error"] is None
    assert [(x, sq) for x, sq, _, _ in rows] == [(x, x * x) for x in range(40)]
    assert report["pid"] not in {pid for _, _, pid, _ in rows}
    assert {marker for *_, marker in rows} == {None}  # fresh interpreters, not forks


def test_a_failure_in_a_forked_worker_fails_the_job_with_its_message(tmp_path: Path) -> None:
    report, rows = run_probe(tmp_path, "fail")
    assert "element 7 refused" in report["error"]
    assert report["children_left"] is None


def test_only_the_multi_processing_mode_gets_the_forking_runner() -> None:
    from apache_beam.options.pipeline_options import StandardOptions

    from core.options import DEFAULT_RUNNER, FORKING_RUNNER, beam_options, spreads_work

    def runner(*args: str) -> str:
        return beam_options(list(args)).view_as(StandardOptions).runner

    assert runner() == DEFAULT_RUNNER
    assert runner("--direct_num_workers=2", "--direct_running_mode=multi_threading") == DEFAULT_RUNNER
    assert runner("--direct_running_mode=multi_processing") == FORKING_RUNNER
    assert runner("--runner=FlinkRunner", "--direct_running_mode=multi_processing") == "FlinkRunner"
    assert spreads_work(beam_options(["--direct_num_workers=2", "--direct_running_mode=multi_processing"]))
    assert not spreads_work(beam_options(["--direct_running_mode=multi_processing"]))  # 1 worker
