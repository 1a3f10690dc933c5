"""`validate`: check a snapshot archive without changing anything.

Checks (issue #2): the zip is readable to the end (CRCs); no entry escapes the archive root
(absolute paths, `..`, symlinks, backslashes) and every credentials entry is
`snapshot-credentials/<name>/agent_key`; no member is larger, or more compressed, than
`ArchiveLimits` allow, nor larger than manifest.json says (checked from the zip's directory
before any member is read: a zip bomb is refused without being inflated); metadata.json is present, a JSON object, and its
`snapshot_version` is known; every es_data line parses and has `_index`, `_type`, `_id`,
`_source`; no (index, type, id) appears twice; manifest sizes and sha256 match when a manifest
is present; agents.json, when present, is a JSON object.

Memory: es_data is streamed; duplicate detection keeps 8-byte key digests in bucket files on
disk and checks one bucket at a time (numpy sort), so peak memory stays flat as documents grow.
Only digests that collide are looked up again, in a second pass, to name the duplicated keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.archive import (
    AGENTS,
    CREDENTIALS_PREFIX,
    ES_DATA,
    MANIFEST,
    METADATA,
    ArchiveLimits,
    EsDataLine,
    SnapshotReader,
    buffered_lines,
    parse_line,
    size_problems,
    unsafe_member_reason,
)
from core.digests import repeated
from core.errors import CorruptArchive, DamagedMember, UnsupportedVersion
from core.model import parse_version
from core.text import plural

__all__ = [
    "Problem",
    "ArchiveLimits",
    "validate_archive",
    "limit_problems",
    "refuse",
    "MAX_PROBLEMS",
]

MAX_PROBLEMS = 1000
_BUCKETS = 64


@dataclass(frozen=True)
class Problem:
    """One reason an archive is invalid: where (member, line) and why."""

    member: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.member}{f':{self.line}' if self.line else ''}: {self.reason}"

_MiB, _GiB = 2**20, 2**30
_JSON_MEMBERS = (METADATA, MANIFEST, AGENTS, "manager.json")


def refuse(problems: Sequence[Problem], archive: str | Path) -> None:
    """Raise CorruptArchive for the first of `problems` (saying how many more there are), the
    archive named once; nothing when there are none. How a job turns validation into its error."""
    if not problems:
        return
    first = problems[0]
    more = (
        f" (and {plural(len(problems) - 1, 'more problem')}; see `cfysnap validate`)"
        if len(problems) > 1
        else ""
    )
    # a problem with the whole file is already named by its path: don't name it twice
    named = "" if first.member == str(archive) else str(archive)
    raise CorruptArchive(first.member, first.line, first.reason + more, named)


_key_hash = hash
"""A document key's 64-bit digest for the duplicate search: Python's own `hash` of the
(index, type, id) tuple (SipHash of each string, ~10x faster than blake2b). It differs from one
process to the next, which is fine: both passes run in this process, and a digest seen twice
only makes `_name_duplicates` compare the keys themselves (a collision is never reported)."""


class _HashingReader(io.RawIOBase):
    """A member's stream that records the size and sha256 of what is read through it (a block
    at a time, not a line at a time)."""

    def __init__(self, raw: Any) -> None:
        self._raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.sha.update(memoryview(buffer)[:n])
            self.size += n
        return n


class _DuplicateFinder:
    """Spill key digests to bucket files; later report the digests seen more than once."""

    def __init__(self, workdir: Path) -> None:
        self._files = [open(workdir / f"b{i}", "wb") for i in range(_BUCKETS)]  # noqa: SIM115
        self._pending: list[list[int]] = [[] for _ in range(_BUCKETS)]

    def add(self, digest: int) -> None:
        bucket = self._pending[digest % _BUCKETS]
        bucket.append(digest)
        if len(bucket) >= 4096:
            self._flush(digest % _BUCKETS)

    def _flush(self, i: int) -> None:
        if self._pending[i]:
            self._files[i].write(np.array(self._pending[i], dtype=np.int64).tobytes())
            self._pending[i] = []

    def repeated(self) -> set[int]:
        found: set[int] = set()
        for i, f in enumerate(self._files):
            self._flush(i)
            f.close()
            found.update(int(d) for d in repeated(np.fromfile(f.name, dtype=np.int64)))
        return found


def validate_archive(
    path: str | Path,
    *,
    on_line: Callable[[int], None] | None = None,
    on_hit: Callable[[int, EsDataLine], None] | None = None,
    limits: ArchiveLimits | None = None,
) -> list[Problem]:
    """Every problem found in the archive at `path` (empty list: valid). Never raises for bad input.

    `on_line(n)` is called every 10,000 es_data lines (progress). `on_hit(lineno, line)` is called
    with every es_data line that parses (an `EsDataLine`: keys, and the source as bytes), so a caller can gather its own facts in the same pass
    (meaningful only when the result is empty). `limits`: `ArchiveLimits()` by default.
    """
    return list(_problems(Path(path), on_line, on_hit, limits or ArchiveLimits()))


def _problems(
    path: Path,
    on_line: Callable[[int], None] | None,
    on_hit: Callable[[int, EsDataLine], None] | None,
    limits: ArchiveLimits,
) -> Iterator[Problem]:
    try:
        snap = SnapshotReader(path)  # limits are reported as problems below
    except CorruptArchive as exc:
        yield Problem(str(path), None, exc.reason)
        return
    with snap:
        count = 0
        for problem in _check_archive(snap, on_line, on_hit, limits):
            count += 1
            if count > MAX_PROBLEMS:
                yield Problem(str(path), None, f"more than {MAX_PROBLEMS} problems; stopped listing")
                return
            yield problem


def _check_archive(
    snap: SnapshotReader,
    on_line: Callable[[int], None] | None,
    on_hit: Callable[[int, EsDataLine], None] | None = None,
    limits: ArchiveLimits = ArchiveLimits(),  # noqa: B008 - frozen, shared safely
) -> Iterator[Problem]:
    infos = snap.infos()
    seen_names: set[str] = set()
    for info in snap.entries():  # every entry: `infos()` keeps one per name, hiding repeats
        reason = unsafe_member_reason(info.filename, info)
        if reason:
            yield Problem(info.filename, None, reason)
        elif _bad_credentials_entry(info):
            yield Problem(info.filename, None, "not snapshot-credentials/<deployment>_<node>/agent_key")
        if info.filename in seen_names:
            yield Problem(info.filename, None, "entry appears twice in the archive")
        seen_names.add(info.filename)
    too_large = limit_problems(snap, limits)
    if too_large:
        yield from too_large
        return  # nothing else is read: a member past the limits is never inflated

    yield from _check_metadata(snap)
    manifest = _load_manifest(snap)
    if isinstance(manifest, Problem):
        yield manifest
        manifest = None
    if snap.has(AGENTS):
        try:
            for _ in snap.iter_agents(raw=True):  # streamed: memory is one deployment
                pass
        except CorruptArchive as exc:
            yield Problem(AGENTS, None, exc.reason)

    # stream every member once: CRC (zipfile checks it at EOF) and sha256 against the manifest
    digests: dict[str, tuple[int, str]] = {}
    for info in infos:
        if info.is_dir() or info.filename == MANIFEST or info.filename == ES_DATA:
            continue
        try:
            digests[info.filename] = _hash_member(snap, info)
        except CorruptArchive as exc:
            yield Problem(info.filename, None, exc.reason)

    if not snap.has(ES_DATA):
        yield Problem(ES_DATA, None, "es_data is missing")
    else:
        yield from _check_es_data(snap, digests, on_line, on_hit)

    if manifest is not None:
        yield from _check_manifest(manifest, digests, infos)


def _bad_credentials_entry(info: zipfile.ZipInfo) -> bool:
    """A file under snapshot-credentials/ that is not `<name>/agent_key` with `name` one plain
    path component: restore writes keys to `<credentials dir>/<name>/agent_key` (§6.4)."""
    if not info.filename.startswith(CREDENTIALS_PREFIX) or info.is_dir():
        return False
    parts = info.filename[len(CREDENTIALS_PREFIX) :].split("/")
    return len(parts) != 2 or parts[1] != "agent_key" or parts[0] in ("", ".", "..")


def limit_problems(snap: SnapshotReader, limits: ArchiveLimits) -> list[Problem]:
    """Members past `limits` (`size_problems`), or declaring another size than manifest.json
    says, from the zip's directory alone (only manifest.json is read, once its own size is
    checked). Fast whatever the members hold: a 3 GiB member of zeros is never inflated."""
    problems = [Problem(name, None, reason) for name, reason in size_problems(snap, limits)]
    if problems or not snap.has(MANIFEST):
        return problems
    manifest = _load_manifest(snap)
    if not isinstance(manifest, dict):
        return []  # reported by the full check
    for info in snap.entries():
        entry = manifest["members"].get(info.filename)
        listed = entry.get("size") if isinstance(entry, dict) else None
        if isinstance(listed, int) and not info.is_dir() and info.file_size != listed:
            problems.append(Problem(info.filename, None, f"the zip says {info.file_size:,} bytes, "
                                    f"manifest.json says {listed:,} bytes"))
    return problems


def _check_metadata(snap: SnapshotReader) -> Iterator[Problem]:
    try:
        meta = snap.metadata()
    except CorruptArchive as exc:
        yield Problem(METADATA, None, exc.reason)
        return
    try:
        parse_version(meta.get("snapshot_version"))
    except UnsupportedVersion as exc:
        yield Problem(METADATA, None, f"unsupported snapshot_version {exc.version} (known: 3.2, 3.3, 3.4.x)")
    if not isinstance(meta.get("has_cloudify_events", False), bool):
        yield Problem(METADATA, None, "has_cloudify_events is not a boolean")


def _load_manifest(snap: SnapshotReader) -> dict | Problem | None:
    if not snap.has(MANIFEST):
        return None
    try:
        manifest = snap.manifest()
    except CorruptArchive as exc:
        return Problem(MANIFEST, None, exc.reason)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("members"), dict):
        return Problem(MANIFEST, None, "manifest.json has no 'members' object")
    return manifest


def _hash_member(snap: SnapshotReader, info: zipfile.ZipInfo) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with snap.open(info.filename, raw=True) as f:  # as stored: no key needed
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _check_es_data(
    snap: SnapshotReader,
    digests: dict[str, tuple[int, str]],
    on_line: Callable[[int], None] | None,
    on_hit: Callable[[int, EsDataLine], None] | None = None,
) -> Iterator[Problem]:
    lines = 0
    with tempfile.TemporaryDirectory(prefix="cfysnap-validate-") as tmp:
        finder = _DuplicateFinder(Path(tmp))
        try:
            with snap.open(ES_DATA) as member:
                raw = _HashingReader(member)
                for lineno, line in enumerate(buffered_lines(raw), 1):  # type: ignore[arg-type]
                    lines = lineno
                    if on_line and lineno % 10_000 == 0:
                        on_line(lineno)
                    if not line.strip():
                        continue
                    try:
                        parsed = parse_line(line, lineno)
                    except CorruptArchive as exc:
                        yield Problem(ES_DATA, lineno, exc.reason)
                        continue
                    finder.add(_key_hash((parsed.index, parsed.type, parsed.id)))
                    if on_hit is not None:
                        on_hit(lineno, parsed)
        except DamagedMember as exc:
            reason = f"cannot be read to the end ({exc.cause})"
            yield Problem(ES_DATA, lines + 1 if lines else None, reason)
            return
        except CorruptArchive as exc:  # a line over the size cap
            yield Problem(exc.member, exc.line, exc.reason)
            return
        digests[ES_DATA] = (raw.size, raw.sha.hexdigest())
        duplicated = finder.repeated()
    if duplicated:
        yield from _name_duplicates(snap, duplicated)


def _name_duplicates(snap: SnapshotReader, duplicated: set[int]) -> Iterator[Problem]:
    first_line: dict[tuple[str, str, str], int] = {}
    for lineno, line in snap.iter_lines():
        try:
            hit = json.loads(line)
            key = (hit["_index"], hit["_type"], hit["_id"])
        except (ValueError, KeyError, TypeError):
            continue
        if _key_hash(key) not in duplicated:
            continue
        if key in first_line:
            yield Problem(
                ES_DATA, lineno, f"duplicate document {key[0]}/{key[1]}/{key[2]} (first at line {first_line[key]})"
            )
        else:
            first_line[key] = lineno


def _check_manifest(
    manifest: dict, digests: dict[str, tuple[int, str]], infos: list[zipfile.ZipInfo]
) -> Iterator[Problem]:
    listed = manifest["members"]
    for name, entry in listed.items():
        if name.endswith("/"):
            continue
        if name not in digests:
            if not any(i.filename == name for i in infos):
                yield Problem(name, None, "listed in manifest.json but missing from the archive")
            continue
        size, digest = digests[name]
        if not isinstance(entry, dict) or entry.get("sha256") != digest:
            yield Problem(name, None, "sha256 does not match manifest.json")
        elif entry.get("size") != size:
            yield Problem(name, None, "size does not match manifest.json")
    for name in digests:
        if name not in listed:
            yield Problem(name, None, "not listed in manifest.json")
