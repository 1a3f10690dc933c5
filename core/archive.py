"""Stream-read and stream-write Cloudify snapshot archives (spec §1–§4).

A snapshot is a zip with no top-level folder: `metadata.json`, `es_data` (one search hit per line),
`agents.json`, file-server folders, `snapshot-credentials/`, and optionally `influxdb_data`,
`manager.json` (3.2 tool) and cfysnap's own `manifest.json` (per member size and sha256, document
counts per (index, type), the cfysnap version: an extra member real managers ignore).

Contracts:
- Reading never holds a member in memory: `iter_hits()` yields one parsed line at a time.
- Writing goes to a hidden temporary file (mode 0600) beside the target and is renamed into place only by
  `commit()` (or a clean exit of the `with` block); an error or `abort()` removes it, so a failed
  job never leaves a half-written archive at the output path.
- Every archive is written with ZIP64 allowed (3.4.2 behaviour), deflated.
- Member names are checked on both sides: absolute paths, `..`, backslashes, NUL and symlink
  entries are unsafe (`unsafe_member_reason`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from core.errors import CorruptArchive, UnsafePath
from core.model import FILE_FOLDERS, Hit, Version, parse_version

__all__ = [
    "METADATA",
    "ES_DATA",
    "AGENTS",
    "MANIFEST",
    "CREDENTIALS_PREFIX",
    "SnapshotReader",
    "SnapshotWriter",
    "parse_hit",
    "dump_hit",
    "unsafe_member_reason",
    "safe_target_path",
    "buffered_lines",
    "CFYSNAP_VERSION",
]

CFYSNAP_VERSION = "0.1.0"
METADATA = "metadata.json"
ES_DATA = "es_data"
AGENTS = "agents.json"
MANIFEST = "manifest.json"
CREDENTIALS_PREFIX = "snapshot-credentials/"
COPY_CHUNK = 1 << 20
DEFAULT_COMPRESSLEVEL = 1
"""zlib level 1: ~3× faster than the default 6 on es_data for ~10% more bytes."""


# ---------------------------------------------------------------------------------------------
# lines and names


def parse_hit(line: bytes | str, lineno: int | None = None) -> Hit:
    """One es_data line → a hit; CorruptArchive("es_data", lineno, reason) when it is not one."""
    try:
        hit = json.loads(line)
    except ValueError as exc:
        raise CorruptArchive(ES_DATA, lineno, f"not valid JSON ({exc.args[0].split(':')[0]})") from None
    if not isinstance(hit, dict):
        raise CorruptArchive(ES_DATA, lineno, "line is not a JSON object")
    for key in ("_index", "_type", "_id"):
        if not isinstance(hit.get(key), str) or not hit[key]:
            raise CorruptArchive(ES_DATA, lineno, f"missing or non-string {key}")
    if not isinstance(hit.get("_source"), dict):
        raise CorruptArchive(ES_DATA, lineno, "missing or non-object _source")
    return hit


def dump_hit(hit: Hit) -> str:
    """A hit as an es_data line (without the newline): `json.dumps` defaults, as 3.x wrote it."""
    return json.dumps(hit)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def unsafe_member_reason(name: str, info: zipfile.ZipInfo | None = None) -> str | None:
    """Why a member name could escape the extraction root, or None when it is safe."""
    if not name or "\x00" in name:
        return "empty or NUL in entry name"
    if "\\" in name:
        return "backslash in entry name"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path escapes the archive root"
    if ".." in PurePosixPath(name).parts:
        return "'..' escapes the archive root"
    if info is not None and _is_symlink(info):
        return "symbolic link entry"
    return None


def safe_target_path(root: Path, relative: str) -> Path:
    """`root / relative`, refusing anything that would land outside `root` (UnsafePath)."""
    reason = unsafe_member_reason(relative)
    if reason:
        raise UnsafePath(relative, reason)
    root_resolved = root.resolve()
    target = (root_resolved / relative).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise UnsafePath(relative)
    return target


# ---------------------------------------------------------------------------------------------
# reading


class SnapshotReader:
    """Read-only, streaming view of a snapshot archive.

    >>> with SnapshotReader("snap.zip") as snap:
    ...     for lineno, hit in snap.iter_hits(): ...
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise CorruptArchive(str(self.path), None, "no such file") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CorruptArchive(
                str(self.path), None, f"not a readable zip archive (truncated or corrupt: {exc})"
            ) from None
        self._entries = self._zip.infolist()
        self._infos = {i.filename: i for i in self._entries}

    # -- members ---------------------------------------------------------------------------
    def infos(self) -> list[zipfile.ZipInfo]:
        """One info per member name (a repeated name: its last entry, the one `open` reads)."""
        return list(self._infos.values())

    def entries(self) -> list[zipfile.ZipInfo]:
        """Every entry of the central directory in archive order, repeated names included."""
        return list(self._entries)

    def names(self) -> list[str]:
        return list(self._infos)

    def has(self, name: str) -> bool:
        return name in self._infos

    def file_names(self) -> list[str]:
        """File entries (no directory entries), in archive order."""
        return [n for n, i in self._infos.items() if not i.is_dir()]


    def file_children(self) -> dict[str, list[str]]:
        """`<folder>/<child>` → its member names, for the file-server folders (§1)."""
        children: dict[str, list[str]] = {}
        for name in self.file_names():
            parts = name.split("/")
            if parts[0] in FILE_FOLDERS and len(parts) >= 2 and parts[1]:
                children.setdefault(f"{parts[0]}/{parts[1]}", []).append(name)
        return dict(sorted(children.items()))

    def key_names(self) -> list[str]:
        """`<deployment>_<node>` of every `snapshot-credentials/<name>/agent_key` member."""
        names = []
        for name in self.file_names():
            if name.startswith(CREDENTIALS_PREFIX) and name.endswith("/agent_key"):
                middle = name[len(CREDENTIALS_PREFIX) : -len("/agent_key")]
                if middle and "/" not in middle:
                    names.append(middle)
        return sorted(names)
    def open(self, name: str) -> IO[bytes]:
        if name not in self._infos:
            raise CorruptArchive(name, None, "member missing from archive", str(self.path))
        return self._zip.open(self._infos[name])

    def read_json(self, name: str) -> Any:
        with self.open(name) as f:
            data = _read_member(f, name)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise CorruptArchive(name, None, f"not valid JSON ({exc})") from None

    # -- well-known members ----------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        if not self.has(METADATA):
            raise CorruptArchive(METADATA, None, "metadata.json is missing")
        meta = self.read_json(METADATA)
        if not isinstance(meta, dict):
            raise CorruptArchive(METADATA, None, "metadata.json is not a JSON object")
        if "snapshot_version" not in meta:
            raise CorruptArchive(METADATA, None, "snapshot_version is missing")
        return meta

    @property
    def version(self) -> Version:
        return parse_version(self.metadata()["snapshot_version"])

    def agents(self) -> dict[str, Any]:
        """agents.json; `{}` when absent (a 3.2 tool archive before its driver appended it)."""
        if not self.has(AGENTS):
            return {}
        agents = self.read_json(AGENTS)
        if not isinstance(agents, dict):
            raise CorruptArchive(AGENTS, None, "agents.json is not a JSON object")
        return agents

    def manifest(self) -> dict[str, Any] | None:
        return self.read_json(MANIFEST) if self.has(MANIFEST) else None

    def iter_lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number from 1, raw line without newline) of es_data; blank lines are skipped."""
        with self.open(ES_DATA) as raw:
            try:
                for lineno, line in enumerate(buffered_lines(raw), 1):
                    line = line.rstrip(b"\r\n")
                    if line.strip():
                        yield lineno, line
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                raise CorruptArchive(ES_DATA, None, f"cannot be read to the end ({exc})") from None

    def iter_hits(self) -> Iterator[tuple[int, Hit]]:
        for lineno, line in self.iter_lines():
            yield lineno, parse_hit(line, lineno)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def buffered_lines(raw: IO[bytes]) -> Iterator[bytes]:
    """The lines of a binary stream, newline included, read in 1 MiB blocks (zip members' own
    readline is slow)."""
    return iter(io.BufferedReader(raw, COPY_CHUNK))  # type: ignore[arg-type,type-var]


def _read_member(f: IO[bytes], name: str) -> bytes:
    try:
        return f.read()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CorruptArchive(name, None, f"cannot be read ({exc})") from None


# ---------------------------------------------------------------------------------------------
# writing


class _HashingWriter(io.RawIOBase):
    """Pass-through writer that records size and sha256 of what goes through it."""

    def __init__(self, target: IO[bytes], on_close: Any) -> None:
        self._target, self._on_close = target, on_close
        self._sha, self.size = hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        self._sha.update(data)
        self.size += len(data)
        self._target.write(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._target.close()
            self._on_close(self.size, self._sha.hexdigest())
        super().close()


class SnapshotWriter:
    """Write a snapshot archive member by member, atomically.

    >>> with SnapshotWriter("out.zip") as w:
    ...     w.write_json("metadata.json", {"has_cloudify_events": False, "snapshot_version": "3.3"})
    ...     with w.open_member("es_data") as f:
    ...         f.write(b"...\\n")
    ...     w.set_document_counts({("cloudify_storage", "node"): 1})

    Leaving the `with` block normally commits (manifest.json, close, rename); an exception aborts
    (the temporary file is removed and the target path is untouched). Members are streamed:
    memory does not depend on their size.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        manifest: bool = True,
        compresslevel: int = DEFAULT_COMPRESSLEVEL,
    ) -> None:
        self.path = Path(path)
        self.temp_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # owner-only from the first byte: archives hold broker passwords and agent keys
        fd = os.open(self.temp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "w+b")
        try:
            self._zip = zipfile.ZipFile(
                self._file,
                "w",
                zipfile.ZIP_DEFLATED,
                allowZip64=True,
                compresslevel=compresslevel,
            )
        except BaseException:
            self._file.close()
            self.temp_path.unlink(missing_ok=True)
            raise
        self._with_manifest = manifest
        self._compresslevel = compresslevel
        self._members: dict[str, dict[str, Any]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._open: str | None = None
        self._done = False

    # -- members ---------------------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        reason = unsafe_member_reason(name)
        if reason:
            raise UnsafePath(name, reason)
        if name in self._members or (name == MANIFEST and self._with_manifest):
            raise ValueError(f"member {name} written twice")
        if self._open is not None:
            raise RuntimeError(f"member {self._open} is still open")

    def open_member(self, name: str) -> IO[bytes]:
        """A binary stream for a new member; close it before opening the next."""
        self._check_name(name)
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info._compresslevel = self._compresslevel  # type: ignore[attr-defined]  # honoured by ZipFile.open
        # agent keys keep owner-only permissions inside the archive too
        mode = 0o600 if name.startswith(CREDENTIALS_PREFIX) else 0o644
        info.external_attr = (stat.S_IFREG | mode) << 16
        target = self._zip.open(info, "w", force_zip64=True)
        self._open = name

        def _closed(size: int, digest: str) -> None:
            self._members[name] = {"size": size, "sha256": digest}
            self._open = None

        return io.BufferedWriter(_HashingWriter(target, _closed), COPY_CHUNK)  # type: ignore[return-value]

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open_member(name) as f:
            f.write(data)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json.dumps(obj).encode())

    def write_stream(self, name: str, source: IO[bytes]) -> None:
        with self.open_member(name) as dst:
            shutil.copyfileobj(source, dst, COPY_CHUNK)

    def write_directory(self, name: str) -> None:
        """A directory entry (3.4.2 archives have them); `name` ends with '/'."""
        if not name.endswith("/"):
            name += "/"
        self._check_name(name)
        self._zip.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), b"")
        self._members[name] = {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}

    def write_hits(self, hits: Any, name: str = ES_DATA) -> int:
        """Write an es_data member from an iterable of hits, counting documents per (index, type)."""
        n = 0
        with self.open_member(name) as f:
            for hit in hits:
                f.write(dump_hit(hit).encode() + b"\n")
                self._counts[(hit["_index"], hit["_type"])] += 1
                n += 1
        return n

    def set_document_counts(self, counts: dict[tuple[str, str], int]) -> None:
        """Document counts per (index, type) for the manifest, when es_data was written raw."""
        self._counts = Counter(counts)

    @property
    @property
    def members(self) -> dict[str, dict[str, Any]]:
        return dict(self._members)

    # -- completion ------------------------------------------------------------------------
    def commit(self) -> Path:
        """Write the manifest, close, fsync and rename into place; on any failure the temporary
        file is removed (`abort`) and the error propagates."""
        if self._done:
            return self.path
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def _finish(self) -> None:
        if self._with_manifest:
            manifest = {
                "cfysnap_version": CFYSNAP_VERSION,
                "members": self._members,
                "documents": {f"{i}/{t}": c for (i, t), c in sorted(self._counts.items())},
            }
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            self._zip.writestr(zipfile.ZipInfo(MANIFEST, date_time=(1980, 1, 1, 0, 0, 0)), data)
        self._zip.close()  # a ZipFile given a file object leaves it open
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temp_path, self.path)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        for close in (self._zip.close, self._file.close):
            try:
                close()
            except Exception:  # noqa: BLE001 - the archive is being thrown away anyway
                pass
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
