"""The manager's snapshot store: `snapshot` documents plus `<fs-root>/snapshots/<id>/<id>.zip`.

A stored snapshot is two things (spec §1, §5, §8.1): the document `cloudify_storage/snapshot/<id>`
`{id, created_at, status, error}` and the archive `<fs_root>/snapshots/<id>/<id>.zip`. This module
is the one place that reads and changes them; `create`, `snapshots …` and `restore` by id go
through `SnapshotStore`.

Status lifecycle (§8.1, `END_STATES` = created, failed, uploaded)::

    begin_create ──> creating ──mark──> created | failed
    upload ───────> creating ──(validated, renamed into place)──> uploaded
    reap_stale: creating whose creator is gone ──> failed

Contracts:
- An id is refused when its document exists (`begin_create` writes with op_type `create`, so two
  racing creators cannot both win).
- Only `created` and `uploaded` snapshots can be downloaded or restored; `failed` ones can be
  listed and deleted; `creating` ones only listed (until their creator finishes or is reaped).
- A `creating` snapshot records its creator in `<fs_root>/snapshots/<id>/.creating`
  (host, pid, process start time). `reap_stale()` marks `failed` every `creating` snapshot whose
  marker names a process of this host that is gone (or a different process with the same pid),
  or that has no marker and is older than `stale_after`. Markers of other hosts are left alone.
- Uploads and downloads stream through Beam's `FileSystems` (local paths, `gs://`, `s3://`, … as
  installed) in 1 MiB chunks, never a whole archive in memory, and are atomic: a temporary name
  beside the target, renamed into place (`FileSystems.rename`; on object stores a copy + delete).
- Every path under the store is built with `safe_target_path`; ids that are not a plain file name
  are refused.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO

import psutil

from core.archive import COPY_CHUNK, safe_target_path
from core.errors import CfysnapError, ManagerVersionUnknown, StoreError
from core.manager import read_version
from core.model import STORAGE_INDEX, Doc, Version
from core.search import SearchClient

__all__ = [
    "SNAPSHOTS_FOLDER",
    "SNAPSHOT_TYPE",
    "MARKER",
    "Status",
    "SnapshotRecord",
    "CreatorMarker",
    "Transfer",
    "SnapshotStore",
    "check_snapshot_id",
    "now_stamp",
]

_LOG = logging.getLogger("cfysnap")

SNAPSHOTS_FOLDER = "snapshots"
SNAPSHOT_TYPE = "snapshot"
MARKER = ".creating"
DEFAULT_STALE_AFTER = timedelta(minutes=30)
_STAMP = "%Y-%m-%d %H:%M:%S.%f"
_START_TIME_TOLERANCE = 1.0  # seconds: psutil create_time is rounded differently across calls
_MAX_ERROR = 2000


class Status(StrEnum):
    """A snapshot document's `status` (§5)."""

    CREATING = "creating"
    CREATED = "created"
    FAILED = "failed"
    UPLOADED = "uploaded"


RESTORABLE = (Status.CREATED, Status.UPLOADED)


def now_stamp(now: datetime | None = None) -> str:
    """`created_at` as the REST service writes it (`str(datetime)`), in UTC."""
    return (now or datetime.now(UTC)).strftime(_STAMP)


def _parse_stamp(text: str) -> datetime | None:
    for fmt in (_STAMP, "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text.rstrip("Z"), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def check_snapshot_id(snapshot_id: str) -> str:
    """Return `snapshot_id` if it can name a folder and a file; else StoreError.

    Refused: empty, longer than 200 characters, starting with "." (hidden names are the store's
    temporary files and markers), or holding "/", "\\", NUL or other control characters.
    """
    reason = None
    if not isinstance(snapshot_id, str) or not snapshot_id:
        reason = "a snapshot id must be a non-empty string"
    elif len(snapshot_id) > 200:
        reason = "a snapshot id is at most 200 characters"
    elif snapshot_id.startswith("."):
        reason = "a snapshot id may not start with '.'"
    elif any(c in snapshot_id for c in "/\\") or any(ord(c) < 32 for c in snapshot_id):
        reason = "a snapshot id may not contain '/', '\\' or control characters"
    if reason:
        raise StoreError(str(snapshot_id)[:80], reason)
    return snapshot_id


@dataclass(frozen=True)
class SnapshotRecord:
    """A `snapshot` document (§5)."""

    id: str
    created_at: str
    status: str
    error: str = ""

    @classmethod
    def from_doc(cls, doc: Doc, doc_id: str | None = None) -> SnapshotRecord:
        return cls(
            id=str(doc.get("id") or doc_id or ""),
            created_at=str(doc.get("created_at") or ""),
            status=str(doc.get("status") or ""),
            error=str(doc.get("error") or ""),
        )

    def to_doc(self) -> Doc:
        return asdict(self)

    @property
    def restorable(self) -> bool:
        return self.status in RESTORABLE


@dataclass(frozen=True)
class CreatorMarker:
    """Who is creating a snapshot: `<fs_root>/snapshots/<id>/.creating`."""

    host: str
    pid: int
    started: float
    """The process's start time (psutil `create_time`), so a recycled pid is not mistaken."""

    @classmethod
    def current(cls) -> CreatorMarker:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time())

    def alive(self) -> bool | None:
        """True/False for a process of this host; None when it belongs to another host."""
        if self.host != socket.gethostname():
            return None
        try:
            started = psutil.Process(self.pid).create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.Error:
            return True  # exists but cannot be inspected: assume it is the creator
        return abs(started - self.started) <= _START_TIME_TOLERANCE


@dataclass(frozen=True)
class Transfer:
    """What an upload or download moved: where, how many bytes, and their sha256."""

    snapshot_id: str
    path: str
    size: int
    sha256: str


def archive_path(fs_root: Path | str, snapshot_id: str) -> Path:
    """`<fs_root>/snapshots/<id>/<id>.zip` (§1), refusing ids that would escape the store."""
    check_snapshot_id(snapshot_id)
    return safe_target_path(Path(fs_root), f"{SNAPSHOTS_FOLDER}/{snapshot_id}/{snapshot_id}.zip")


class SnapshotStore:
    """Snapshot documents in `client`'s server plus archives under `fs_root/snapshots/`.

    `stale_after` is how old a `creating` snapshot without a creator marker must be before
    `reap_stale` marks it failed. Methods that change documents refresh the index, so a
    following `list()` sees the change.
    """

    def __init__(
        self,
        client: SearchClient,
        fs_root: Path | str,
        *,
        stale_after: timedelta = DEFAULT_STALE_AFTER,
    ) -> None:
        self.client = client
        self.fs_root = Path(fs_root)
        self.stale_after = stale_after

    # ---- paths -------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """`<fs_root>/snapshots`."""
        return self.fs_root / SNAPSHOTS_FOLDER

    def folder(self, snapshot_id: str) -> Path:
        """`<fs_root>/snapshots/<id>` (refusing unsafe ids)."""
        check_snapshot_id(snapshot_id)
        return safe_target_path(self.fs_root, f"{SNAPSHOTS_FOLDER}/{snapshot_id}")

    def path(self, snapshot_id: str) -> Path:
        """`<fs_root>/snapshots/<id>/<id>.zip` (§1)."""
        return archive_path(self.fs_root, snapshot_id)

    def marker_path(self, snapshot_id: str) -> Path:
        return self.folder(snapshot_id) / MARKER

    # ---- documents ---------------------------------------------------------------------------

    def get(self, snapshot_id: str) -> SnapshotRecord | None:
        check_snapshot_id(snapshot_id)
        doc = self.client.get(STORAGE_INDEX, SNAPSHOT_TYPE, snapshot_id)
        return None if doc is None else SnapshotRecord.from_doc(doc, snapshot_id)

    def require(self, snapshot_id: str) -> SnapshotRecord:
        record = self.get(snapshot_id)
        if record is None:
            raise StoreError(snapshot_id, "no such snapshot")
        return record

    def list(self) -> list[SnapshotRecord]:
        """Every snapshot document, oldest first (then by id)."""
        records = [
            SnapshotRecord.from_doc(hit["_source"], hit["_id"])
            for hit in self.client.scan(STORAGE_INDEX, [SNAPSHOT_TYPE])
        ]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def _write(self, record: SnapshotRecord, *, create: bool) -> None:
        hit = {
            "_index": STORAGE_INDEX,
            "_type": SNAPSHOT_TYPE,
            "_id": record.id,
            "_source": record.to_doc(),
        }
        result = self.client.bulk([hit], op_type="create" if create else "index", refresh=True)
        if result.failed:
            item = result.failed[0]
            if create and item.status == 409:
                raise StoreError(record.id, "a snapshot with this id already exists")
            result.raise_on_failure()

    def require_store(self, snapshot_id: str, version: Version | None = None) -> None:
        """StoreError on a manager that has no snapshot store: a 3.2 manager (the store came
        with 3.3), or one whose data points at different versions. `version`: the manager's, if
        known; else read from its data (`core.manager`). A manager whose data tells no
        version at all (a freshly installed one) is not refused."""
        if version is None:
            try:
                version = read_version(self.client).version
            except ManagerVersionUnknown as exc:
                if not exc.facts:
                    return
                raise StoreError(snapshot_id, str(exc)) from None
        if version == Version.V3_2:
            raise StoreError(
                snapshot_id,
                "3.2 managers have no snapshot store (it came with 3.3); use create --output",
            )

    def _require_free(self, snapshot_id: str) -> None:
        """StoreError unless `snapshot_id` is valid, has no document and no archive left over."""
        check_snapshot_id(snapshot_id)
        if self.get(snapshot_id) is not None:
            raise StoreError(snapshot_id, "a snapshot with this id already exists")
        if self.path(snapshot_id).exists():
            raise StoreError(
                snapshot_id,
                f"{self.path(snapshot_id)} exists without a snapshot record; delete the id first",
            )

    def begin_create(self, snapshot_id: str) -> SnapshotRecord:
        """Record a new snapshot as `creating` and mark this process as its creator.

        Refuses (StoreError) an id whose document exists, or whose folder already holds an
        archive (left by a deleted record: `delete` the id first).
        """
        self._require_free(snapshot_id)
        record = SnapshotRecord(snapshot_id, now_stamp(), Status.CREATING.value, "")
        self._write(record, create=True)
        try:
            self.claim(snapshot_id)
        except BaseException:
            self.client.delete(STORAGE_INDEX, SNAPSHOT_TYPE, snapshot_id, refresh=True)
            raise
        return record

    def mark(self, snapshot_id: str, status: Status | str, error: str = "") -> SnapshotRecord:
        """Set a snapshot's status (and error); an end state removes the creator marker."""
        status = Status(status)
        current = self.require(snapshot_id)
        record = SnapshotRecord(current.id, current.created_at, status.value, error[:_MAX_ERROR])
        self._write(record, create=False)
        if status is not Status.CREATING:
            self.marker_path(snapshot_id).unlink(missing_ok=True)
        return record

    @contextlib.contextmanager
    def creating(self, snapshot_id: str) -> Iterator[Path]:
        """`with store.creating(id) as archive_path:` write the archive there.

        `begin_create` on entry; on a clean exit the archive must exist and the status becomes
        `created`; on any exception (including Ctrl-C) it becomes `failed` with the error's
        one-line message, and the exception propagates.
        """
        self.begin_create(snapshot_id)
        archive = self.path(snapshot_id)
        try:
            yield archive
            if not archive.is_file():
                raise StoreError(snapshot_id, f"the job finished without writing {archive}")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.mark(snapshot_id, Status.FAILED, _error_text(exc))
                self._remove_partials(snapshot_id)
            raise
        self.mark(snapshot_id, Status.CREATED)

    # ---- creator markers and stale snapshots ---------------------------------------------------

    def claim(self, snapshot_id: str) -> CreatorMarker:
        """Record this process as the creator of a `creating` snapshot (the `.creating` marker,
        mode 0600). `begin_create` does this; a job that writes the `creating` document itself
        calls it right after."""
        marker = CreatorMarker.current()
        self._write_marker(snapshot_id, marker)
        return marker

    def _write_marker(self, snapshot_id: str, marker: CreatorMarker) -> None:
        path = self.marker_path(snapshot_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(marker), f)

    def read_marker(self, snapshot_id: str) -> CreatorMarker | None:
        try:
            data = json.loads(self.marker_path(snapshot_id).read_text())
            return CreatorMarker(str(data["host"]), int(data["pid"]), float(data["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def stale_reason(self, record: SnapshotRecord, now: datetime | None = None) -> str | None:
        """Why a `creating` snapshot is stale, or None while its creator may still be at work."""
        if record.status != Status.CREATING:
            return None
        marker = self.read_marker(record.id)
        if marker is not None:
            alive = marker.alive()
            if alive is False:
                return (
                    f"creation interrupted: its creator (pid {marker.pid} on {marker.host}) is gone"
                )
            return None
        created = _parse_stamp(record.created_at)
        age = (now or datetime.now(UTC)) - created if created else None
        if age is None or age > self.stale_after:
            return (
                "creation interrupted: no creator recorded and still creating after "
                f"{int(self.stale_after.total_seconds() // 60)} minutes"
            )
        return None

    def reap_stale(self, now: datetime | None = None) -> builtins.list[SnapshotRecord]:
        """Mark `failed` every stale `creating` snapshot (see the module docstring); remove its
        marker and any partial archive of the crashed creator. Returns the records it changed."""
        reaped = []
        for record in self.list():
            reason = self.stale_reason(record, now)
            if reason is None:
                continue
            _LOG.warning("snapshot %s: %s; marking it failed", record.id, reason)
            reaped.append(self.mark(record.id, Status.FAILED, reason))
            self._remove_partials(record.id)
        return reaped

    def _remove_partials(self, snapshot_id: str) -> None:
        folder = self.folder(snapshot_id)
        if not folder.is_dir() or folder.is_symlink():
            return
        for child in folder.iterdir():
            if not child.name.startswith(".") or child.name == MARKER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)  # a crashed creator's staging folder
            else:
                child.unlink(missing_ok=True)

    # ---- archives ----------------------------------------------------------------------------

    def archive_for_restore(self, snapshot_id: str) -> Path:
        """The archive of a `created` or `uploaded` snapshot; StoreError otherwise."""
        return self._usable(snapshot_id, "restored")

    def _usable(self, snapshot_id: str, verb: str) -> Path:
        record = self.require(snapshot_id)
        if record.status == Status.FAILED:
            why = f" ({record.error})" if record.error else ""
            raise StoreError(
                snapshot_id,
                f"status is failed{why}: a failed snapshot cannot be {verb}; delete it",
            )
        if record.status == Status.CREATING:
            raise StoreError(snapshot_id, f"is still being created and cannot be {verb} yet")
        if not record.restorable:
            raise StoreError(snapshot_id, f"unknown status {record.status!r}; cannot be {verb}")
        archive = self.path(snapshot_id)
        if not archive.is_file():
            raise StoreError(snapshot_id, f"status is {record.status} but {archive} is missing")
        return archive

    def download(self, snapshot_id: str, dest: str, *, overwrite: bool = False) -> Transfer:
        """Copy a `created`/`uploaded` archive to `dest` (a local path or any FileSystems URL;
        an existing local folder receives `<id>.zip`). Streams; atomic: temporary name, then
        rename. Refuses an existing `dest` unless `overwrite`."""
        archive = self._usable(snapshot_id, "downloaded")
        if "://" not in dest and Path(dest).is_dir():
            dest = str(Path(dest) / f"{snapshot_id}.zip")
        with archive.open("rb") as source:
            size, digest = _copy_to(source, dest, overwrite=overwrite, snapshot_id=snapshot_id)
        return Transfer(snapshot_id, dest, size, digest)

    def upload(self, snapshot_id: str, source: str) -> Transfer:
        """Store the archive at `source` (local path or FileSystems URL) as snapshot `snapshot_id`
        with status `uploaded`.

        Refuses an existing id, and a 3.2 manager (`require_store`), before copying anything. The archive is streamed to a hidden file
        in the store, checked with `core.validate` (an invalid archive is refused and
        leaves nothing behind), recorded `creating` (so a crash from here on is reaped), renamed
        into place and marked `uploaded`.
        """
        from core.validate import validate_archive

        self._require_free(snapshot_id)
        self.require_store(snapshot_id)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".upload-{snapshot_id}.{uuid.uuid4().hex[:8]}.partial"
        try:
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with _open_source(snapshot_id, source) as src, os.fdopen(fd, "wb") as dst:
                size, digest = _copy_stream(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            problems = validate_archive(staging)
            if problems:
                # a problem of the whole file names the user's file, not the staged copy
                shown = "; ".join(str(p).replace(str(staging), str(source)) for p in problems[:3])
                more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
                raise StoreError(snapshot_id, f"{source} is not a valid snapshot: {shown}{more}")
            self.begin_create(snapshot_id)
            try:
                os.replace(staging, self.path(snapshot_id))
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    self.mark(snapshot_id, Status.FAILED, _error_text(exc))
                raise
            self.mark(snapshot_id, Status.UPLOADED)
        finally:
            staging.unlink(missing_ok=True)
        return Transfer(snapshot_id, str(self.path(snapshot_id)), size, digest)

    def delete(self, snapshot_id: str) -> SnapshotRecord | None:
        """Remove a snapshot's folder, then its document. Works for any status but `creating`
        with a live creator; also removes a folder left without a document. Returns the
        deleted record (None if only a folder was there)."""
        record = self.get(snapshot_id)
        folder = self.folder(snapshot_id)
        present = folder.exists() or folder.is_symlink()
        if record is None and not present:
            raise StoreError(snapshot_id, "no such snapshot")
        if (
            record is not None
            and self.stale_reason(record) is None
            and (record.status == Status.CREATING)
        ):
            raise StoreError(snapshot_id, "is still being created; wait for it to finish")
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif present:
            shutil.rmtree(folder)
        if record is not None:
            self.client.delete(STORAGE_INDEX, SNAPSHOT_TYPE, snapshot_id, refresh=True)
        return record


# ---- streaming copies through Beam's FileSystems ---------------------------------------------


def _copy_stream(source: IO[bytes], target: IO[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(COPY_CHUNK):
        target.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@contextlib.contextmanager
def _open_source(snapshot_id: str, source: str) -> Iterator[IO[bytes]]:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        exists = FileSystems.exists(source)
    except (ValueError, OSError) as exc:
        raise StoreError(snapshot_id, f"cannot read {source}: {_short(exc)}") from None
    if not exists:
        raise StoreError(snapshot_id, f"{source} does not exist")
    try:
        handle = FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as exc:  # noqa: BLE001 - any filesystem's error becomes one message
        raise StoreError(snapshot_id, f"cannot read {source}: {_short(exc)}") from None
    try:
        yield handle
    finally:
        handle.close()


def _copy_to(
    source: IO[bytes], dest: str, *, overwrite: bool, snapshot_id: str
) -> tuple[int, str]:
    """Stream `source` to `dest` via a temporary name beside it and a rename."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        if FileSystems.exists(dest) and not overwrite:
            raise StoreError(snapshot_id, f"{dest} already exists (use --force to replace it)")
        folder, name = FileSystems.split(dest)
        temp = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.partial")
    except CfysnapError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StoreError(snapshot_id, f"cannot write {dest}: {_short(exc)}") from None
    try:
        with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as target:
            if FileSystems.get_scheme(temp) is None:
                os.chmod(temp, 0o600)  # archives hold agent keys and broker credentials
            size, digest = _copy_stream(source, target)
        FileSystems.rename([temp], [dest])  # local: os.rename; object stores: copy + delete
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if FileSystems.exists(temp):
                FileSystems.delete([temp])
        if isinstance(exc, Exception) and not isinstance(exc, CfysnapError):
            raise StoreError(snapshot_id, f"cannot write {dest}: {_short(exc)}") from None
        raise
    return size, digest


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def _error_text(exc: BaseException) -> str:
    """The one-line error a failed snapshot records (typed errors never carry secrets)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, CfysnapError):
        return str(exc)[:_MAX_ERROR]
    return f"{type(exc).__name__}: {_short(exc)}"
