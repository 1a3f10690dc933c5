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
- Every archive is written with ZIP64 allowed (3.4.2 behaviour), deflated by ISA-L (python-isal:
  the same deflate format, any unzip reads it) rather than zlib, measured ~6× faster.
- Member names are checked on both sides: absolute paths, `..`, backslashes, NUL and symlink
  entries are unsafe (`unsafe_member_reason`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
import stat
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path, PurePosixPath
from typing import IO, Any

import ijson
import msgspec
from isal import isal_zlib

from core.crypto import ArchiveKey, Encryption, decrypt_agents
from core.errors import CorruptArchive, DamagedMember, UnsafePath
from core.model import FILE_FOLDERS, Hit, Version, parse_version
from core.text import format_size

__all__ = [
    "METADATA",
    "ES_DATA",
    "AGENTS",
    "MANIFEST",
    "CREDENTIALS_PREFIX",
    "SnapshotReader",
    "SnapshotWriter",
    "DeflatedPart",
    "PartDeflater",
    "ArchiveLimits",
    "size_problems",
    "parse_hit",
    "decode_line",
    "parse_hit_with_source",
    "parse_line",
    "checked_line",
    "EsDataLine",
    "json_too_deep",
    "MAX_LINE_BYTES",
    "MAX_JSON_DEPTH",
    "dump_hit",
    "es_data_line",
    "es_data_page",
    "unsafe_member_reason",
    "safe_target_path",
    "buffered_lines",
    "line_too_long",
    "json_object_chunks",
    "CFYSNAP_VERSION",
]

CFYSNAP_VERSION = "0.1.0"
METADATA = "metadata.json"
ES_DATA = "es_data"
AGENTS = "agents.json"
MANIFEST = "manifest.json"
CREDENTIALS_PREFIX = "snapshot-credentials/"
COPY_CHUNK = 1 << 20
DEFAULT_COMPRESSLEVEL = 2
"""ISA-L's level 2 (0–3): on es_data ~6× faster than zlib's level 1, and 1% smaller."""


# ---------------------------------------------------------------------------------------------
# lines and names


MAX_LINE_BYTES = 100 * 2**20
"""An es_data line longer than this is refused (CorruptArchive), never read whole into memory."""
MAX_JSON_DEPTH = 200
"""Deepest nesting of objects and arrays a document may have. 3.x documents stay under 20
levels; the cap keeps every parse, step and dump well inside Python's recursion limit (a
10,000-deep line is refused with its line number, not a RecursionError)."""

_DECODE = msgspec.json.decode
_NESTING = re.compile(rb'[\[\]{}"]|\\.', re.DOTALL)


def json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text `data` nests objects/arrays deeper than `limit` (brackets inside
    strings do not count). Cheap for the common case: fewer brackets than `limit` is enough."""
    if data.count(b"{") + data.count(b"[") <= limit:
        return False
    depth, in_string = 0, False
    for match in _NESTING.finditer(data):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or len(token) > 1:
            continue
        elif token in (b"{", b"["):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _not_json(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {exc.start}"
    return f"not valid JSON ({exc.args[0].split(':')[0]})"


def parse_hit(line: bytes | str, lineno: int | None = None) -> Hit:
    """One es_data line → a hit; CorruptArchive("es_data", lineno, reason) when it is not one
    (bad JSON, invalid UTF-8, nested deeper than MAX_JSON_DEPTH, missing keys).

    Decoded by msgspec (~3× `json`, the same values); what it refuses (NaN, 1e400, lone
    surrogates, a BOM, a bad line) is decoded by `json`, which takes the first three as 3.x's
    Python did and words the error for a bad line."""
    data = line.encode() if isinstance(line, str) else line
    if json_too_deep(data):
        raise CorruptArchive(ES_DATA, lineno, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        hit = _DECODE(data)
    except msgspec.DecodeError:
        try:
            hit = json.loads(data)
        except ValueError as exc:
            raise CorruptArchive(ES_DATA, lineno, _not_json(exc)) from None
    if not isinstance(hit, dict):
        raise CorruptArchive(ES_DATA, lineno, "line is not a JSON object")
    for key in ("_index", "_type", "_id"):
        if not isinstance(hit.get(key), str) or not hit[key]:
            raise CorruptArchive(ES_DATA, lineno, f"missing or non-string {key}")
    if not isinstance(hit.get("_source"), dict):
        raise CorruptArchive(ES_DATA, lineno, "missing or non-object _source")
    return hit


class EsDataLine(msgspec.Struct, gc=False):
    """An es_data line's keys and its `_source` as the line's own bytes (one JSON object)."""

    index: str = msgspec.field(name="_index")
    type: str = msgspec.field(name="_type")
    id: str = msgspec.field(name="_id")
    source: msgspec.Raw = msgspec.field(name="_source")

    def hit(self) -> Hit:
        """The parsed hit `{"_index", "_type", "_id", "_source"}`."""
        return {"_index": self.index, "_type": self.type, "_id": self.id,
                "_source": _DECODE(self.source)}


_LINE = msgspec.json.Decoder(EsDataLine)


def checked_line(line: bytes, decoder: msgspec.json.Decoder = _LINE) -> Any:
    """An es_data line's keys and its `_source` as bytes (`EsDataLine`), checked as `parse_hit`
    checks a line (nesting depth, JSON, UTF-8, non-empty string keys, an object `_source`)
    without decoding the source into Python; None for a line msgspec does not take so, which
    only `parse_hit` can judge (NaN & co, which it takes as 3.x's Python did, or a bad line,
    which it refuses). `decoder`: another struct with `index`, `type`, `id` and `source` (a
    struct of some source fields, which itself requires an object) to decode the line as."""
    if json_too_deep(line):
        return None
    try:
        parsed = decoder.decode(line)
        line.decode()  # msgspec skips the source's strings without checking their UTF-8
    except (msgspec.DecodeError, ValueError):
        return None
    source = parsed.source
    if not (parsed.index and parsed.type and parsed.id):
        return None
    if isinstance(source, msgspec.Raw) and memoryview(source)[:1] != b"{":
        return None
    return parsed


def parse_line(line: bytes, lineno: int | None = None) -> EsDataLine:
    """One es_data line checked as `parse_hit` checks it, its `_source` left unparsed (~5× faster:
    a whole-archive check). Raises the same CorruptArchive as `parse_hit` for a bad line."""
    parsed = checked_line(line)
    if parsed is not None:
        return parsed
    hit = parse_hit(line, lineno)  # raises for a bad line; takes NaN & co as 3.x's Python did
    return EsDataLine(hit["_index"], hit["_type"], hit["_id"],
                      msgspec.Raw(json.dumps(hit["_source"]).encode()))


def decode_line(line: bytes) -> EsDataLine | None:
    """An es_data line's keys and its `_source` as bytes, for a job that sends the source on
    unread; None for any line msgspec does not take as one with non-empty keys and an object
    `_source` (the caller then goes through `parse_hit_with_source`, which raises for a bad one).

    Not checked here: nesting depth, the UTF-8 of the source's strings, the range of its
    numbers. The source is never decoded in Python, and every line of an archive was checked
    for the first two before a job reads it this way (`core.validate`); a number such as 1e400
    goes on as the archive writes it (a full parse would turn it into `Infinity`)."""
    try:
        parts = _LINE.decode(line)
    except msgspec.DecodeError:
        return None
    if parts.index and parts.type and parts.id and memoryview(parts.source)[:1] == b"{":
        return parts
    return None


def parse_hit_with_source(line: bytes, lineno: int | None = None) -> tuple[Hit, bytes | None]:
    """`parse_hit` for a job that writes the document on: the hit `{"_index", "_type", "_id",
    "_source"}` and its `_source` as the line's own bytes, to send again if nothing changes it.

    Decoded by msgspec (~3× `json`); any line it does not take (NaN, integers past 64 bits,
    lone surrogates, a bad line) goes through `parse_hit`, which raises the same CorruptArchive
    for a bad one, and is returned without bytes (to be serialised again)."""
    source = None
    if not json_too_deep(line):
        try:
            parts = _LINE.decode(line)
            source = _DECODE(parts.source)
        except msgspec.DecodeError:
            source = None
    if not isinstance(source, dict) or not (parts.index and parts.type and parts.id):
        return parse_hit(line, lineno), None
    hit = {"_index": parts.index, "_type": parts.type, "_id": parts.id, "_source": source}
    return hit, bytes(parts.source)


def _nested_deeper(value: object, limit: int) -> bool:
    """Whether `value` (parsed JSON) nests objects/arrays deeper than `limit` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def json_object_chunks(items: Iterable[tuple[str, Any]]) -> Iterator[bytes]:
    """A JSON object written a key at a time: the bytes `json.dumps(dict(items))` would give
    (same order, same separators), without the whole object in memory."""
    yield b"{"
    for n, (key, value) in enumerate(items):
        yield (b", " if n else b"") + json.dumps(key).encode() + b": " + json.dumps(value).encode()
    yield b"}"


def dump_hit(hit: Hit) -> str:
    """A hit as an es_data line (without the newline): `json.dumps` defaults, as 3.x wrote it."""
    return json.dumps(hit)


@functools.lru_cache(maxsize=4096)
def _line_prefix(index: str, doc_type: str) -> bytes:
    return b'{"_index": %s, "_type": %s, "_id": ' % (
        json.dumps(index).encode(),
        json.dumps(doc_type).encode(),
    )


_SCORE_SOURCE = b', "_score": 0.0, "_source": '


def es_data_line(index: str, doc_type: str, doc_id: str, source: bytes | Any) -> bytes:
    """The es_data line (without the newline) of a document whose `_source` is the JSON object
    `source` as a server sent it: the keys in the order 3.x wrote them, `_score` 0.0, the source
    bytes as they are (a source spanning lines is re-serialised onto one). For a source written
    by `json.dumps`, the line is `dump_hit` of the parsed hit, byte for byte."""
    source = bytes(source)  # a server's buffer (msgspec.Raw) as bytes
    if b"\n" in source or b"\r" in source:
        source = json.dumps(json.loads(source)).encode()
    return b"".join((
        _line_prefix(index, doc_type),
        encode_basestring_ascii(doc_id).encode(),  # what json.dumps does to a str
        _SCORE_SOURCE,
        source,
        b"}",
    ))


def es_data_page(hits: Sequence[Any]) -> bytes:
    """The es_data lines, each ending in a newline, of `hits` (objects with `index`, `type`, `id`
    and `source`, as `core.search.RawHit`): `es_data_line` of each, built as one join.

    The sources are joined as the server's buffers, uncopied and unscanned; a source spanning
    lines shows in the result as more newlines than hits (or a carriage return), and only then
    is the page built again line by line (`es_data_line` re-serialises such a source)."""
    parts: list[Any] = []
    add, prefix, quote = parts.extend, _line_prefix, encode_basestring_ascii
    for hit in hits:
        add((prefix(hit.index, str(hit.type)), quote(hit.id).encode(), _SCORE_SOURCE, hit.source, b"}\n"))
    data = b"".join(parts)
    if data.count(b"\n") == len(hits) and b"\r" not in data:
        return data
    return b"".join(
        es_data_line(hit.index, str(hit.type), hit.id, hit.source) + b"\n" for hit in hits
    )


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


_MiB, _GiB = 2**20, 2**30
_JSON_MEMBERS = (METADATA, MANIFEST, AGENTS, "manager.json")


@dataclass(frozen=True)
class ArchiveLimits:
    """How large an archive's members may be, checked from the zip's own directory before any
    member is read. zipfile never yields more than a member's declared size (a member that
    inflates to more fails its CRC check), so these declared sizes bound what every job reads,
    extracts or holds.

    The defaults are sane for any real manager; each can be raised (or lowered) by an option.
    `validate` also refuses a member declaring another size than manifest.json lists.

    Jobs check them before reading anything: `SnapshotReader(path, limits)`, or `validate`'s
    `limit_problems`."""

    member_bytes: int = 16 * _GiB
    """Largest uncompressed member."""
    total_bytes: int = 64 * _GiB
    """Largest sum of uncompressed members."""
    ratio: float = 100.0
    """Largest uncompressed/compressed ratio of a member of `ratio_from_bytes` or more (JSON
    deflates ~7:1, blueprint archives ~1:1; 3 GiB of zeros deflate ~1000:1)."""
    ratio_from_bytes: int = _MiB
    """Smaller members are not ratio-checked (their size alone bounds them)."""
    json_bytes: int = 256 * _MiB
    """Largest metadata.json, manifest.json, agents.json or manager.json (each read whole)."""

    def __post_init__(self) -> None:
        if min(self.member_bytes, self.total_bytes, self.json_bytes) < 1 or self.ratio < 1:
            raise ValueError("archive limits must be positive (ratio at least 1)")


def size_problems(snap: SnapshotReader, limits: ArchiveLimits) -> list[tuple[str, str]]:
    """(member, why) for every member past `limits`, from the zip's directory alone; the
    archive's own path names a total past them."""
    problems: list[tuple[str, str]] = []
    total = 0
    for info in snap.entries():
        size, packed = info.file_size, info.compress_size
        total += size
        cap = limits.json_bytes if info.filename in _JSON_MEMBERS else limits.member_bytes
        if size > cap:
            problems.append((info.filename, f"{format_size(size)} uncompressed, more than the "
                             f"{format_size(cap)} allowed"))
        elif size >= limits.ratio_from_bytes and size > limits.ratio * max(packed, 1):
            problems.append((info.filename, f"compressed {size / max(packed, 1):,.0f}:1 "
                             f"({format_size(packed)} to {format_size(size)}), more than the "
                             f"{limits.ratio:,.0f}:1 allowed (a zip bomb?)"))
    if total > limits.total_bytes:
        problems.append((str(snap.path), f"{format_size(total)} uncompressed in all, more than "
                         f"the {format_size(limits.total_bytes)} allowed"))
    return problems


# what ISA-L's inflate raises on a bad stream (its stubs type it as an instance)
_ISAL_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]
_READ_ERRORS = (
    zipfile.BadZipFile, zlib.error, _ISAL_ERROR, EOFError, NotImplementedError, OSError
)
"""What reading a damaged member raises (NotImplementedError: an unknown compression)."""


class _CheckedMember(io.RawIOBase):
    """A member's stream whose read errors become CorruptArchive naming the member."""

    def __init__(self, member: IO[bytes], name: str, archive: str) -> None:
        self._member, self._name, self._archive = member, name, archive

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._member.read(len(buffer))
        except _READ_ERRORS as exc:
            raise DamagedMember(self._name, str(exc), self._archive) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._member.close()
        super().close()


class _InflatedMember(io.RawIOBase):
    """A deflated member inflated by ISA-L (on es_data 2.4x the speed of zlib, which zipfile's
    own reader uses), read and checked the way zipfile reads and checks one: at most its size
    is inflated, and its CRC-32 is checked once all of it is read. A damaged stream, a file
    ending early and a wrong CRC-32 raise what zipfile's reader raises (`_READ_ERRORS`). Its
    local header is zipfile's to check (`SnapshotReader.open`); here only its length is read."""

    def __init__(self, path: Path, info: zipfile.ZipInfo) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._file.seek(info.header_offset)
            header = self._file.read(30)
            name_len = int.from_bytes(header[26:28], "little")
            extra_len = int.from_bytes(header[28:30], "little")
            self._file.seek(name_len + extra_len, 1)
        except BaseException:
            self._file.close()
            raise
        self._name, self._expected_crc = info.filename, info.CRC
        self._compressed_left, self._left = info.compress_size, info.file_size
        self._inflate = isal_zlib.decompressobj(-15)
        self._crc, self._eof, self._extra = 0, False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = len(buffer)
        if not self._extra:
            self._extra = self._read(n)
        data, self._extra = self._extra[:n], self._extra[n:]
        buffer[: len(data)] = data
        return len(data)

    def _read(self, n: int) -> bytes:
        """Up to about `n` bytes more (b"" at the end)."""
        while not self._eof:
            data = self._inflate.unconsumed_tail
            if not data and self._compressed_left > 0:
                data = self._file.read(min(self._compressed_left, COPY_CHUNK))
                if not data:
                    raise EOFError
                self._compressed_left -= len(data)
            out = self._inflate.decompress(data, n)
            self._eof = self._inflate.eof or (
                self._compressed_left <= 0 and not self._inflate.unconsumed_tail
            )
            if self._eof:
                out += self._inflate.flush()
            out = out[: self._left]
            self._left -= len(out)
            if self._left <= 0:
                self._eof = True
            self._crc = isal_zlib.crc32(out, self._crc)
            if self._eof and self._crc != self._expected_crc:
                raise zipfile.BadZipFile(f"Bad CRC-32 for file {self._name!r}")
            if out:
                return out
        return b""

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class SnapshotReader:
    """Read-only, streaming view of a snapshot archive.

    >>> with SnapshotReader("snap.zip") as snap:
    ...     for lineno, hit in snap.iter_hits(): ...
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        limits: ArchiveLimits | None = None,
        *,
        key: ArchiveKey | None = None,
    ) -> None:
        """Opens the archive (CorruptArchive when it is no zip). With `limits`, refuses it
        (CorruptArchive) when a member is past them: what a job opening an archive it has not
        checked yet does, so nothing past the limits is ever inflated.

        `key`: the key of an archive whose credentials are encrypted (`core.crypto`): its
        agent keys and agents.json secrets then read as plain text. Without it they can only be
        read `raw` (as stored); `encryption` refuses a wrong or missing key (KeyRefused)."""
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
        self._key, self._manifest_read = key, False
        self._encryption: Encryption | None = None
        self._manifest: dict[str, Any] | None = None
        if limits is not None:
            problems = size_problems(self, limits)
            if problems:
                self._zip.close()
                member, reason = problems[0]
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                named = "" if member == str(self.path) else str(self.path)
                raise CorruptArchive(member, None, reason + more, named)

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
    def open(self, name: str, *, raw: bool = False) -> IO[bytes]:
        """A member as a binary stream. A damaged member (bad header, CRC, deflate stream,
        truncated) raises CorruptArchive(name) when opened or read, never zipfile's or zlib's
        own errors. An encrypted agent key reads decrypted (KeyRefused without the key), or
        as stored with `raw`."""
        if not raw and name.startswith(CREDENTIALS_PREFIX) and self.encrypted is not None:
            encryption = self.encryption
            assert encryption is not None
            with self.open(name, raw=True) as sealed:
                return io.BytesIO(encryption.open_member(name, sealed.read()))
        if name not in self._infos:
            raise CorruptArchive(name, None, "member missing from archive", str(self.path))
        info = self._infos[name]
        try:
            member: IO[bytes] = self._zip.open(info)  # checks the member's local header
            if info.compress_type == zipfile.ZIP_DEFLATED and not info.flag_bits & 0x1:
                member.close()
                member = _InflatedMember(self.path, info)  # type: ignore[assignment]
        except _READ_ERRORS as exc:
            raise DamagedMember(name, str(exc), str(self.path)) from None
        return io.BufferedReader(_CheckedMember(member, name, str(self.path)), COPY_CHUNK)

    def read_json(self, name: str) -> Any:
        with self.open(name) as f:
            data = f.read()
        if json_too_deep(data):
            raise CorruptArchive(name, None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            return json.loads(data)
        except UnicodeDecodeError as exc:
            raise CorruptArchive(name, None, _not_json(exc)) from None
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
        """agents.json whole; `{}` when absent (a 3.2 tool archive before its driver appended
        it). Memory grows with it: jobs stream it with `iter_agents`."""
        return dict(self.iter_agents())

    def iter_agents(self, *, raw: bool = False) -> Iterator[tuple[str, Any]]:
        """agents.json a deployment at a time: (deployment id, its nodes object), in the file's
        order, streamed (memory: one deployment). Nothing when absent. CorruptArchive(agents.json)
        for invalid JSON, invalid UTF-8, a top level that is no object, or nesting deeper than
        MAX_JSON_DEPTH. Encrypted secrets read decrypted (KeyRefused without the key), or as
        stored with `raw`."""
        if not self.has(AGENTS):
            return
        encryption = None if raw or self.encrypted is None else self.encryption
        for deployment, nodes in self._stream_agents():
            if encryption is not None:
                nodes = decrypt_agents({deployment: nodes}, encryption)[deployment]  # type: ignore[index]
            yield deployment, nodes

    def _stream_agents(self) -> Iterator[tuple[str, Any]]:
        with self.open(AGENTS) as f:
            first = f.peek(64).lstrip()[:1]  # type: ignore[attr-defined]
            if first != b"{":
                what = "empty" if not first else "not a JSON object"
                raise CorruptArchive(AGENTS, None, f"agents.json is {what}")
            try:
                for deployment, nodes in ijson.kvitems(f, "", use_float=True):
                    if _nested_deeper(nodes, MAX_JSON_DEPTH - 1):
                        reason = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
                        raise CorruptArchive(AGENTS, None, reason)
                    yield deployment, nodes
            except ijson.JSONError as exc:
                reason = f"not valid JSON ({str(exc).splitlines()[0][:200]})"
                raise CorruptArchive(AGENTS, None, reason) from None

    def manifest(self) -> dict[str, Any] | None:
        if not self._manifest_read:
            self._manifest = self.read_json(MANIFEST) if self.has(MANIFEST) else None
            self._manifest_read = True
        return self._manifest

    @property
    def encrypted(self) -> dict[str, Any] | None:
        """manifest.json's `encryption` entry (scheme, salt, key check, encrypted members) when
        the archive's credentials are encrypted, else None. Needs no key."""
        manifest = self.manifest()
        entry = manifest.get("encryption") if isinstance(manifest, dict) else None
        if entry is not None and not isinstance(entry, dict):
            raise CorruptArchive(MANIFEST, None, "its encryption entry is not an object")
        return entry

    @property
    def encryption(self) -> Encryption | None:
        """The archive's encryption opened with the key given, None when it is not encrypted.
        KeyRefused (before anything is written) when the key is missing or wrong."""
        entry = self.encrypted
        if entry is None:
            return None
        if self._encryption is None:
            self._encryption = Encryption.open(entry, self._key, str(self.path))
        return self._encryption

    def iter_lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number from 1, raw line without newline) of es_data; blank lines are skipped."""
        with self.open(ES_DATA) as raw:
            try:
                for lineno, line in enumerate(buffered_lines(raw), 1):
                    line = line.rstrip(b"\r\n")
                    if line.strip():
                        yield lineno, line
            except DamagedMember as exc:
                reason = f"cannot be read to the end ({exc.cause})"
                raise CorruptArchive(ES_DATA, None, reason, exc.archive) from None

    def iter_hits(self) -> Iterator[tuple[int, Hit]]:
        for lineno, line in self.iter_lines():
            yield lineno, parse_hit(line, lineno)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def line_too_long(member: str, lineno: int, max_line: int = MAX_LINE_BYTES) -> CorruptArchive:
    """The refusal of line `lineno` of `member`, longer than `max_line` bytes."""
    return CorruptArchive(member, lineno, f"line longer than {max_line // 2**20} MiB")


def buffered_lines(
    raw: IO[bytes], name: str = ES_DATA, max_line: int | None = None, first: int = 1
) -> Iterator[bytes]:
    """The lines of a binary stream, newline included, read in 1 MiB blocks (zip members' own
    readline is slow). A line longer than `max_line` (default MAX_LINE_BYTES) raises
    CorruptArchive(name, lineno) after reading at most that much of it: memory stays bounded
    whatever the member holds. `first`: the number of the stream's first line."""
    max_line = max_line or MAX_LINE_BYTES
    reader = io.BufferedReader(raw, COPY_CHUNK)  # type: ignore[arg-type,type-var]
    readline, lineno = reader.readline, first - 1
    while line := readline(max_line + 1):
        lineno += 1
        if len(line) > max_line:
            raise line_too_long(name, lineno, max_line)
        yield line


# ---------------------------------------------------------------------------------------------
# writing


class _HashingWriter(io.RawIOBase):
    """Pass-through writer that records size and sha256 of what goes through it.

    A large write is hashed by a helper thread while the target deflates it: hashlib and ISA-L
    both release the GIL, so es_data's sha256 and its compression take one core each (profiled
    on 77 MB of es_data: 0.12 s one after the other, 0.065 s side by side). The write returns
    once both are done, as the caller may reuse its buffer."""

    _PARALLEL = 256 * 1024

    def __init__(self, target: IO[bytes], on_close: Any) -> None:
        self._target, self._on_close = target, on_close
        self._sha, self.size = hashlib.sha256(), 0
        self._hasher: ThreadPoolExecutor | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        n = len(data)
        self.size += n
        if n < self._PARALLEL:
            self._sha.update(data)
            self._target.write(data)
            return n
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="cfysnap-sha256")
        hashed = self._hasher.submit(self._sha.update, data)
        try:
            self._target.write(data)
        finally:
            hashed.result()
        return n

    def close(self) -> None:
        if not self.closed:
            if self._hasher is not None:
                self._hasher.shutdown()
            self._target.close()
            self._on_close(self.size, self._sha.hexdigest())
        super().close()


class _DeflatedMember(io.RawIOBase):
    """One member of a `zipfile.ZipFile` being written to a seekable file, deflated by ISA-L.

    Written the way `ZipFile.open(info, "w")` writes to a seekable file (local header with the
    ZIP64 extra, the deflated data, the header rewritten with CRC and sizes), then registered in
    the ZipFile so its central directory lists it. Only the compressor differs from zipfile's."""

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, level: int) -> None:
        fp = zf.fp
        assert fp is not None
        fp.seek(zf.start_dir)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.flag_bits = 0  # sizes go in the rewritten header: no data descriptor
        info.CRC = info.compress_size = info.file_size = 0
        info.header_offset = fp.tell()
        fp.write(info.FileHeader(zip64=True))
        self._zf, self._fp, self._info = zf, fp, info
        self._deflate = _Deflate(level)
        self._copied = 0
        """Deflated bytes copied by `append_deflated` (a member of `PartDeflater` parts)."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        self._fp.write(self._deflate(data))
        return len(data)

    def append_deflated(self, data: bytes) -> None:
        """Bytes of `PartDeflater` parts, copied as they are (never mixed with `write`)."""
        self._copied += len(data)
        self._fp.write(data)

    def end_parts(self, crc: int, size: int) -> None:
        """Close a member made of `PartDeflater` parts: their combined CRC-32 and size."""
        self._fp.write(_FINAL_BLOCK)
        self._finish(crc, size, self._copied + len(_FINAL_BLOCK))

    def close(self) -> None:
        if self.closed:
            return
        deflate = self._deflate
        self._fp.write(deflate.flush(isal_zlib.Z_FINISH))
        self._finish(deflate.crc, deflate.size, deflate.compressed)

    def _finish(self, crc: int, size: int, compressed: int) -> None:
        info, fp = self._info, self._fp
        info.CRC, info.file_size, info.compress_size = crc, size, compressed
        end = fp.tell()
        fp.seek(info.header_offset)
        fp.write(info.FileHeader(zip64=True))
        fp.seek(end)
        self._zf.filelist.append(info)
        self._zf.NameToInfo[info.filename] = info
        self._zf.start_dir = end
        super().close()


class _Deflate:
    """ISA-L's raw deflate of one stream, and what a zip member's header records of it: the
    CRC-32 and size of what went in, the size of what came out."""

    def __init__(self, level: int) -> None:
        self._compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
        self.crc = self.size = self.compressed = 0

    def __call__(self, data: Any) -> bytes:
        self.crc = isal_zlib.crc32(data, self.crc)
        self.size += len(data)
        out = self._compressor.compress(data)
        self.compressed += len(out)
        return out

    def flush(self, mode: int) -> bytes:
        out = self._compressor.flush(mode)
        self.compressed += len(out)
        return out


@dataclass(frozen=True)
class DeflatedPart:
    """What `PartDeflater` made of some bytes: their size, CRC-32 and sha256, and the size of
    their deflated form. Parts of one member deflated apart (each worker's es_data shard) make
    the member by concatenation (`SnapshotWriter.write_deflated`)."""

    size: int
    compressed: int
    crc32: int
    sha256: str


class PartDeflater:
    """Deflates what is written to it into `target` as one part of a zip member: raw deflate
    ended by a sync flush (byte-aligned, no final block), so parts deflated on their own, in
    any process, concatenate into one deflate stream. `close()` returns the `DeflatedPart`.

    A part starts with an empty window, so its first bytes cannot refer to the part before: on
    es_data shards (megabytes each) that costs nothing measurable in size."""

    def __init__(self, target: IO[bytes], level: int = DEFAULT_COMPRESSLEVEL) -> None:
        self._target, self._deflate, self._sha = target, _Deflate(level), hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        self._target.write(self._deflate(data))
        return len(data)

    def close(self) -> DeflatedPart:
        deflate = self._deflate
        self._target.write(deflate.flush(isal_zlib.Z_SYNC_FLUSH))
        self._target.close()
        return DeflatedPart(deflate.size, deflate.compressed, deflate.crc, self._sha.hexdigest())


_FINAL_BLOCK = b"\x03\x00"
"""An empty final deflate block (fixed Huffman codes, end of block): what ends a member made of
`PartDeflater` parts, none of which has a final block."""


def _inflated(inflate: Any, chunk: bytes, limit: int = 4 * COPY_CHUNK) -> Iterator[bytes]:
    """What `inflate` (a raw-deflate decompressor) makes of `chunk`, at most `limit` at a time."""
    while chunk:
        yield inflate.decompress(chunk, limit)
        chunk = inflate.unconsumed_tail


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
            self._zip = zipfile.ZipFile(self._file, "w", zipfile.ZIP_DEFLATED, allowZip64=True)
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
        self._encryption_entry: dict[str, Any] | None = None

    # -- members ---------------------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        reason = unsafe_member_reason(name)
        if reason:
            raise UnsafePath(name, reason)
        if name in self._members or (name == MANIFEST and self._with_manifest):
            raise ValueError(f"member {name} written twice")
        if self._open is not None:
            raise RuntimeError(f"member {self._open} is still open")

    def _new_member(self, name: str) -> _DeflatedMember:
        self._check_name(name)
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        # agent keys keep owner-only permissions inside the archive too
        mode = 0o600 if name.startswith(CREDENTIALS_PREFIX) else 0o644
        info.external_attr = (stat.S_IFREG | mode) << 16
        member = _DeflatedMember(self._zip, info, self._compresslevel)
        self._open = name
        return member

    def open_member(self, name: str) -> IO[bytes]:
        """A binary stream for a new member; close it before opening the next."""
        target = self._new_member(name)

        def _closed(size: int, digest: str) -> None:
            self._members[name] = {"size": size, "sha256": digest}
            self._open = None

        return io.BufferedWriter(_HashingWriter(target, _closed), COPY_CHUNK)  # type: ignore[arg-type,return-value]

    def write_deflated(
        self, name: str, parts: Sequence[DeflatedPart], open_part: Callable[[int], IO[bytes]]
    ) -> None:
        """A member made of `PartDeflater` parts, in order: `open_part(i)` opens part i's
        deflated bytes, which are copied as they are, not deflated again. The member's CRC-32
        is combined from the parts'; its sha256 is the part's own when there is one part, else
        hashed from the parts inflated as they are copied (a sha256 does not combine)."""
        member = self._new_member(name)
        sha = hashlib.sha256() if len(parts) != 1 else None
        crc = size = 0
        for i, part in enumerate(parts):
            inflate = isal_zlib.decompressobj(-15)
            with open_part(i) as source:
                while chunk := source.read(COPY_CHUNK):
                    member.append_deflated(chunk)
                    if sha is not None:
                        for data in _inflated(inflate, chunk):
                            sha.update(data)
            crc = isal_zlib.crc32_combine(crc, part.crc32, part.size)
            size += part.size
        member.end_parts(crc, size)
        digest = parts[0].sha256 if sha is None else sha.hexdigest()
        self._members[name] = {"size": size, "sha256": digest}
        self._open = None

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

    def set_encryption(self, entry: dict[str, Any]) -> None:
        """manifest.json's `encryption` entry (`Encryption.manifest_entry`): what is encrypted."""
        self._encryption_entry = entry

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
            if self._encryption_entry is not None:
                manifest["encryption"] = self._encryption_entry
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
