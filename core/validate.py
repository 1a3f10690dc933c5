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
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from core.archive import (
    AGENTS,
    COPY_CHUNK,
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
from core.forked import Forked, fork_is_safe
from core.model import parse_version
from core.text import plural

__all__ = [
    "Problem",
    "ArchiveLimits",
    "validate_archive",
    "limit_problems",
    "refuse",
    "MAX_PROBLEMS",
    "SplitSink",
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
Python process to the next, which is fine: both passes run in this process, and a digest seen
twice only makes `_name_duplicates` compare the keys themselves (a collision is never
reported). A split pass's second part runs in a *forked* child, which keeps this process's hash
seed: its digests and this process's are comparable. (A child started afresh would not be, and
duplicates across the two parts would go unseen: `core.forked` only ever forks.)"""


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
            self._files[i].write(array("q", self._pending[i]).tobytes())  # int64, as numpy reads them
            self._pending[i] = []

    def close(self) -> None:
        for i, f in enumerate(self._files):
            self._flush(i)
            f.close()

    @staticmethod
    def repeated_in(folders: Sequence[Path]) -> set[int]:
        """The digests seen more than once by the (closed) finders of `folders` together."""
        import numpy as np  # here: a check's pass needs none of it (0.08 s of every job's start)

        found: set[int] = set()
        for i in range(_BUCKETS):
            digests = np.concatenate([np.fromfile(f / f"b{i}", dtype=np.int64) for f in folders])
            found.update(int(d) for d in repeated(digests))
        return found


def validate_archive(
    path: str | Path,
    *,
    on_line: Callable[[int], None] | None = None,
    on_hit: Callable[[int, EsDataLine], None] | None = None,
    limits: ArchiveLimits | None = None,
    split: bool = False,
    meanwhile: Callable[[], None] | None = None,
) -> list[Problem]:
    """Every problem found in the archive at `path` (empty list: valid). Never raises for bad input.

    `on_line(n)` is called every 10,000 es_data lines (progress). `on_hit(lineno, line)` is called
    with every es_data line that parses (an `EsDataLine`: keys, and the source as bytes), so a caller can gather its own facts in the same pass
    (meaningful only when the result is empty). `limits`: `ArchiveLimits()` by default.

    `split`: a large es_data may be checked in two parts side by side, the second in a forked
    child (`_split_point`: only without `on_line`, and where `on_hit`, if any, is a `SplitSink`);
    the result is the same. `meanwhile`: the caller's own work, done in this process once its
    part is checked, while the child finishes the other (called only when the check is split).
    """
    return list(
        _problems(Path(path), on_line, on_hit, limits or ArchiveLimits(), split, meanwhile)
    )


def _problems(
    path: Path,
    on_line: Callable[[int], None] | None,
    on_hit: Callable[[int, EsDataLine], None] | None,
    limits: ArchiveLimits,
    split: bool = False,
    meanwhile: Callable[[], None] | None = None,
) -> Iterator[Problem]:
    try:
        snap = SnapshotReader(path)  # limits are reported as problems below
    except CorruptArchive as exc:
        yield Problem(str(path), None, exc.reason)
        return
    with snap:
        count = 0
        for problem in _check_archive(snap, on_line, on_hit, limits, split, meanwhile):
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
    split: bool = False,
    meanwhile: Callable[[], None] | None = None,
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

    # a split pass's second part starts at once, in its child, beside the checks below
    with tempfile.TemporaryDirectory(prefix="cfysnap-validate-") as tmp:
        at = _split_point(snap, on_line, on_hit, meanwhile) if split else None
        second: _SecondPart | None = None
        try:
            second = _SecondPart(snap, at, on_hit, Path(tmp)) if at is not None else None
            yield from _check_members(snap, infos, on_line, on_hit, Path(tmp), second, meanwhile)
        finally:
            if second is not None:
                second.stop()


def _check_members(
    snap: SnapshotReader,
    infos: list[zipfile.ZipInfo],
    on_line: Callable[[int], None] | None,
    on_hit: Callable[[int, EsDataLine], None] | None,
    tmp: Path,
    second: _SecondPart | None,
    meanwhile: Callable[[], None] | None,
) -> Iterator[Problem]:
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
        yield from _check_es_data(snap, digests, on_line, on_hit, tmp, second, meanwhile)

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
    on_hit: Callable[[int, EsDataLine], None] | None,
    tmp: Path,
    second: _SecondPart | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> Iterator[Problem]:
    """Every line of es_data checked (and handed to `on_hit`), its size and sha256 into
    `digests` when it reads to the end; then the keys found twice, named. With `second` (a split
    pass, `_split_point`), the lines from its byte on are the child's: this part stops there."""
    first = _Part(folder=tmp)
    finder = _DuplicateFinder(tmp)
    try:
        yield from _first_part(snap, second.at if second else None, finder, on_line, on_hit, first)
    finally:
        finder.close()
    if first.stopped:
        return
    parts = [first]
    if second is not None:
        if meanwhile is not None:
            meanwhile()
        part = second.result()
        yield from part.problems
        if part.stopped:
            return
        if isinstance(on_hit, SplitSink) and part.sink is not None:
            on_hit.absorb(part.sink)
        parts.append(part)
    assert parts[-1].digest is not None
    digests[ES_DATA] = parts[-1].digest
    duplicated = _DuplicateFinder.repeated_in([p.folder for p in parts])
    if duplicated:
        yield from _name_duplicates(snap, duplicated)


# ------------------------------------------------------------------- es_data in two parts
SPLIT_BYTES = 16 * _MiB
"""es_data (inflated, as the zip's directory says) from this size on is checked in two parts
side by side, when the caller asks for it (`validate_archive(split=True)`, a restore's check)."""
MEANWHILE_BYTES = 50 * _MiB
"""A caller's `meanwhile` work counted in es_data bytes checked in the same time: a restore's
(Beam's import, numpy's among it, and the search transport's, 0.75 s alone) plus this process's
checks of the other members is about what 50 MiB take here. This process's share shares its
GIL with that import; the child's is alone on the other core. Measured at 100k documents, 74
MiB of es_data: with 32 MiB this process ended 0.3 s after the child (check 2.30-2.34 s into the
command); with 42 MiB 0.1 s after (2.19-2.22 s); with 46 MiB both together (2.22 s). The search
transport's import (0.12 s) moved here from before the check: 42 MiB then ended the split
2.12-2.15 s in, 50 MiB 2.05-2.14 s, 58 MiB 2.08-2.21 s. The child's inflate by ISA-L (0.09 s
less of its CPU) left this process last again: its share of 12 MiB (50) ended the check
1.92-2.03 s in, 9.3 MiB 1.89-2.03 s, 6 MiB (62) 1.84-1.88 s. Beam imported without the
connectors no job uses (`core.beam_import`, 0.15 s less) left the child last: 6 MiB ended the
check 1.76-1.84 s in, 9 MiB 1.73-1.79 s, 12 MiB (50) 1.69-1.75 s (4 runs each, alternating)."""


@runtime_checkable
class SplitSink(Protocol):
    """An `on_hit` that a two-part check can split: `later()` is an empty sink for the lines of
    the second part (fed in a forked child, then pickled back); `absorb(later)` adds what that
    one gathered, as if this sink had been handed every line, in order."""

    def __call__(self, lineno: int, line: EsDataLine) -> None: ...

    def later(self) -> SplitSink: ...

    def absorb(self, later: SplitSink) -> None: ...


@dataclass
class _Part:
    """What one part of the es_data pass found."""

    folder: Path
    """Where its duplicate finder's bucket files are."""
    problems: list[Problem] = field(default_factory=list)
    lines: int = 0
    """The last line it read."""
    stopped: bool = False
    """It could not go on (a damaged member, an over-long line): nothing after counts."""
    digest: tuple[int, str] | None = None
    """es_data's (size, sha256): only the part that reads to the end has it."""
    sink: SplitSink | None = None


class _SecondPart:
    """The lines from byte `at` of es_data on, checked in a forked child from now on (or here,
    when `result` finds it delivered nothing)."""

    def __init__(
        self,
        snap: SnapshotReader,
        at: int,
        on_hit: Callable[[int, EsDataLine], None] | None,
        folder: Path,
    ) -> None:
        sink = on_hit.later() if isinstance(on_hit, SplitSink) else None
        path, self.at, self._here = snap.path, at, folder / "here"
        self._run: Callable[[Path], _Part] = lambda into: _later_part(path, at, sink, into)
        self._job = Forked(self._run, folder / "later")

    def result(self) -> _Part:
        return self._job.result(lambda: self._run(self._here))

    def stop(self) -> None:
        self._job.stop()


def _split_point(
    snap: SnapshotReader,
    on_line: Callable[[int], None] | None,
    on_hit: Callable[[int, EsDataLine], None] | None,
    meanwhile: Callable[[], None] | None = None,
) -> int | None:
    """The byte of the inflated es_data at which its second part begins: the lines starting
    before it are this process's, the rest a forked child's (its own inflate of the member
    skips to the first line starting at or after it, counting lines as it goes, and reads on to
    the end: the sha256 and the zip's CRC). None (one pass) for es_data under SPLIT_BYTES, a
    caller that follows progress line by line or gathers facts it cannot split, or where no
    child can be forked (`core.forked.fork_is_safe`): a pass in two parts in one process only
    costs more. The parts together give what one pass gives: the same problems, in line order,
    and a pass that cannot go on stops where one pass would (a damaged stream is reported at
    about the line where it fails to inflate in either)."""
    if on_line is not None or (on_hit is not None and not isinstance(on_hit, SplitSink)):
        return None
    size = next((i.file_size for i in snap.infos() if i.filename == ES_DATA), 0)
    if size < SPLIT_BYTES or not fork_is_safe():
        return None
    # with the caller's `meanwhile` work to do too, this process takes that much fewer bytes
    # (down to a sixteenth), so that both end about together
    extra = MEANWHILE_BYTES if meanwhile is not None else 0
    return max((size - extra) // 2, size // 16)


def _first_part(
    snap: SnapshotReader,
    at: int | None,
    finder: _DuplicateFinder,
    on_line: Callable[[int], None] | None,
    on_hit: Callable[[int, EsDataLine], None] | None,
    out: _Part,
) -> Iterator[Problem]:
    """The lines that start before byte `at` (all of them when None), read from the start."""
    offset = 0  # where the next line starts

    def numbered(raw: IO[bytes]) -> Iterator[tuple[int, bytes]]:
        nonlocal offset
        for lineno, line in enumerate(buffered_lines(raw), 1):
            if at is not None and offset >= at:
                return
            offset += len(line)
            out.lines = lineno
            yield lineno, line

    try:
        with snap.open(ES_DATA) as member:
            raw = _HashingReader(member)
            yield from _checked(numbered(raw), finder, on_line, on_hit)  # type: ignore[arg-type]
    except CorruptArchive as exc:  # DamagedMember, or a line over the size cap
        if at is None or offset < at:  # else past this part: the second one reports it
            out.stopped = True
            yield _read_problem(exc, out.lines)
        return
    if at is None:
        out.digest = (raw.size, raw.sha.hexdigest())


def _later_part(path: Path, at: int, sink: SplitSink | None, folder: Path) -> _Part:
    """The lines that start at byte `at` or later (`_split_point`), in their own pass over the
    archive, opened again by path (the same file the caller has open: a restore reads it by path
    again afterwards anyway), its es_data inflated from the start, the lines before `at`
    skipped; the duplicate finder's buckets and the outcome in `folder`."""
    folder.mkdir(mode=0o700, exist_ok=True)
    out = _Part(folder=folder, sink=sink)
    finder = _DuplicateFinder(folder)

    def numbered(lines: Iterator[bytes], first: int) -> Iterator[tuple[int, bytes]]:
        for lineno, line in enumerate(lines, first):
            out.lines = lineno
            yield lineno, line

    try:
        with SnapshotReader(path) as snap, snap.open(ES_DATA) as member:
            raw = _HashingReader(member)
            out.lines, rest = _skip_lines_before(raw, at)
            stream = _Prepended(rest, raw)
            first = out.lines + 1
            lines = numbered(buffered_lines(stream, first=first), first)  # type: ignore[arg-type]
            for problem in _checked(lines, finder, None, sink):
                out.problems.append(problem)
                if len(out.problems) > MAX_PROBLEMS:  # the caller stops listing there
                    out.stopped = True
                    break
            else:
                out.digest = (raw.size, raw.sha.hexdigest())
    except CorruptArchive as exc:
        out.stopped = True
        out.problems.append(_read_problem(exc, out.lines))
    finally:
        finder.close()
    return out


def _skip_lines_before(raw: io.RawIOBase, at: int) -> tuple[int, bytes]:
    """Read `raw` up to the first line that starts at byte `at` or later: the number of lines
    before it, and what was read past its start."""
    newlines, pos = 0, 0
    while block := raw.read(COPY_CHUNK):
        end = pos + len(block)
        if end >= at:
            i = block.find(b"\n", max(at - 1 - pos, 0))
            if i >= 0:
                return newlines + block.count(b"\n", 0, i + 1), block[i + 1 :]
        newlines += block.count(b"\n")
        pos = end
    return newlines, b""


class _Prepended(io.RawIOBase):
    """`head`, then the rest of `raw`."""

    def __init__(self, head: bytes, raw: io.RawIOBase) -> None:
        self._head, self._raw = memoryview(head), raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._raw.readinto(buffer)  # type: ignore[no-any-return]


def _checked(
    lines: Iterator[tuple[int, bytes]],
    finder: _DuplicateFinder,
    on_line: Callable[[int], None] | None,
    on_hit: Callable[[int, EsDataLine], None] | None,
) -> Iterator[Problem]:
    """Each line parsed (a problem for one that does not), its key's digest to `finder`."""
    for lineno, line in lines:
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


def _read_problem(exc: CorruptArchive, lines: int) -> Problem:
    """The problem of a pass that cannot go on after line `lines`."""
    if isinstance(exc, DamagedMember):
        return Problem(ES_DATA, lines + 1 if lines else None, f"cannot be read to the end ({exc.cause})")
    return Problem(exc.member, exc.line, exc.reason)  # a line over the size cap


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
