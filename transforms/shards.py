"""Move documents between a snapshot archive and parallel workers through staged shard files.

An archive's `es_data` is one deflated zip member: it can only be read from the start. So the
jobs work like this (principle 12: shuffle paths, never whole documents):

    archive ──SplitEsDataIntoShards──▶ shard paths ──Reshuffle──▶ ReadShards ──▶ hits
    hits ──WriteShards──▶ ShardInfo (path, counts) ──WriteSnapshotArchive──▶ archive

Shards are newline-delimited es_data lines in a staging folder beside the output (any path
Beam's FileSystems understand; on a cluster it must be shared storage). `WriteShards` writes one
file per bundle and emits only a small `ShardInfo`; `WriteSnapshotArchive` streams the shards, in
path order, into the single `es_data` member. No step holds all documents. Shards written with
`WriteShards(deflate=True)` are deflated where they are written, in parallel, as parts of that
member (`core.archive.PartDeflater`), and the archive step only copies their bytes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import msgspec
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.windowed_value import WindowedValue

from core import progress
from core.archive import (
    CREDENTIALS_PREFIX,
    ES_DATA,
    MAX_LINE_BYTES,
    DeflatedPart,
    PartDeflater,
    SnapshotReader,
    SnapshotWriter,
    dump_hit,
    line_too_long,
    parse_hit,
)
from core.crypto import Encryption
from core.errors import CorruptArchive, DamagedMember
from core.model import Hit
from core.options import spreads_work
from transforms._beam import RunOnce, in_global_window

__all__ = [
    "Shard",
    "ShardInfo",
    "SplitEsDataIntoShards",
    "ReadShards",
    "WriteShards",
    "WriteSnapshotArchive",
    "ArchiveMember",
    "LinePage",
    "LINES_PER_SHARD",
    "read_shard",
    "assemble_archive",
    "total_counts",
]

LINES_PER_SHARD = 50_000
_COPY = 1 << 20


@dataclass(frozen=True)
class Shard:
    """A staged slice of es_data: its path and the es_data line number of its first line."""

    path: str
    first_line: int


@dataclass(frozen=True)
class ShardInfo:
    """What `WriteShards` wrote: one file, its document counts per (index, type), its size
    (of the lines), and `deflated`: None for a file of plain lines, else what `PartDeflater`
    made of them (the file holds that part of es_data)."""

    path: str
    counts: tuple[tuple[tuple[str, str], int], ...]
    nbytes: int
    deflated: DeflatedPart | None = None

    @property
    def documents(self) -> int:
        return sum(c for _, c in self.counts)


@dataclass(frozen=True)
class LinePage:
    """es_data lines ready to write (each ending with a newline), and how many documents of each
    (index, type) they hold: how a page of documents travels to `WriteShards` without being
    parsed or dumped again."""

    data: bytes
    counts: tuple[tuple[tuple[str, str], int], ...]


class LinePageCoder(beam.coders.Coder):
    """`LinePage`s between stages and workers: msgpack of the lines and the counts. Beam samples
    the size of the pages it passes on by encoding them with its default coder, which pickled
    the page's megabytes of lines to measure it; the estimate here is their length."""

    def encode(self, page: LinePage) -> bytes:
        return msgspec.msgpack.encode((page.data, page.counts))

    def decode(self, data: bytes) -> LinePage:
        lines, counts = msgspec.msgpack.decode(data)
        return LinePage(lines, tuple(((index, doc_type), n) for (index, doc_type), n in counts))

    def is_deterministic(self) -> bool:
        return True

    def estimate_size(self, page: LinePage) -> int:
        return len(page.data) + 64 * len(page.counts)

    def to_type_hint(self) -> Any:
        return LinePage


beam.coders.registry.register_coder(LinePage, LinePageCoder)


@dataclass(frozen=True)
class ArchiveMember:
    """A non-es_data member to put in the archive: from a file path, or literal bytes, or the
    member of the same name in another zip archive (`archive`, streamed: carried over byte for
    byte). A name ending in "/" with no content source is a directory entry."""

    name: str
    source: str | None = None
    data: bytes | None = None
    archive: str | None = None


# ------------------------------------------------------------------------------- split (archive)
class _SplitEsData(beam.DoFn):
    """Copy es_data into shard files of `lines_per_shard` lines, a block at a time: a block
    that ends inside the current shard is written whole, and only a block holding a shard's
    last line is cut (at that newline). Every byte goes through, blank lines included, so a
    shard's `first_line` is the es_data line number of its first line."""

    def __init__(self, staging: str, lines_per_shard: int, max_line: int = MAX_LINE_BYTES) -> None:
        self._staging, self._lines, self._max_line = staging, lines_per_shard, max_line

    def _line_tail(self, block: bytes, tail: int, lines_read: int) -> int:
        """The length of the line still open after `block` (`tail`: before it); CorruptArchive
        naming the line when one is longer than `max_line`, as `buffered_lines` does: a line
        that never ends is refused, not staged (convert reads staged lines whole)."""
        first = block.find(b"\n")
        if first < 0:
            tail += len(block)
            if tail > self._max_line:
                raise self._too_long(lines_read + 1)
            return tail
        if tail + first + 1 > self._max_line:
            raise self._too_long(lines_read + 1)
        if len(block) > self._max_line:  # lines within one block (only when blocks exceed the cap)
            start, lineno = first + 1, lines_read + 2
            while (end := block.find(b"\n", start)) >= 0:
                if end + 1 - start > self._max_line:
                    raise self._too_long(lineno)
                start, lineno = end + 1, lineno + 1
        return len(block) - block.rfind(b"\n") - 1

    def _too_long(self, lineno: int) -> CorruptArchive:
        return line_too_long(ES_DATA, lineno, self._max_line)

    def process(self, archive_path: str) -> Iterator[Shard]:
        with SnapshotReader(archive_path) as snap, snap.open(ES_DATA) as raw:
            shard_no, first, count, out, lines_read, tail = 0, 1, 0, None, 0, 0
            path, last = "", b"\n"
            try:
                while block := raw.read(_COPY):
                    tail = self._line_tail(block, tail, lines_read)
                    last = block[-1:]
                    while block:
                        if out is None:
                            path = FileSystems.join(self._staging, f"in-{shard_no:06d}.jsonl")
                            out, first = FileSystems.create(path), lines_read + 1
                        wanted = self._lines - count
                        newlines = block.count(b"\n")
                        if newlines < wanted:
                            out.write(block)
                            count, lines_read, block = count + newlines, lines_read + newlines, b""
                            continue
                        cut = -1
                        for _ in range(wanted):
                            cut = block.index(b"\n", cut + 1)
                        out.write(block[: cut + 1])
                        out.close()
                        yield Shard(path, first)
                        lines_read += wanted
                        block, out, count, shard_no = block[cut + 1 :], None, 0, shard_no + 1
            except DamagedMember as exc:
                # a damaged member (bad CRC, truncated deflate stream): a typed, one-line error
                reason = f"cannot be read to the end ({exc.cause}; {lines_read} lines read)"
                raise CorruptArchive(ES_DATA, None, reason, archive_path) from None
            if out is not None:
                if last != b"\n":
                    out.write(b"\n")  # the last line, without its newline in es_data
                out.close()
                yield Shard(path, first)


class SplitEsDataIntoShards(beam.PTransform):
    """archive path → `Shard`s of its es_data, spread over workers (only paths are shuffled).

    Element shapes: in `str` (archive path); out `Shard`. The split itself is one sequential
    stream copy (es_data cannot be read in parallel); everything after it runs in parallel.
    With one worker (`core.options.spreads_work` of the pipeline's options, unless `spread` says)
    the shards are not reshuffled, so the steps after the split take each shard as soon as it is
    staged instead of waiting for the whole of es_data.
    """

    def __init__(
        self, staging: str, lines_per_shard: int = LINES_PER_SHARD, *, spread: bool | None = None
    ) -> None:
        super().__init__()
        if lines_per_shard < 1:
            raise ValueError("lines_per_shard must be positive")
        self._staging, self._lines, self._spread = staging, lines_per_shard, spread

    def expand(self, archive_paths: beam.PCollection[str]) -> beam.PCollection[Shard]:
        shards = archive_paths | "CopyEsDataToShards" >> beam.ParDo(
            _SplitEsData(self._staging, self._lines)
        )
        spread = self._spread
        if spread is None:
            spread = spreads_work(archive_paths.pipeline.options)
        return shards | "SpreadShards" >> beam.Reshuffle() if spread else shards


# ---------------------------------------------------------------------------------- read shards
def read_shard(shard: Shard) -> Iterator[Hit]:
    """Parse one shard; a bad line raises CorruptArchive naming its es_data line number."""
    with FileSystems.open(shard.path) as f:
        for offset, line in enumerate(f):
            if line.strip():
                yield parse_hit(line, shard.first_line + offset)


class ReadShards(beam.PTransform):
    """`Shard` → hits, one shard per worker call. Counts `documents_read`."""

    def expand(self, shards: beam.PCollection[Shard]) -> beam.PCollection[Hit]:
        return shards | "ParseLines" >> beam.ParDo(_ReadShardFn())


class _ReadShardFn(beam.DoFn):
    def __init__(self) -> None:
        self._read = beam.metrics.Metrics.counter("cfysnap", "documents_read")

    def process(self, shard: Shard) -> Iterator[Hit]:
        n = 0
        for hit in read_shard(shard):
            n += 1
            yield hit
        self._read.inc(n)


# --------------------------------------------------------------------------------- write shards
class _WriteShardFn(beam.DoFn):
    """One shard file per bundle; emits its ShardInfo at the end of the bundle."""

    def __init__(self, staging: str, prefix: str, deflate: bool = False) -> None:
        self._staging, self._prefix, self._deflate = staging, prefix, deflate
        self._written = beam.metrics.Metrics.counter("cfysnap", "documents_written")

    def start_bundle(self) -> None:
        self._out: Any = None
        self._path = ""
        self._counts: Counter[tuple[str, str]] = Counter()
        self._nbytes = 0

    # no `-> None`: Beam 2.78 reads it as an output type that is not iterable and
    # refuses the DoFn; this one emits only in finish_bundle
    def process(self, element: Hit | LinePage):
        if self._out is None:
            self._out = self._open()
        if isinstance(element, LinePage):
            data, documents = element.data, 0
            for key, n in element.counts:
                self._counts[key] += n
                documents += n
        else:
            data, documents = dump_hit(element).encode() + b"\n", 1
            self._counts[(element["_index"], element["_type"])] += 1
        self._out.write(data)
        self._nbytes += len(data)
        progress.report(documents, len(data))

    def _open(self) -> Any:
        name = f"{self._prefix}-{uuid.uuid4().hex}"
        if not self._deflate:
            self._path = FileSystems.join(self._staging, f"{name}.jsonl")
            return FileSystems.create(self._path)
        # not ".deflate": Beam's AUTO compression would take that name as a zlib stream
        self._path = FileSystems.join(self._staging, f"{name}.part")
        return PartDeflater(
            FileSystems.create(self._path, compression_type=CompressionTypes.UNCOMPRESSED)
        )

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._out is None:
            return
        closed = self._out.close()  # a PartDeflater's: its DeflatedPart
        self._written.inc(sum(self._counts.values()))
        info = ShardInfo(
            self._path,
            tuple(sorted(self._counts.items())),
            self._nbytes,
            closed if self._deflate else None,
        )
        yield in_global_window(info)


class WriteShards(beam.PTransform):
    """hits or `LinePage`s → `ShardInfo`s: documents written as shard files in `staging`, in
    parallel.

    Idempotent per bundle: a retried bundle writes a new file and only the committed bundle's
    ShardInfo reaches the archive step, so nothing is doubled.

    `deflate`: each shard is deflated as it is written, by the worker that writes it, as a part
    of es_data (only `WriteSnapshotArchive` reads such shards). The archive step then copies
    deflated bytes instead of deflating all of es_data on one worker at the end: 0.2 s of the
    100k-document bench create, after every other step had finished.
    """

    def __init__(self, staging: str, prefix: str = "out", *, deflate: bool = False) -> None:
        super().__init__()
        self._staging, self._prefix, self._deflate = staging, prefix, deflate

    def expand(self, hits: beam.PCollection[Hit | LinePage]) -> beam.PCollection[ShardInfo]:
        return hits | "WriteShardFiles" >> beam.ParDo(
            _WriteShardFn(self._staging, self._prefix, self._deflate)
        )


# ------------------------------------------------------------------------------ write archive
def total_counts(shards: Iterable[ShardInfo]) -> dict[tuple[str, str], int]:
    counts: Counter[tuple[str, str]] = Counter()
    for shard in shards:
        for key, n in shard.counts:
            counts[tuple(key)] += n  # type: ignore[index]
    return dict(counts)


def assemble_archive(
    output: str,
    shards: Iterable[ShardInfo],
    members: Iterable[ArchiveMember],
    encryption: Encryption | None = None,
) -> dict[str, Any]:
    """Write the archive: every member, then es_data from the shards in path order.

    With `encryption`, agent keys read from files are sealed (members copied from another
    archive are already) and manifest.json says what is encrypted. Returns a summary
    (`documents` per "index/type", `files`, `bytes`). Atomic: the output appears only when
    complete (SnapshotWriter writes a temporary file and renames it).
    """
    ordered = sorted(shards, key=lambda s: s.path)
    counts = total_counts(ordered)
    files = 0
    readers: dict[str, SnapshotReader] = {}
    sealed_members: list[str] = []
    with contextlib.ExitStack() as opened, SnapshotWriter(output) as writer:
        for member in members:
            sealed = encryption is not None and member.name.startswith(CREDENTIALS_PREFIX)
            if sealed and not member.name.endswith("/"):
                sealed_members.append(member.name)
            if member.data is not None:
                writer.write_bytes(member.name, member.data)
            elif sealed and member.source is not None:
                assert encryption is not None
                with FileSystems.open(
                    member.source, compression_type=CompressionTypes.UNCOMPRESSED
                ) as src:
                    writer.write_bytes(member.name, encryption.seal_member(member.name, src.read()))
            elif member.source is not None:
                # byte for byte: FileSystems would otherwise gunzip a `.tar.gz` blueprint
                with FileSystems.open(
                    member.source, compression_type=CompressionTypes.UNCOMPRESSED
                ) as src:
                    writer.write_stream(member.name, src)
            elif member.archive is not None:
                if member.archive not in readers:
                    readers[member.archive] = opened.enter_context(SnapshotReader(member.archive))
                with readers[member.archive].open(member.name, raw=True) as src:
                    writer.write_stream(member.name, src)
            elif member.name.endswith("/"):
                writer.write_directory(member.name)
            files += 1
        _write_es_data(writer, ordered)
        writer.set_document_counts(counts)
        if encryption is not None:
            writer.set_encryption(encryption.manifest_entry(sealed_members))
    return {
        "documents": {f"{i}/{t}": c for (i, t), c in sorted(counts.items())},
        "files": files,
        "es_data_bytes": sum(s.nbytes for s in ordered),
    }


def _write_es_data(writer: SnapshotWriter, shards: list[ShardInfo]) -> None:
    """es_data from the shards in order: deflated parts copied as they are, plain lines deflated."""
    parts = [shard.deflated for shard in shards]
    if any(parts):
        if not all(parts):
            raise ValueError("WriteSnapshotArchive: deflated and plain shards of one es_data")
        writer.write_deflated(
            ES_DATA,
            [part for part in parts if part is not None],
            lambda i: FileSystems.open(
                shards[i].path, compression_type=CompressionTypes.UNCOMPRESSED
            ),
        )
        return
    with writer.open_member(ES_DATA) as es_data:
        for shard in shards:
            with FileSystems.open(shard.path) as src:
                while chunk := src.read(_COPY):
                    es_data.write(chunk)


class _AssembleFn(beam.DoFn):
    def __init__(self, output: str, encryption: Encryption | None) -> None:
        self._output, self._encryption = output, encryption

    def process(self, _: Any, shards: list[ShardInfo], members: list[ArchiveMember]) -> Iterator[dict]:
        yield assemble_archive(self._output, shards, members, self._encryption)


class WriteSnapshotArchive(beam.PTransform):
    """(`ShardInfo`s, `ArchiveMember`s) → the archive at `output`; emits one summary dict.

    Runs on one worker, streaming: memory is one copy buffer, not the documents. With
    `encryption` (its key reaches that worker), agent keys are sealed (`assemble_archive`).
    """

    def __init__(self, output: str, encryption: Encryption | None = None) -> None:
        super().__init__()
        self._output, self._encryption = output, encryption

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection[dict]:
        return inputs | "AssembleArchive" >> RunOnce(_AssembleFn(self._output, self._encryption))

