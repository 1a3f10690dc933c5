"""core.store: ids and records (pure), then the lifecycle against the real search server,
stale `creating` snapshots, and uploads/downloads on local paths and on `mem://`.

Beam's Python SDK ships no in-memory filesystem (only the Java SDK has one), so `MemFileSystem`
below registers the `mem://` scheme the way every Beam filesystem does (a `FileSystem`
subclass); it is a second filesystem that needs no network, reached only through `FileSystems`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apache_beam.io.filesystem import CompressionTypes, FileMetadata, FileSystem
from apache_beam.io.filesystems import FileSystems
from typer.testing import CliRunner

from cli import app
from core.errors import StoreError
from core.model import FILE_FOLDERS, STORAGE_INDEX, Version
from core.search import SearchClient
from core.store import (
    MARKER,
    CreatorMarker,
    SnapshotRecord,
    SnapshotStore,
    Status,
    check_snapshot_id,
    now_stamp,
)
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec, manager_hits, snapshot_hits
from pipelines.sample.load import load_manager

runner = CliRunner()

# ---- a mem:// filesystem ----------------------------------------------------------------------


class _MemWriter(io.BytesIO):
    def __init__(self, files: dict[str, bytes], path: str) -> None:
        super().__init__()
        self._files, self._path = files, path

    def close(self) -> None:
        if not self.closed:
            self._files[self._path] = self.getvalue()
        super().close()


class MemFileSystem(FileSystem):
    """`mem://` paths held in a process-wide dict. Rename is copy + delete (as on object
    stores); `_writes` counts opened writers so tests can see nothing was written."""

    files: dict[str, bytes] = {}

    @classmethod
    def scheme(cls) -> str:
        return "mem"

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str) -> Any:
        for path, data in self.files.items():
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(data))

    def create(
        self,
        path: str,
        mime_type: str = "application/octet-stream",
        compression_type: str = CompressionTypes.AUTO,
    ) -> Any:
        return _MemWriter(self.files, path)

    def open(
        self,
        path: str,
        mime_type: str = "application/octet-stream",
        compression_type: str = CompressionTypes.AUTO,
    ) -> Any:
        return io.BytesIO(self.files[path])

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        for src, dst in zip(source_file_names, destination_file_names, strict=True):
            self.files[dst] = self.files[src]

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        for src, dst in zip(source_file_names, destination_file_names, strict=True):
            self.files[dst] = self.files.pop(src)

    def exists(self, path: str) -> bool:
        return path in self.files

    def size(self, path: str) -> int:
        return len(self.files[path])

    def last_updated(self, path: str) -> float:
        return 0.0

    def checksum(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, len(self.files[path]))

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            self.files.pop(path, None)


@pytest.fixture
def mem() -> Any:
    MemFileSystem.files.clear()
    yield MemFileSystem.files
    MemFileSystem.files.clear()


# ---- helpers ----------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sample_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "sample.zip"
    write_sample_archive(ManagerSpec.sized(Version.V3_3, 60), path)
    return path


@pytest.fixture
def store(target: SearchClient, tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(target, tmp_path / "fs")


def put_record(client: SearchClient, record: SnapshotRecord) -> None:
    hit = {
        "_index": STORAGE_INDEX,
        "_type": "snapshot",
        "_id": record.id,
        "_source": record.to_doc(),
    }
    client.bulk([hit], refresh=True).raise_on_failure()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- pure -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["", ".", "..", ".hidden", "a/b", "a\\b", "x\x00y", "t\nab", "x" * 201]
)
def test_unsafe_ids_are_refused(bad: str) -> None:
    with pytest.raises(StoreError):
        check_snapshot_id(bad)


@pytest.mark.parametrize("good", ["snap-1", "2016_03_14", "a.b", "ünï cödé"])
def test_plain_ids_are_accepted(good: str) -> None:
    assert check_snapshot_id(good) == good


def test_paths_follow_the_manager_layout(tmp_path: Path) -> None:
    store = SnapshotStore(SearchClient("http://127.0.0.1:9"), tmp_path)
    root = tmp_path.resolve()
    assert store.path("s1") == root / "snapshots" / "s1" / "s1.zip"
    assert store.marker_path("s1") == root / "snapshots" / "s1" / MARKER


def test_record_round_trips_a_document() -> None:
    doc = {"id": "s1", "created_at": "2016-03-14 10:00:00.000001", "status": "created", "error": ""}
    assert SnapshotRecord.from_doc(doc).to_doc() == doc
    assert SnapshotRecord.from_doc({}, "s2") == SnapshotRecord("s2", "", "", "")


def test_marker_of_this_process_is_alive_and_a_dead_pid_is_not() -> None:
    me = CreatorMarker.current()
    assert me.alive() is True
    assert CreatorMarker(me.host, me.pid, me.started - 3600).alive() is False  # recycled pid
    assert CreatorMarker(me.host, dead_pid(), me.started).alive() is False
    assert CreatorMarker("another-host", me.pid, me.started).alive() is None


# ---- lifecycle on the real server ---------------------------------------------------------------


@pytest.mark.server
def test_begin_create_records_creating_and_the_creator(store: SnapshotStore) -> None:
    record = store.begin_create("s1")
    assert store.list() == [record]
    assert record.status == "creating" and record.error == ""
    marker = store.read_marker("s1")
    assert marker == CreatorMarker.current()
    assert stat.S_IMODE(store.marker_path("s1").stat().st_mode) == 0o600
    store.mark("s1", Status.CREATED)
    assert store.get("s1") == SnapshotRecord("s1", record.created_at, "created", "")
    assert not store.marker_path("s1").exists()


@pytest.mark.server
def test_a_second_create_or_upload_with_an_existing_id_is_refused(
    store: SnapshotStore, sample_zip: Path
) -> None:
    store.begin_create("s1")
    with pytest.raises(StoreError, match="already exists"):
        store.begin_create("s1")
    with pytest.raises(StoreError, match="already exists"):
        store.upload("s1", str(sample_zip))
    assert [r.status for r in store.list()] == ["creating"]
    assert not store.path("s1").exists()


@pytest.mark.server
def test_failed_snapshot_is_listed_and_deleted_but_not_restored_or_downloaded(
    store: SnapshotStore, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError), store.creating("bad") as archive:
        archive.write_bytes(b"half")  # a creator that dies mid-way
        raise RuntimeError("disk full")
    assert store.list() == [
        SnapshotRecord("bad", store.list()[0].created_at, "failed", "RuntimeError: disk full")
    ]
    with pytest.raises(StoreError, match="status is failed .*cannot be restored"):
        store.archive_for_restore("bad")
    with pytest.raises(StoreError, match="cannot be downloaded"):
        store.download("bad", str(tmp_path / "out.zip"))
    assert not (tmp_path / "out.zip").exists()
    deleted = store.delete("bad")
    assert deleted is not None and deleted.status == "failed"
    assert store.get("bad") is None and store.list() == []
    assert not store.folder("bad").exists()
    with pytest.raises(StoreError, match="no such snapshot"):
        store.delete("bad")


@pytest.mark.server
def test_creating_context_marks_created_and_refuses_a_job_that_wrote_nothing(
    store: SnapshotStore, sample_zip: Path
) -> None:
    with store.creating("ok") as archive:
        archive.write_bytes(sample_zip.read_bytes())
    assert store.require("ok").status == "created"
    assert store.archive_for_restore("ok") == store.path("ok")
    with pytest.raises(StoreError, match="without writing"), store.creating("empty"):
        pass
    assert store.require("empty").status == "failed"


@pytest.mark.server
def test_a_creating_snapshot_cannot_be_restored_or_deleted_while_its_creator_lives(
    store: SnapshotStore,
) -> None:
    store.begin_create("busy")
    with pytest.raises(StoreError, match="still being created"):
        store.archive_for_restore("busy")
    with pytest.raises(StoreError, match="still being created"):
        store.delete("busy")
    assert store.reap_stale() == []


# ---- stale creating snapshots ----------------------------------------------------------------------


@pytest.mark.server
def test_reap_stale_fails_snapshots_whose_creator_is_gone(
    store: SnapshotStore, search: SearchClient
) -> None:
    me = CreatorMarker.current()
    now = datetime.now(UTC)
    old, recent = now_stamp(now - timedelta(hours=2)), now_stamp(now - timedelta(minutes=1))
    crashed_marker = CreatorMarker(me.host, dead_pid(), me.started)
    cases = {
        "crashed": (recent, crashed_marker),
        "recycled": (recent, CreatorMarker(me.host, me.pid, me.started - 3600)),
        "alive": (recent, me),
        "elsewhere": (old, CreatorMarker("another-host", 1, 0.0)),
        "old-unmarked": (old, None),
        "new-unmarked": (recent, None),
    }
    for snapshot_id, (created_at, marker) in cases.items():
        put_record(search, SnapshotRecord(snapshot_id, created_at, "creating"))
        if marker is not None:
            store._write_marker(snapshot_id, marker)
    partial = store.folder("crashed") / ".crashed.zip.staging-1234"
    partial.mkdir()
    (partial / "shard-0").write_bytes(b"x")

    reaped = store.reap_stale()

    assert sorted(r.id for r in reaped) == ["crashed", "old-unmarked", "recycled"]
    statuses = {r.id: r.status for r in store.list()}
    assert statuses == {
        "crashed": "failed",
        "recycled": "failed",
        "old-unmarked": "failed",
        "alive": "creating",
        "elsewhere": "creating",
        "new-unmarked": "creating",
    }
    crashed_pid = crashed_marker.pid
    assert store.require("crashed").error == (
        f"creation interrupted: its creator (pid {crashed_pid} on {me.host}) is gone"
    )
    assert store.require("old-unmarked").error.startswith(
        "creation interrupted: no creator recorded"
    )
    assert not store.marker_path("crashed").exists() and not partial.exists()
    assert store.reap_stale() == []  # idempotent


@pytest.mark.server
def test_a_creator_killed_mid_create_leaves_failed_not_creating(
    store: SnapshotStore, search: SearchClient
) -> None:
    code = (
        "import os, sys\n"
        "from core.search import SearchClient\n"
        "from core.store import SnapshotStore\n"
        "store = SnapshotStore(SearchClient(sys.argv[1]), sys.argv[2])\n"
        "with store.creating('killed') as archive:\n"
        "    archive.parent.joinpath('.killed.zip.1234.partial').write_bytes(b'half')\n"
        "    os._exit(9)  # no cleanup, no status: as if the machine lost the process\n"
    )
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", code, search.url, str(store.fs_root)], cwd=repo, env=env
    )
    assert proc.returncode == 9
    assert store.require("killed").status == "creating"

    assert [r.id for r in store.reap_stale()] == ["killed"]
    record = store.require("killed")
    assert record.status == "failed" and record.error.startswith("creation interrupted")
    assert sorted(p.name for p in store.folder("killed").iterdir()) == []


# ---- uploads and downloads ---------------------------------------------------------------------------


@pytest.mark.server
def test_upload_validates_stores_and_marks_uploaded(store: SnapshotStore, sample_zip: Path) -> None:
    transfer = store.upload("up", str(sample_zip))
    assert transfer.sha256 == sha256(sample_zip) == sha256(store.path("up"))
    assert transfer.size == sample_zip.stat().st_size
    assert [(r.id, r.status, r.error) for r in store.list()] == [("up", "uploaded", "")]
    assert stat.S_IMODE(store.path("up").stat().st_mode) == 0o600
    assert sorted(p.name for p in store.root.rglob("*")) == ["up", "up.zip"]  # no temp, no marker


@pytest.mark.server
def test_an_invalid_upload_is_refused_and_leaves_nothing(
    store: SnapshotStore, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("es_data", b"{not json\n")
    with pytest.raises(StoreError, match="is not a valid snapshot: metadata.json"):
        store.upload("bad", str(bad))
    with pytest.raises(StoreError, match="does not exist"):
        store.upload("bad", str(tmp_path / "missing.zip"))
    # not a zip at all: the message names the user's file, never the staged copy
    text = tmp_path / "notes.txt"
    text.write_text("not an archive")
    with pytest.raises(StoreError) as info:
        store.upload("bad", str(text))
    assert str(info.value).startswith(f"snapshot bad: {text} is not a valid snapshot: {text}: ")
    assert ".partial" not in str(info.value)
    assert store.list() == []
    assert list(store.root.iterdir()) == []


@pytest.mark.server
def test_download_is_exact_refuses_overwrite_and_fills_a_folder(
    store: SnapshotStore, sample_zip: Path, tmp_path: Path
) -> None:
    store.upload("s", str(sample_zip))
    dest = tmp_path / "out" / "copy.zip"
    transfer = store.download("s", str(dest))
    assert transfer.sha256 == sha256(dest) == sha256(store.path("s"))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    with pytest.raises(StoreError, match="already exists"):
        store.download("s", str(dest))
    dest.write_bytes(b"old")
    store.download("s", str(dest), overwrite=True)
    assert sha256(dest) == sha256(sample_zip)
    into_folder = store.download("s", str(tmp_path / "out"))
    assert into_folder.path == str(tmp_path / "out" / "s.zip")
    assert sorted(os.listdir(tmp_path / "out")) == ["copy.zip", "s.zip"]  # no temporary left


@pytest.mark.server
def test_mem_filesystem_round_trip(
    store: SnapshotStore, sample_zip: Path, mem: dict[str, bytes]
) -> None:
    data = sample_zip.read_bytes()
    with FileSystems.create("mem://in/snap.zip") as f:
        f.write(data)
    store.upload("m", "mem://in/snap.zip")
    assert store.path("m").read_bytes() == data
    assert store.require("m").status == "uploaded"

    transfer = store.download("m", "mem://out/m.zip")
    assert mem["mem://out/m.zip"] == data
    assert transfer.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(mem) == ["mem://in/snap.zip", "mem://out/m.zip"]  # temporary renamed away
    with pytest.raises(StoreError) as refused:
        store.download("m", "mem://out/m.zip")
    assert str(refused.value) == (
        "snapshot m: mem://out/m.zip already exists (use --force to replace it)"
    )
    mem["mem://out/m.zip"] = b"old"
    store.download("m", "mem://out/m.zip", overwrite=True)
    assert mem["mem://out/m.zip"] == data and len(mem) == 2
    with pytest.raises(StoreError, match="does not exist"):
        store.upload("m2", "mem://in/missing.zip")


# ---- the CLI walk-through on a loaded manager ---------------------------------------------------


def manager_keys(client: SearchClient) -> set[tuple[str, str, str]]:
    client.refresh()
    keys: set[tuple[str, str, str]] = set()
    for index in (STORAGE_INDEX, "cloudify_events", "logstash-*"):
        keys |= {(h["_index"], h["_type"], h["_id"]) for h in client.scan(index)}
    return keys


def file_tree(fs_root: Path) -> set[str]:
    return {
        str(p.relative_to(fs_root))
        for folder in FILE_FOLDERS
        for p in (fs_root / folder).rglob("*")
        if p.is_file()
    }


@pytest.mark.server
@pytest.mark.es8
def test_cli_walk_through_create_list_download_delete_upload_restore(
    search: SearchClient, tmp_path: Path
) -> None:
    spec = ManagerSpec(
        version=Version.V3_3,
        blueprints=1,
        deployments_per_blueprint=2,
        events=4,
        logs=4,
        keys_dir=str(tmp_path / "keys"),
    )
    fs_root = tmp_path / "fs"
    load_manager(spec, search, fs_root)
    store = SnapshotStore(search, fs_root)
    where = ["--es", search.url, "--fs-root", str(fs_root)]
    sample_snapshots = [
        SnapshotRecord.from_doc(h["_source"]).to_doc()
        for h in manager_hits(spec)
        if h["_type"] == "snapshot"
    ]
    files_before = file_tree(fs_root)

    # create --snapshot-id: the archive in the store, the document `created`
    created = runner.invoke(app, ["create", *where, "--snapshot-id", "s1"])
    assert created.exit_code == 0, created.output
    s1 = store.require("s1")
    assert s1.status == "created" and store.path("s1").is_file()

    # list: exact rows, oldest first
    listed = runner.invoke(app, ["snapshots", "list", *where, "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == [*sample_snapshots, s1.to_doc()]
    table = runner.invoke(app, ["snapshots", "list", *where])
    lines = table.output.splitlines()
    assert lines[0].split() == ["id", "created_at", "status", "error"]
    assert lines[-2].split() == ["s1", *s1.created_at.split(), "created"]
    assert lines[-1] == "3 snapshots"

    # download: the same bytes
    out = tmp_path / "out.zip"
    downloaded = runner.invoke(app, ["snapshots", "download", "s1", "-o", str(out), *where])
    assert downloaded.exit_code == 0, downloaded.output
    assert sha256(out) == sha256(store.path("s1"))
    assert f"sha256 {sha256(out)}" in downloaded.output

    # delete: document and folder gone
    deleted = runner.invoke(app, ["snapshots", "delete", "s1", *where])
    assert deleted.exit_code == 0, deleted.output
    assert deleted.output == "deleted snapshot s1 (status created)\n"
    assert store.get("s1") is None and not store.folder("s1").exists()
    assert [r.id for r in store.list()] == [r["id"] for r in sample_snapshots]

    # upload: validated, stored, `uploaded`; a second upload of the id is refused
    uploaded = runner.invoke(app, ["snapshots", "upload", str(out), "-s", "s2", *where])
    assert uploaded.exit_code == 0, uploaded.output
    s2 = store.require("s2")
    assert (s2.status, s2.error) == ("uploaded", "")
    assert sha256(store.path("s2")) == sha256(out)
    again = runner.invoke(app, ["snapshots", "upload", str(out), "-s", "s2", *where])
    assert again.exit_code == 1
    assert again.output == "error: snapshot s2: a snapshot with this id already exists\n"

    # clear, then restore by id into the same manager: every snapshot document is back
    cleared = runner.invoke(app, ["clear", *where, "--yes"])
    assert cleared.exit_code == 0, cleared.output
    kept = manager_keys(search)
    assert {t for _, t, _ in kept} == {"provider_context", "snapshot"}
    assert file_tree(fs_root) == set()
    restored = runner.invoke(
        app,
        [
            "snapshots",
            "restore",
            "s2",
            *where,
            "--credentials-dir",
            str(tmp_path / "credentials"),
            "--target-version",
            "3.3",
        ],
    )
    assert restored.exit_code == 0, restored.output
    expected = {(h["_index"], h["_type"], h["_id"]) for h in snapshot_hits(spec)}
    assert manager_keys(search) == expected | kept
    assert file_tree(fs_root) == files_before

    # a failed snapshot: listed, not restorable nor downloadable, deletable
    store.mark("s2", Status.FAILED, "boom")
    refused = runner.invoke(
        app,
        ["snapshots", "restore", "s2", *where, "--credentials-dir", str(tmp_path / "c2")],
    )
    assert refused.exit_code == 1
    assert refused.output == (
        "error: snapshot s2: status is failed (boom): a failed snapshot cannot be restored; "
        "delete it\n"
    )
    refused = runner.invoke(
        app, ["snapshots", "download", "s2", "-o", str(tmp_path / "x.zip"), *where]
    )
    assert refused.exit_code == 1 and "cannot be downloaded" in refused.output
    assert runner.invoke(app, ["snapshots", "delete", "s2", *where]).exit_code == 0
    assert store.get("s2") is None


@pytest.mark.server
def test_cli_reaps_a_creating_snapshot_whose_creator_died(
    target: SearchClient, tmp_path: Path
) -> None:
    store = SnapshotStore(target, tmp_path / "fs")
    put_record(target, SnapshotRecord("crashed", now_stamp(), "creating"))
    me = CreatorMarker.current()
    pid = dead_pid()
    store._write_marker("crashed", CreatorMarker(me.host, pid, me.started))

    listed = runner.invoke(
        app, ["snapshots", "list", "--es", target.url, "--fs-root", str(tmp_path / "fs"), "--json"]
    )

    assert listed.exit_code == 0, listed.output
    reason = f"creation interrupted: its creator (pid {pid} on {me.host}) is gone"
    assert f"warning: snapshot crashed marked failed: {reason}" in listed.output
    rows = json.loads(listed.output[listed.output.index("[") :])
    assert [(r["id"], r["status"], r["error"]) for r in rows] == [("crashed", "failed", reason)]
