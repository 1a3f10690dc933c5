"""Upgrade es_data documents through version steps and drop the duplicates that may create.

    Shard ─UpgradeShards(steps)─▶ ShardInfo (one upgraded file per shard) ─┐
                       └──────▶ key digests (packed, per bucket) ─────────┴─DeduplicateShards─▶
                                                       ShardInfo (each (index, type, id) once)

`UpgradeShards` is the convert hot path: one DoFn call per staged shard reads its lines, applies
the pure step functions of `transforms.versions` (`LineUpgrade`, the per-line `upgraded_line`)
and writes the upgraded shard file itself. Documents never become Beam elements: Beam's
per-element cost on the FnApiRunner (~10 µs for each of read, upgrade, write, digest) was more
than the work itself. It emits only a `ShardInfo` and the 8-byte key digests of the shard,
packed. A line no step changes is written as it was read, byte for byte, after a decode of its
keys alone; a changed line is `json.dumps` of the upgraded hit, except a 3.2 event moved to its
daily index: its line is the original with only the `_index` value replaced, when that provably
is the same document (`_moved_line`, `_spliced`), found from its keys and two time fields
without decoding the rest of its source (`IndexMove`). Upgraded shards are named by their first
line, so the archive step, which takes shards in path order, keeps es_data's line order (the
kept copy of a duplicated key, rare, comes first).

Deduplication never moves whole documents through a shuffle (STYLE principle 12). Upgrading
can make two hits share a key: 3.2's `cloudify_events` hits move to `logstash-<day>`, where a hit
with the same `_type` and `_id` may already live. So:

1. `FindRepeatedDigests`: every upgraded hit gives an 8-byte digest of its (index, type, id);
   digests are packed into byte blobs per bucket, grouped by bucket, sorted (numpy) and the
   digests seen twice come out: the (usually empty) duplicated set. Shuffle cost: 8 bytes a
   document.
2. `DropDuplicatedLines`: the set is a side input of a pass over the staged `ShardInfo`s (file
   paths, not documents). When it is empty every shard goes straight through, untouched. Otherwise
   each shard is re-read once: lines whose key digest is not duplicated are copied byte for byte
   to a new shard; the others go out as `(key, line)`.
3. `KeepOnePerKey`: only those duplicates are grouped by key. The kept line is the one whose
   canonical form (`json.dumps(sort_keys=True)`) sorts first, so the choice does not depend on
   bundle or worker order. Every line dropped is counted (`duplicates_dropped`); dropped lines
   whose content differs from the kept one are also counted as `duplicates_differing`.

A digest collision between two different keys only costs a re-read: the group is keyed by the
real key, so both documents are kept.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import msgspec
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.windowed_value import WindowedValue

from core import progress
from core.archive import ES_DATA, EsDataLine, checked_line, dump_hit, parse_hit
from core.digests import key_digest, key_digest_bytes, repeated
from core.errors import CorruptArchive
from core.model import Hit, HitKey, hit_key
from transforms._beam import in_global_window
from transforms.shards import LINES_PER_SHARD, Shard, ShardInfo, SplitEsDataIntoShards
from transforms.versions import IndexMove, Step, touched, upgrade_hit

__all__ = [
    "ConvertEsData",
    "UpgradeShards",
    "UpgradedShards",
    "DeduplicateShards",
    "FindRepeatedDigests",
    "upgraded_line",
    "upgraded_in_full",
    "LineUpgrade",
    "key_digest",
    "repeated_digests",
    "keep_one",
    "COUNTER_NAMESPACE",
]

COUNTER_NAMESPACE = "cfysnap"
DIGEST_BUCKETS = 16
_DIGEST_FLUSH = 1 << 16
"""Digests buffered per bundle before they are sent on (8 bytes each: 512 KiB)."""

DuplicateLine = tuple[HitKey, bytes]
"""A staged es_data line (with its newline) whose key is duplicated, keyed by that key."""
DigestBlob = tuple[int, bytes]
"""(bucket, packed little-endian int64 key digests): how key digests travel between workers."""


def repeated_digests(blobs: Iterable[bytes]) -> list[int]:
    """The digests that occur more than once in `blobs` (packed little-endian int64s)."""
    arrays = [np.frombuffer(b, dtype="<i8") for b in blobs if b]
    if not arrays:
        return []
    return [int(d) for d in repeated(np.concatenate(arrays))]


def _canonical(line: bytes) -> str:
    return json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))


def keep_one(lines: Iterable[bytes]) -> tuple[bytes, int, int]:
    """Of staged lines sharing one key: (the line kept, lines dropped, dropped lines that differ).

    Deterministic: the line whose canonical form sorts first is kept, whatever the input order.
    """
    forms = sorted((_canonical(line), line) for line in lines)
    kept_form, kept = forms[0]
    differing = sum(1 for form, _ in forms[1:] if form != kept_form)
    return kept, len(forms) - 1, differing


def _steps_chain(steps: Sequence[Step]) -> tuple[Step, ...]:
    steps = tuple(steps)
    for earlier, later in zip(steps, steps[1:], strict=False):
        if earlier.target is not later.source:
            raise ValueError(f"steps do not chain: {earlier.name} then {later.name}")
    return steps


def upgraded_line(line: bytes, lineno: int | None, steps: Sequence[Step]) -> tuple[bytes, HitKey, bool]:
    """One es_data line (no newline) → (the upgraded line, its key, whether a step changed it).

    A hit no step changes keeps its line byte for byte; a changed hit is written as `dump_hit`.
    Pure. Raises `CorruptArchive` naming `lineno` for a line that is not a hit, or that a step
    refuses (an event with no usable time). A job upgrading many lines makes one
    `LineUpgrade(steps)` and calls it per line (it learns per (index, type) which way to go).
    """
    return LineUpgrade(steps)(line, lineno)


def upgraded_in_full(line: bytes, lineno: int | None, steps: Sequence[Step]) -> tuple[bytes, HitKey, bool]:
    """`upgraded_line` the full way: the line parsed, every step applied to the hit."""
    hit = parse_hit(line, lineno)
    try:
        upgraded = upgrade_hit(hit, steps)
    except CorruptArchive as exc:
        raise CorruptArchive(ES_DATA, lineno, exc.reason) from None
    if upgraded is hit:
        return line, hit_key(hit), False
    moved = _moved_line(line, hit, upgraded)
    return moved or dump_hit(upgraded).encode(), hit_key(upgraded), True


_FULL, _KEEP, _MOVE = "full", "keep", "move"


class LineUpgrade:
    """`upgraded_line` for one plan (`steps`), called per line, with what it learns per
    (index, type) kept: the same answers, most of them without decoding a source into Python.

    A line is first decoded for its keys alone, checked as `parse_hit` checks a line (nesting
    depth, JSON, UTF-8, non-empty string keys, an object `_source`), and, when the plan's first
    step declares an `IndexMove`, that move's `_source` fields with it. Then, by its (index, type):

    - no step touches it (`touched`): the line is kept as it is, byte for byte, as the full way
      keeps a hit every step returns as the very same object;
    - the first step only moves it (`IndexMove.applies`): the line with its `_index` value
      replaced (`_reindexed`), when the full way provably gives that very line;
    - else, and for any line the first decode does not take (NaN & co, a bad line, which the
      full way takes as 3.x's Python did or refuses, naming its line): `upgraded_in_full`.

    The move's fields are decoded as the full parse decodes them (msgspec; the last of repeated
    keys counts, as in a dict)."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self._steps = tuple(steps)
        self._move: IndexMove | None = self._steps[0].move if self._steps else None
        self._decoder = _line_decoder(self._move.fields if self._move else ())
        self._ways: dict[tuple[str, str], str] = {}
        self._lands: dict[tuple[str, str], bool] = {}
        """Per (index, type) an event lands in: whether no later step touches it."""

    def _way(self, key: tuple[str, str]) -> str:
        way = _KEEP if not touched(self._steps, *key) else _FULL
        if way is _FULL and self._move is not None and self._move.applies(*key):
            way = _MOVE
        self._ways[key] = way
        return way

    def __call__(self, line: bytes, lineno: int | None) -> tuple[bytes, HitKey, bool]:
        head = checked_line(line, self._decoder)
        if head is not None:
            key = (head.index, head.type)
            way = self._ways.get(key) or self._way(key)
            if way is _KEEP:
                return line, (head.index, head.type, head.id), False
            if way is _MOVE:
                moved = self._reindexed(line, head)
                if moved is not None:
                    return moved
        return upgraded_in_full(line, lineno, self._steps)

    def _reindexed(self, line: bytes, head: Any) -> tuple[bytes, HitKey, bool] | None:
        """The full way's answer for a hit the first step only moves, or None when it is not
        provable here. By the `IndexMove` promise the first step gives the hit with only
        `_index` changed, to the move's `index` of its fields; no later step touches it where
        it lands (checked); and the line can be spliced (`_spliced`, the same condition the
        full way's `_moved_line` ends with), so the full way would write this very line."""
        assert self._move is not None
        index = self._move.index(*msgspec.structs.astuple(head.source))
        if index is None:
            return None  # the full way refuses the hit, naming its line
        lands = (index, head.type)
        untouched = self._lands.get(lands)
        if untouched is None:
            untouched = self._lands[lands] = not touched(self._steps[1:], *lands)
        moved = _spliced(line, head.index, index) if untouched else None
        return None if moved is None else (moved, (index, head.type, head.id), True)


@functools.lru_cache(maxsize=16)
def _line_decoder(fields: tuple[str, ...]) -> msgspec.json.Decoder:
    """Decodes an es_data line's keys and, of its `_source`, the top-level `fields` only (missing
    ones None, the rest skipped, its syntax still checked; an object required); with no
    `fields`, the `_source` as its raw bytes (`EsDataLine`)."""
    if not fields:
        return msgspec.json.Decoder(EsDataLine)
    names = [f"f{i}" for i in range(len(fields))]
    source = msgspec.defstruct(
        "SourceFields", [(n, Any, None) for n in names], rename=dict(zip(names, fields, strict=True))
    )
    return msgspec.json.Decoder(msgspec.defstruct(
        "LineFields",
        [("index", str), ("type", str), ("id", str), ("source", source)],
        rename={"index": "_index", "type": "_type", "id": "_id", "source": "_source"},
    ))


_ESCAPED_LETTER = re.compile(rb"\\u00[4-7]")
"""A JSON escape of a character from "@" to DEL, which includes every letter of `_index`."""


def _moved_line(line: bytes, hit: Hit, upgraded: Hit) -> bytes | None:
    """`line` with only its `_index` value replaced, when that is exactly `upgraded` (a 3.2 event
    moved to its daily index) and provably so; else None (then the hit is re-serialised).

    Saves `json.dumps` for most documents of a 3.2 archive. For a line as 3.x wrote it
    (`json.dumps(hit)`), the result is byte for byte `json.dumps(upgraded)`; for any other line
    it parses to `upgraded` and keeps the rest of the line as it was. Proof obligations, all
    checked: `upgraded` differs from `hit` only in the value of `_index` (same keys, same order,
    the other values the same objects), and `_spliced`'s own.
    """
    if list(upgraded) != list(hit):
        return None
    for k, v in hit.items():
        if upgraded[k] is not v and k != "_index":
            return None
    return _spliced(line, hit["_index"], upgraded["_index"])


def _spliced(line: bytes, old: str, new: str) -> bytes | None:
    """`line` with its top-level `_index` value `old` replaced by `new`, when the line provably
    holds that key once: it starts with `{"_index": <old as json.dumps writes it>, ` (so that is
    the top-level key), `"_index"` occurs once in the line (no other key of that name: inside a
    JSON string a quote is always escaped) and no `\\u0040`-`\\u007f` escape could spell another
    one (json.dumps escapes non-ASCII text, never those); else None."""
    prefix = _index_prefix(old)
    if not line.startswith(prefix) or line.count(b'"_index"') != 1 or _ESCAPED_LETTER.search(line):
        return None
    return _index_prefix(new) + line[len(prefix) :]


@functools.lru_cache(maxsize=4096)
def _index_prefix(index: str) -> bytes:
    """How `json.dumps` begins a hit whose first key is `_index`, through the separator after it
    (cached: an archive has one index per day of events)."""
    return b'{"_index": ' + json.dumps(index).encode() + b", "


def _digest_blobs(digests: bytes | bytearray) -> Iterator[DigestBlob]:
    """Packed digests (little-endian int64s) split into their buckets (`digest % DIGEST_BUCKETS`),
    non-empty ones only."""
    values = np.frombuffer(digests, dtype="<i8") if digests else np.empty(0, "<i8")
    buckets = values % DIGEST_BUCKETS  # numpy's % is non-negative for a positive divisor, as Python's
    for bucket in range(DIGEST_BUCKETS):
        selected = values[buckets == bucket]
        if len(selected):
            yield bucket, selected.astype("<i8").tobytes()


# ------------------------------------------------------------------------- upgrade shards
class _UpgradeShardFn(beam.DoFn):
    """Shard → its upgraded file's ShardInfo (main output) and its key digests ("digests")."""

    DIGESTS = "digests"
    _REPORT_EVERY = 1_000

    def __init__(self, staging: str, steps: Sequence[Step]) -> None:
        self._staging, self._steps = staging, tuple(steps)
        self._read = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "documents_read")
        self._changed = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "documents_changed")
        self._written = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "documents_written")

    @staticmethod
    def _flush(lines: list[bytes], out: Any) -> int:
        """Write `lines` (each with a newline) in one call; report progress; return the bytes."""
        if not lines:
            return 0
        data = b"\n".join(lines) + b"\n"
        out.write(data)
        progress.report(len(lines), len(data))
        return len(data)

    def process(self, shard: Shard) -> Iterator[Any]:
        # named by its first es_data line: the archive step takes shards in path order, so the
        # converted es_data keeps the source's line order, whatever the workers' (but for the
        # kept copies of duplicated keys, written apart); a fresh suffix: a retried shard never
        # overwrites the first try's file
        path = FileSystems.join(
            self._staging, f"upgraded-{shard.first_line:012d}-{uuid.uuid4().hex}.jsonl"
        )
        upgrade, first = LineUpgrade(self._steps), shard.first_line
        counts: Counter[tuple[str, str]] = Counter()
        digests = bytearray()
        batch: list[bytes] = []
        written = changed = nbytes = 0
        with FileSystems.open(shard.path) as src, FileSystems.create(path) as out:
            for offset, raw in enumerate(src):
                line = raw.rstrip(b"\r\n")
                if not line or line.isspace():
                    continue
                new, key, was_changed = upgrade(line, first + offset)
                batch.append(new)
                counts[key[:2]] += 1  # type: ignore[index]
                digests += key_digest_bytes(key)
                changed += was_changed
                if len(batch) >= self._REPORT_EVERY:
                    nbytes += self._flush(batch, out)
                    written += len(batch)
                    batch = []
            nbytes += self._flush(batch, out)
            written += len(batch)
        self._read.inc(written)
        self._changed.inc(changed)
        self._written.inc(written)
        yield ShardInfo(path, tuple(sorted(counts.items())), nbytes)
        for blob in _digest_blobs(digests):
            yield beam.pvalue.TaggedOutput(self.DIGESTS, blob)


class UpgradedShards(NamedTuple):
    """What `UpgradeShards` produces: the upgraded files and the key digests of their documents."""

    shard_infos: beam.PCollection  # PCollection[ShardInfo]
    key_digests: beam.PCollection  # PCollection[DigestBlob]


class UpgradeShards(beam.PTransform):
    """`Shard` → `UpgradedShards`: each staged shard upgraded by `steps` into a new file in
    `staging`, in one DoFn call (see the module docstring).

    Element shapes: in `Shard`; out `ShardInfo` (one per shard) and `DigestBlob`s. Memory: one
    line plus 8 bytes per document of the shard. Counters: `documents_read`, `documents_changed`,
    `documents_written`. A retried shard writes a new file (a fresh name), so nothing is doubled.
    A bad line or an event that cannot be placed fails the job with `CorruptArchive` naming its
    es_data line.
    """

    def __init__(self, staging: str, steps: Sequence[Step]) -> None:
        super().__init__()
        self._staging, self._steps = staging, _steps_chain(steps)

    def expand(self, shards: beam.PCollection[Shard]) -> UpgradedShards:  # type: ignore[override]
        outputs = shards | "UpgradeShardFiles" >> beam.ParDo(
            _UpgradeShardFn(self._staging, self._steps)
        ).with_outputs(_UpgradeShardFn.DIGESTS, main="shard_infos")
        return UpgradedShards(outputs["shard_infos"], outputs[_UpgradeShardFn.DIGESTS])


# ---------------------------------------------------------------------------- duplicates
class FindRepeatedDigests(beam.PTransform):
    """`DigestBlob`s → the digests that occur more than once (usually none). Only the packed
    digests are shuffled: 8 bytes a document."""

    def expand(self, digest_blobs: beam.PCollection[DigestBlob]) -> beam.PCollection[int]:
        return (
            digest_blobs
            | "GroupDigestsByBucket" >> beam.GroupByKey()
            | "RepeatedInBucket" >> beam.FlatMap(lambda bucket_blobs: repeated_digests(bucket_blobs[1]))
        )


class _DropDuplicatedLinesFn(beam.DoFn):
    """ShardInfo → the same ShardInfo when no line in it is duplicated, else a rewritten shard
    without the duplicated lines (main output) and those lines as (key, line) ("duplicates")."""

    DUPLICATES = "duplicates"

    def __init__(self, staging: str) -> None:
        self._staging = staging

    def process(self, shard: ShardInfo, repeated: list[int]) -> Iterator[Any]:
        if not repeated:
            yield shard
            return
        wanted = set(repeated)
        # in the rewritten shard's place in path order (see _UpgradeShardFn)
        stem = posixpath.basename(shard.path).removesuffix(".jsonl")
        path = FileSystems.join(self._staging, f"{stem}-unique-{uuid.uuid4().hex}.jsonl")
        counts: Counter[tuple[str, str]] = Counter()
        nbytes = 0
        with FileSystems.open(shard.path) as src, FileSystems.create(path) as out:
            for line in src:
                if not line.strip():
                    continue
                hit = parse_hit(line)
                key = hit_key(hit)
                if key_digest(key) in wanted:
                    yield beam.pvalue.TaggedOutput(self.DUPLICATES, (key, line))
                    continue
                out.write(line)
                counts[key[:2]] += 1
                nbytes += len(line)
        yield ShardInfo(path, tuple(sorted(counts.items())), nbytes)


class _KeepOneFn(beam.DoFn):
    """(key, [lines]) → one (key, line): the kept duplicate (see `keep_one`)."""

    def __init__(self) -> None:
        self._dropped = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "duplicates_dropped")
        self._differing = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "duplicates_differing")

    def process(self, key_lines: tuple[HitKey, Iterable[bytes]]) -> Iterator[DuplicateLine]:
        key, lines = key_lines
        kept, dropped, differing = keep_one(lines)
        self._dropped.inc(dropped)
        self._differing.inc(differing)
        yield tuple(key), kept  # type: ignore[misc]


class _WriteLinesFn(beam.DoFn):
    """(key, line) → one staged shard per bundle, emitted as its ShardInfo."""

    def __init__(self, staging: str) -> None:
        self._staging = staging

    def start_bundle(self) -> None:
        self._out: Any = None
        self._counts: Counter[tuple[str, str]] = Counter()
        self._nbytes = 0

    # no `-> None`: Beam 2.78 reads it as an output type that is not iterable and
    # refuses the DoFn; this one emits only in finish_bundle
    def process(self, key_line: DuplicateLine):
        key, line = key_line
        if self._out is None:
            self._path = FileSystems.join(self._staging, f"kept-{uuid.uuid4().hex}.jsonl")
            self._out = FileSystems.create(self._path)
        self._out.write(line)
        self._counts[(key[0], key[1])] += 1
        self._nbytes += len(line)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._out is not None:
            self._out.close()
            yield in_global_window(ShardInfo(self._path, tuple(sorted(self._counts.items())), self._nbytes))


class DeduplicateShards(beam.PTransform):
    """(`DigestBlob`s, staged `ShardInfo`s) → `ShardInfo`s in which each (index, type, id) occurs once.

    The blobs are the key digests of exactly the documents `shard_infos` hold. Documents never go
    through a shuffle unless their key is duplicated; see the module docstring. Counters:
    `duplicates_dropped`, `duplicates_differing`. Idempotent: rewritten shards get new file
    names, so a retried bundle cannot clobber another one's output.
    """

    def __init__(self, staging: str) -> None:
        super().__init__()
        self._staging = staging

    def expand(
        self, inputs: tuple[beam.PCollection[DigestBlob], beam.PCollection[ShardInfo]]
    ) -> beam.PCollection[ShardInfo]:
        digest_blobs, shard_infos = inputs
        duplicated_digests = digest_blobs | "FindRepeatedDigests" >> FindRepeatedDigests()
        split = shard_infos | "DropDuplicatedLines" >> beam.ParDo(
            _DropDuplicatedLinesFn(self._staging), beam.pvalue.AsList(duplicated_digests)
        ).with_outputs(_DropDuplicatedLinesFn.DUPLICATES, main="unique")
        kept_duplicates = (
            split[_DropDuplicatedLinesFn.DUPLICATES]
            | "GroupDuplicatesByKey" >> beam.GroupByKey()
            | "KeepOnePerKey" >> beam.ParDo(_KeepOneFn())
            | "WriteKeptDuplicates" >> beam.ParDo(_WriteLinesFn(self._staging))
        )
        return (split["unique"], kept_duplicates) | "AllUniqueShards" >> beam.Flatten()


class ConvertEsData(beam.PTransform):
    """archive path → `ShardInfo`s of its upgraded es_data, each (index, type, id) once.

    Only shard paths, small `ShardInfo`s and packed key digests cross a shuffle, and documents
    are never Beam elements: each shard is read, upgraded and written by one DoFn call.
    """

    def __init__(self, staging: str, steps: Sequence[Step], lines_per_shard: int = LINES_PER_SHARD) -> None:
        super().__init__()
        self._staging, self._steps, self._lines = staging, tuple(steps), lines_per_shard

    def expand(self, archive_paths: beam.PCollection[str]) -> beam.PCollection[ShardInfo]:
        shards = archive_paths | "SplitEsDataIntoShards" >> SplitEsDataIntoShards(self._staging, self._lines)
        upgraded = shards | "UpgradeShards" >> UpgradeShards(self._staging, self._steps)
        return (upgraded.key_digests, upgraded.shard_infos) | "DeduplicateShards" >> DeduplicateShards(
            self._staging
        )
