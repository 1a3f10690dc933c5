"""Our pipelines on a real distributed runner: Beam's FlinkRunner with an embedded Flink cluster.

`make test-distributed` (pytest -m distributed). The job server comes from Maven Central through
`scripts/flink-job-server fetch` (cached in ~/.cache/cfysnap; fetched here when missing, and the
test fails with Maven's error when it cannot be). Workers are LOOPBACK: Flink runs the Python
stages in this process's SDK worker pool, so the local staging folders are shared by all workers.

Each job runs twice, on the FnApiRunner and on Flink (parallelism 2), and the two archives must
hold the same documents (as multisets), the same members byte for byte and the same manifest
document counts. es_data's line order is not compared: shards are concatenated in path order and
shard paths are random per bundle, so the order differs between any two runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from core.archive import ES_DATA, MANIFEST, SnapshotReader
from core.model import Version
from core.options import beam_options
from core.search import SearchClient
from core.validate import validate_archive
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec
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


@pytest.fixture(scope="session")
def flink() -> list[str]:
    """Flink runner flags; fetches the job server with Maven on first use (fails if it can't)."""
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


def _job_servers() -> set[int]:
    """Pids of the Flink job servers Beam started (a killed launcher leaves its job server)."""
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"flink-job-server" in cmdline and b"--job-port" in cmdline:
                found.add(int(pid))
    return found


@pytest.mark.server
def test_restore_gives_the_same_target_on_flink_and_resumes_after_a_kill(
    flink: list[str], search: SearchClient, tmp_path: Path
) -> None:
    """restore on Flink (the journal and the staging folder are FileSystems paths the workers
    write to) gives the target the local runner gives it; killed in the middle of the bulk, it
    resumes, on Flink, to exactly the same target, verified, nothing doubled."""
    archive = tmp_path / "sample-3.3.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_3, 1200, seed=4), archive)

    root = tmp_path / "target"  # the same paths for both runs: nodes name their key paths
    fresh_manager(search)
    local = cli(*_restore_args(archive, search.url, root))
    assert local.returncode == 0, local.stderr
    expected = _target_documents(search)
    assert sum(expected.values()) > 1000

    shutil.rmtree(root)
    fresh_manager(search)
    before = _job_servers()
    killed = cli(*_restore_args(archive, search.url, root), "--", *flink,
                 env={"CFYSNAP_TEST_KILL_AT": "batch:5"})
    for pid in _job_servers() - before:  # the killed launcher's job server
        os.kill(pid, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = cli(*_restore_args(archive, search.url, root), "--resume", "--", *flink)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert _target_documents(search) == expected  # exactly the local runner's target
    checked = cli("verify", str(archive), "--es", search.url, "--fs-root", str(root / "fs"),
                  "--credentials-dir", str(root / "creds"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=600)
