"""Faults under load (issue 14), each against the real Elasticsearch 1.7:

- a proxy (tests/faults.py) injects 429s, 503s, dropped connections (before and after the
  server did the work), failed bulk items and slow answers: restore and create finish with
  nothing lost or doubled, or stop with one line, leaving a resumable journal (restore) or no
  archive (create);
- the server itself is killed (SIGKILL) mid-restore and restarted: `--resume` finishes and
  `verify` passes;
- `create` interrupted with Ctrl-C exits 130 and leaves no partial archive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.model import Version
from core.search import SearchClient
from pipelines import restore, verify
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec
from tests.conftest import es_data_lines, fresh_manager, load_small_manager
from tests.faults import FaultProxy
from transforms.restore import Batching

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "scripts" / "search-server"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3.3 snapshot of ~1,000 documents (many bulk batches at 40 documents each)."""
    path = tmp_path_factory.mktemp("faults") / "snap-3.3.zip"
    write_sample_archive(ManagerSpec(version=Version.V3_3, events=400, logs=400), path)
    return path


def restore_args(archive: Path, url: str, work: Path) -> list[str]:
    return ["restore", str(archive), "--es", url, "--fs-root", str(work / "fs"),
            "--credentials-dir", str(work / "creds"), "--batch-docs", "40"]


def verified(archive: Path, url: str, work: Path) -> None:
    report = verify.run(verify.VerifyConfig(archive=archive, target=url, fs_root=work / "fs",
                                            credentials_dir=work / "creds"))
    assert report.ok, report.render()


# ------------------------------------------------------------------------- the fault proxy
@pytest.mark.server
def test_restore_through_every_fault_loses_and_doubles_nothing(
    archive: Path, target: SearchClient, tmp_path: Path
) -> None:
    plan = {"bulk": ["429", "pass", "drop", "pass", "drop-after", "503", "items-429", "slow",
                     "pass", "pass"]}
    with FaultProxy(target.url, plan) as proxy:
        summary = restore.run(restore.RestoreConfig(
            archive=archive, target=proxy.url, fs_root=tmp_path / "fs",
            credentials_dir=tmp_path / "creds", progress=False,
            batching=Batching(batch_docs=40)))
        applied = {action for (kind, action), n in proxy.counts.items() if kind == "bulk" and n}
    assert applied == set(plan["bulk"])  # every fault happened
    assert summary.loaded == summary.expected
    verified(archive, target.url, tmp_path)  # exact documents, straight from the server


@pytest.mark.server
def test_a_restore_the_server_keeps_refusing_stops_in_one_line_and_resumes(
    archive: Path, target: SearchClient, tmp_path: Path
) -> None:
    with FaultProxy(target.url, {"bulk": ["pass"] * 6 + ["503"] * 200}, persistent=True) as proxy:
        failed = cli(*restore_args(archive, proxy.url, tmp_path))
    assert failed.returncode == 1
    assert len(failed.stderr.splitlines()) == 1, failed.stderr
    assert failed.stderr.startswith("error: ") and "503" in failed.stderr
    assert "journal" in failed.stderr
    resumed = cli(*restore_args(archive, target.url, tmp_path), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    verified(archive, target.url, tmp_path)


@pytest.fixture
def manager(search: SearchClient, tmp_path: Path) -> Path:
    root = load_small_manager(search, tmp_path, events=300)
    search.refresh()
    assert sum(search.logical_indices("*").values()) > 600
    return root


@pytest.mark.server
def test_create_through_retried_faults_is_exact_and_a_lost_page_leaves_nothing(
    search: SearchClient, manager: Path, tmp_path: Path
) -> None:
    direct = tmp_path / "direct.zip"
    assert cli("create", "--es", search.url, "--fs-root", str(manager),
               "--output", str(direct)).returncode == 0
    # whole-request 429/503 and dropped connections before a search reaches the server are
    # retried (a search is idempotent); slow pages are waited for
    plan = {"search": ["429", "503", "drop", "pass"], "other": ["503", "pass", "pass"],
            "scroll": ["slow", "pass", "pass", "pass"]}
    out = tmp_path / "out" / "through.zip"
    with FaultProxy(search.url, plan) as proxy:
        made = cli("create", "--es", proxy.url, "--fs-root", str(manager), "--output", str(out),
                   "--", "--direct_num_workers=1")
        applied = {a for (_, a), n in proxy.counts.items() if n}
    assert made.returncode == 0, made.stderr
    assert {"429", "503", "drop", "slow"} <= applied
    assert es_data_lines(out) == es_data_lines(direct)
    # a scroll continuation is never resent (the server may have moved on): the job stops
    # with one line and no archive, partial or not
    lost = tmp_path / "out" / "lost.zip"
    with FaultProxy(search.url, {"scroll": ["pass", "pass", "drop-after"]}) as proxy:
        failed = cli("create", "--es", proxy.url, "--fs-root", str(manager), "--output", str(lost))
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1, failed.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["through.zip"]


# ------------------------------------------------------------------- the server killed
@pytest.fixture
def own_server() -> Iterator[tuple[str, int]]:
    """An Elasticsearch 1.7 of this test's own (it gets killed; its data folder is the script's
    own for the port, in the cache), stopped after."""
    port = int(os.environ.get("CFYSNAP_KILL_PORT", "9207"))
    started = subprocess.run([str(SERVER), "start", "--server", "elasticsearch-1.7", "--port",
                              str(port)], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip().splitlines()[-1], port
    finally:
        subprocess.run([str(SERVER), "stop", "--port", str(port)], capture_output=True)


def server_pid(port: int) -> int:
    out = subprocess.run(["pgrep", "-f", f"http.port={port}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, out.stdout
    return pids[0]


@pytest.mark.server
def test_the_server_killed_mid_restore_and_restarted_then_resume_verifies(
    archive: Path, own_server: tuple[str, int], tmp_path: Path
) -> None:
    url, port = own_server
    with SearchClient(url) as client:
        fresh_manager(client)
    # slow the bulk answers down so the kill lands mid-load, whatever the machine's speed
    with FaultProxy(url, {"bulk": ["slow"]}) as proxy:
        job = subprocess.Popen([sys.executable, str(REPO / "cli.py"),
                                *restore_args(archive, proxy.url, tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + 120
        while proxy.counts[("bulk", "slow")] < 3:
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.1)
        os.kill(server_pid(port), signal.SIGKILL)
        _, err = job.communicate(timeout=600)
    assert job.returncode == 1 and len(err.splitlines()) == 1, err
    assert "journal" in err
    restarted = subprocess.run([str(SERVER), "start", "--server", "elasticsearch-1.7", "--port",
                                str(port)], capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr
    resumed = cli(*restore_args(archive, url, tmp_path), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    verified(archive, url, tmp_path)


# ------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.server
def test_create_interrupted_with_ctrl_c_exits_130_and_leaves_no_archive(
    search: SearchClient, manager: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with FaultProxy(search.url, {"scroll": ["slow"]}) as proxy:
        job = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "create", "--es", proxy.url,
                                "--fs-root", str(manager), "--output", str(out / "snap.zip")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + 120
        while proxy.counts[("scroll", "slow")] < 2:
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.1)
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert list(out.iterdir()) == []  # no archive, no partial file, no staging folder


@pytest.mark.server
def test_documents_the_server_lost_after_acknowledging_them_are_loaded_again_on_resume(
    archive: Path, target: SearchClient, tmp_path: Path
) -> None:
    # the restore is killed after 6 journaled batches; then the server "loses" documents it had
    # acknowledged (as Elasticsearch 1.x does when killed before its translog sync)
    args = restore_args(archive, target.url, tmp_path)
    killed = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "CFYSNAP_TEST_KILL_AT": "batch:6"})
    assert killed.returncode == -signal.SIGKILL
    target.refresh()
    lost = {k: n for k, n in target.logical_indices("*").items() if n and k[0] != "cloudify_storage"}
    assert lost  # some events were loaded before the kill
    for index, doc_type in lost:
        target.delete_by_query(index, doc_type)
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "loading them again" in resumed.stderr
    verified(archive, target.url, tmp_path)
