"""Our pipelines on a real distributed runner: Beam's FlinkRunner, in one of two topologies.

- `make test` (pytest -m distributed among the rest): the embedded Flink mini-cluster inside the
  job server, Python stages in this process (LOOPBACK). Fast; the kill tests kill the launcher.
- `make test-distributed`: a Flink session cluster started by `scripts/flink-cluster` (its own
  JobManager, TaskManager and Beam worker-pool processes, `environment_type=EXTERNAL`), whose Beam
  options arrive in `CFYSNAP_FLINK_OPTIONS` (and its REST port in `CFYSNAP_FLINK_CLUSTER`). The
  kill tests SIGKILL the TaskManager JVM in the middle of a job (`cluster` tests).

The job server comes from Maven Central through `scripts/flink-job-server fetch` (cached;
fetched here when missing, and the test fails with Maven's error when it cannot be). Workers
run on this machine in both topologies, so local staging folders are shared by all of them.

Each job runs twice, on the FnApiRunner and on Flink (parallelism 2), and the two archives must
hold the same documents (as multisets), the same members byte for byte and the same manifest
document counts. es_data's line order is not compared: shards are concatenated in path order and
shard paths are random per bundle, so the order differs between any two runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import apache_beam as beam
import psutil
import pytest

from core.archive import ES_DATA, MANIFEST, SnapshotReader
from core.model import Version
from core.options import beam_options
from core.search import SearchClient
from core.validate import validate_archive
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec, snapshot_hits
from pipelines.sample.load import load_manager
from tests.conftest import REPO, fresh_manager, wipe
from transforms.shards import (
    ArchiveMember,
    ReadShards,
    SplitEsDataIntoShards,
    WriteShards,
    WriteSnapshotArchive,
)

pytestmark = [
    pytest.mark.distributed,
    # When a job ends the job server hangs up on the LOOPBACK worker's data channel ("Multiplexer
    # hanging up"): Beam's worker thread reports the cancelled stream after the job succeeded.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

FLINK_JOB_SERVER = REPO / "scripts" / "flink-job-server"


def flink_args(jar: str, parallelism: int = 2) -> list[str]:
    """Beam flags for the embedded Flink cluster inside the job server, workers in this process."""
    return [
        "--runner=FlinkRunner",
        "--flink_master=[local]",
        f"--flink_job_server_jar={jar}",
        "--environment_type=LOOPBACK",
        f"--parallelism={parallelism}",
    ]


def cluster_port() -> int | None:
    """The REST port of the session cluster `make test-distributed` started (None: embedded)."""
    port = os.environ.get("CFYSNAP_FLINK_CLUSTER")
    return int(port) if port else None


@pytest.fixture(autouse=True)
def _stop_this_tests_job_servers() -> Iterator[None]:
    """A pipeline run in this process leaves its Flink job server (with the embedded cluster, a
    whole Flink) running until the process exits; stop the ones a test started when it ends, so
    they neither pile up over the session nor flood the end of it with Beam's shutdown warnings."""
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    yield
    started = [c for c in me.children() if c.pid not in before and _is_job_server(c)]
    for child in started:
        child.terminate()
    _, alive = psutil.wait_procs(started, timeout=20)
    for child in alive:
        child.kill()


def _is_job_server(process: psutil.Process) -> bool:
    try:
        return any(arg.endswith(".jar") for arg in process.cmdline()) and "java" in process.name()
    except psutil.Error:
        return False


@pytest.fixture(scope="session")
def flink() -> list[str]:
    """Flink runner flags: the session cluster's (`CFYSNAP_FLINK_OPTIONS`), else the embedded
    cluster's, fetching the job server with Maven on first use (fails if it can't)."""
    options = os.environ.get("CFYSNAP_FLINK_OPTIONS")
    if options:
        return options.split()
    try:
        proc = subprocess.run(
            [str(FLINK_JOB_SERVER), "fetch"], capture_output=True, text=True, timeout=1500
        )
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/flink-job-server fetch took over 25 minutes", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/flink-job-server fetch failed (exit {proc.returncode}):\n{proc.stderr}",
            pytrace=False,
        )
    jar = proc.stdout.strip().splitlines()[-1]
    assert Path(jar).is_file(), jar
    return flink_args(jar)


# ------------------------------------------------------------------------------------ helpers
def contents(path: Path) -> dict[str, Any]:
    """What an archive holds, independent of es_data line order and of manifest checksums."""
    assert validate_archive(path) == []
    with SnapshotReader(path) as snap:
        hits = Counter(json.dumps(hit, sort_keys=True) for _, hit in snap.iter_hits())
        members = {
            name: snap.open(name).read()
            for name in snap.file_names()
            if name not in (ES_DATA, MANIFEST)
        }
        manifest = snap.manifest() or {}
    return {"hits": hits, "members": members, "documents": manifest.get("documents")}


def assert_same_contents(got: dict[str, Any], want: dict[str, Any]) -> None:
    """`contents()` equal, or a failure that names what differs: the documents only one side
    holds (or holds more often), the members whose bytes differ, the manifest counts."""
    problems = []
    extra, missing = got["hits"] - want["hits"], want["hits"] - got["hits"]
    if extra or missing:
        problems.append(
            f"{sum(extra.values())} document(s) only in the first (or more often): "
            f"{sorted(extra)[:3]}; {sum(missing.values())} only in the second: "
            f"{sorted(missing)[:3]}"
        )
    names = sorted(set(got["members"]) | set(want["members"]))
    differ = [n for n in names if got["members"].get(n) != want["members"].get(n)]
    for name in differ[:5]:
        a, b = got["members"].get(name), want["members"].get(name)
        problems.append(
            f"member {name}: {len(a) if a is not None else 'absent'} vs "
            f"{len(b) if b is not None else 'absent'} bytes; first difference at byte "
            f"{next((i for i, (x, y) in enumerate(zip(a or b'', b or b'', strict=False)) if x != y), 'end')}"
        )
    if got["documents"] != want["documents"]:
        problems.append(f"manifest documents {got['documents']} vs {want['documents']}")
    assert not problems, "archives differ: " + " | ".join(problems)


def copy_through_shards(source: Path, output: Path, staging: Path, args: list[str]) -> None:
    """split → read → write → assemble: the shard transforms alone, every member carried."""
    with SnapshotReader(source) as snap:
        carried = [
            ArchiveMember(name, data=snap.open(name).read())
            for name in snap.file_names()
            if name not in (ES_DATA, MANIFEST)
        ]
    (staging / "in").mkdir(parents=True)
    (staging / "out").mkdir()
    with beam.Pipeline(options=beam_options(args)) as p:
        shard_infos = (
            p
            | "Archive" >> beam.Create([str(source)])
            | "Split" >> SplitEsDataIntoShards(str(staging / "in"), lines_per_shard=40)
            | "Read" >> ReadShards()
            | "Write" >> WriteShards(str(staging / "out"))
        )
        members = p | "Members" >> beam.Create(carried)
        _ = (shard_infos, members) | "Assemble" >> WriteSnapshotArchive(str(output))


# -------------------------------------------------------------------------------------- tests
def test_shard_transforms_give_the_same_archive_on_flink(flink: list[str], tmp_path: Path) -> None:
    source = tmp_path / "sample-3.3.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_3, 600, seed=7), source)

    copy_through_shards(source, tmp_path / "local.zip", tmp_path / "st-local", [])
    copy_through_shards(source, tmp_path / "flink.zip", tmp_path / "st-flink", flink)

    expected = contents(source)
    assert_same_contents(contents(tmp_path / "local.zip"), expected)
    assert_same_contents(contents(tmp_path / "flink.zip"), expected)


def test_convert_gives_the_same_archive_on_flink(flink: list[str], tmp_path: Path) -> None:
    from pipelines.convert import ConvertConfig, run

    source = tmp_path / "sample-3.2.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_2, 600, seed=3), source)
    config = ConvertConfig(
        source=source, output=tmp_path / "local.zip", target=Version.V3_4, lines_per_shard=64,
        progress=False,
    )
    local = run(config, [])
    on_flink = run(replace(config, output=tmp_path / "flink.zip"), flink)

    assert_same_contents(contents(tmp_path / "flink.zip"), contents(tmp_path / "local.zip"))
    assert on_flink.documents == local.documents
    assert on_flink.documents_read == local.documents_read == sum(local.documents.values())
    assert on_flink.documents_changed == local.documents_changed > 0


@pytest.mark.server
def test_create_gives_the_same_archive_on_flink(
    flink: list[str], search: SearchClient, tmp_path: Path
) -> None:
    from pipelines.create import CreateConfig, run

    spec = replace(
        ManagerSpec.sized(Version.V3_3, 600, seed=5), keys_dir=str(tmp_path / "keys")
    )
    wipe(search)
    load_manager(spec, search, tmp_path / "fs")
    config = CreateConfig(
        target=search.url, fs_root=tmp_path / "fs", output=tmp_path / "local.zip", progress=False
    )
    local = run(config, [])
    on_flink = run(replace(config, output=tmp_path / "flink.zip"), flink)

    assert_same_contents(contents(tmp_path / "flink.zip"), contents(tmp_path / "local.zip"))
    assert on_flink.documents == local.documents
    assert sum(local.documents.values()) > 500


def test_export_gives_the_same_dataset_on_flink(flink: list[str], tmp_path: Path) -> None:
    import pyarrow.dataset as ds

    from pipelines.export import ExportConfig, run

    source = tmp_path / "sample-3.3.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_3, 600, seed=9), source)
    config = ExportConfig(
        output=tmp_path / "local", archive=source, types=None, lines_per_shard=64,
        rows_per_group=50, progress=False,
    )
    local = run(config, [])
    on_flink = run(replace(config, output=tmp_path / "flink"), flink)

    def rows(folder: Path) -> Counter[str]:
        table = ds.dataset(folder, format="parquet", partitioning="hive").to_table()
        return Counter(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())

    assert on_flink.rows == local.rows
    assert sum(local.rows.values()) > 500
    assert rows(tmp_path / "flink") == rows(tmp_path / "local")


# --------------------------------------------------------------------------- restore on Flink
def _restore_args(archive: Path, url: str, root: Path) -> list[str]:
    return ["restore", str(archive), "--es", url, "--fs-root", str(root / "fs"),
            "--credentials-dir", str(root / "creds"), "--batch-docs", "50"]


def _target_documents(client: SearchClient) -> Counter[str]:
    client.refresh()
    return Counter(
        json.dumps([h["_index"], h["_type"], h["_id"], h["_source"]], sort_keys=True)
        for h in client.scan("*")
        if h["_type"] != "provider_context"
    )


def _job_servers(run: str) -> set[int]:
    """Pids of the Flink job servers a launcher started with `CFYSNAP_TEST_RUN=run` in its
    environment (a killed launcher leaves its job server, orphaned; the marker, which the job
    server inherits, tells it from any other run's on the machine)."""
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
                environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            if (b"flink-job-server" in cmdline and b"--job-port" in cmdline
                    and f"CFYSNAP_TEST_RUN={run}".encode() in environ):
                found.add(int(pid))
    return found


def _taskmanager_pid(port: int) -> int:
    path = Path(os.environ.get("CFYSNAP_CACHE", "/var/cache/cfysnap" if os.geteuid() == 0 else
                               str(Path.home() / ".cache" / "cfysnap")))
    return int((path / f"flink-cluster-{port}" / "taskmanager-1.pid").read_text())


def _cluster(action: str, port: int) -> str:
    """scripts/flink-cluster ACTION for the cluster of the tests (its worker pool on the port
    the options name)."""
    options = os.environ.get("CFYSNAP_FLINK_OPTIONS", "")
    pool = re.search(r"--environment_config=[^:\s]+:(\d+)", options)
    extra = ["--pool-port", pool.group(1)] if pool and action == "start" else []
    out = subprocess.run(
        [str(REPO / "scripts" / "flink-cluster"), action, "--rest-port", str(port), *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _kill_taskmanager_when(
    ready: Any, port: int, job: subprocess.Popen[str]
) -> tuple[int | None, str, str]:
    """SIGKILL the cluster's TaskManager JVM once `ready()` says the job is under way; return
    how the job ended. The cluster is restarted afterwards (a fresh TaskManager), whatever
    happened, so that the tests after this one find it whole."""
    try:
        deadline = time.monotonic() + 240
        while not ready():
            assert job.poll() is None, f"the job ended before the kill: {job.communicate()}"
            assert time.monotonic() < deadline, "the job never got under way"
            time.sleep(0.2)
        os.kill(_taskmanager_pid(port), signal.SIGKILL)
        out, err = job.communicate(timeout=600)
        return job.returncode, out, err
    finally:
        if job.poll() is None:
            job.kill()
        _cluster("stop", port)
        _cluster("start", port)


def _batches(root: Path) -> int:
    return sum(1 for _ in (root / "fs" / ".cfysnap").glob("restore-*/batches/*.json"))


@pytest.mark.server
def test_restore_killed_mid_bulk_resumes_on_flink_to_the_local_runners_target(
    flink: list[str], search: SearchClient, tmp_path: Path
) -> None:
    """restore on Flink (the journal and the staging folder are FileSystems paths the workers
    write to) is killed in the middle of the bulk load: on the embedded cluster the launcher
    (its SDK worker) is SIGKILLed by the test hook; on the session cluster the TaskManager JVM
    is, and the job fails with one line. `restore --resume` on Flink then gives exactly the
    target the local runner gives: every document, nothing doubled, verified."""
    archive = tmp_path / "sample-3.3.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_3, 6000, seed=4), archive)
    root = tmp_path / "target"  # the same paths for both runs: nodes name their key paths
    fresh_manager(search)
    local = cli(*_restore_args(archive, search.url, root))
    assert local.returncode == 0, local.stderr
    expected = _target_documents(search)
    assert sum(expected.values()) > 5000

    shutil.rmtree(root)
    fresh_manager(search)
    port = cluster_port()
    if port is None:
        run = uuid.uuid4().hex
        killed = cli(*_restore_args(archive, search.url, root), "--", *flink,
                     env={"CFYSNAP_TEST_KILL_AT": "batch:5", "CFYSNAP_TEST_RUN": run})
        for pid in _job_servers(run):  # the killed launcher's job server
            os.kill(pid, signal.SIGKILL)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    else:
        job = popen_cli(*_restore_args(archive, search.url, root), "--", *flink)
        code, out, err = _kill_taskmanager_when(lambda: _batches(root) >= 5, port, job)
        assert code == 1, out + err
        assert_one_error_line(err, "error: restore failed: ")
        assert 5 <= _batches(root) < 120  # stopped in the middle
    resumed = cli(*_restore_args(archive, search.url, root), "--resume", "--", *flink)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert _target_documents(search) == expected  # exactly the local runner's target
    checked = cli("verify", str(archive), "--es", search.url, "--fs-root", str(root / "fs"),
                  "--credentials-dir", str(root / "creds"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.server
@pytest.mark.cluster
def test_create_with_its_taskmanager_killed_fails_in_one_line_and_a_rerun_is_exact(
    flink: list[str], search: SearchClient, tmp_path: Path
) -> None:
    port = cluster_port()
    assert port is not None, "cluster tests run in `make test-distributed` (CFYSNAP_FLINK_CLUSTER)"
    spec = replace(ManagerSpec.sized(Version.V3_3, 40_000, seed=6), keys_dir=str(tmp_path / "keys"))
    wipe(search)
    load_manager(spec, search, tmp_path / "fs")
    out = tmp_path / "snap.zip"
    args = ["create", "--es", search.url, "--fs-root", str(tmp_path / "fs"), "--output", str(out)]
    job = popen_cli(*args, "--", *flink)

    def shards_written() -> bool:
        return any(tmp_path.glob(".snap.zip.staging-*/out-*.jsonl"))

    code, stdout, stderr = _kill_taskmanager_when(shards_written, port, job)
    assert code == 1, stdout + stderr
    assert_one_error_line(stderr, "error: create failed: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fs", "keys"]  # no partial archive
    again = cli(*args, "--", *flink)
    assert again.returncode == 0, again.stderr
    assert contents(out)["hits"] == Counter(
        json.dumps(h, sort_keys=True) for h in snapshot_hits(spec))


def assert_one_error_line(stderr: str, start: str) -> None:
    """One `error:` line (cfysnap's own INFO lines aside), no traceback, no runner log."""
    lines = [line for line in stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith(start), stderr
    assert "TaskManager" in lines[0] and "Traceback" not in stderr


def popen_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=600)
