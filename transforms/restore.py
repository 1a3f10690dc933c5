"""The restore's Beam side: the transforms that write what a restore's plan says
(`transforms.restore_plan`, re-exported here) (spec §6, §7.2).

    archive ─SplitEsDataIntoShards─▶ Shard ─RestoreDocuments(context)─▶ pages of (line, hit)
            (skip loaded lines · upgrade · restore changes, one fused step) ─BulkLoad─▶ batches

- `ArchivePlan`, `RestoreContext`, `restore_context`, `Batching`: see `transforms.restore_plan`.
- `LoadDocuments`: the whole document side, `RestoreDocuments` + `BulkLoad`. Every path it is
  given (archive, staging, journal) is a Beam `FileSystems` path: on a cluster, storage every
  worker reaches.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import apache_beam as beam
import msgspec
from apache_beam.io.filesystems import FileSystems

from core import progress
from core.archive import decode_line, parse_hit_with_source
from core.errors import CorruptArchive
from core.journal import Journal, line_ranges
from core.model import Hit
from core.search import SearchTarget
from transforms.agent_index import AgentIndex
from transforms.restore_docs import (
    Agent,
    restore_hit,
    restore_line,
    restore_line_as_is,
    restore_reads_source,
)
from transforms.restore_plan import ArchivePlan, Batching, RestoreContext, restore_context
from transforms.search_io import HitPage, WriteToSearch, WrittenBatch
from transforms.shards import Shard, SplitEsDataIntoShards
from transforms.versions import Step, plan, touched, upgrade_hit

__all__ = [
    "ArchivePlan",
    "RestoreContext",
    "restore_context",
    "RestoreDocuments",
    "LoadDocuments",
    "Batching",
    "JournalBatches",
    "NumberedHit",
]

NumberedHit = tuple[int, Hit]
"""A hit and its es_data line number (the journal records loaded batches by line)."""
_ENCODE = msgspec.json.encode
PAGE = 1000
"""Restored hits handed on at once (a `HitPage`): Beam's cost of each element it passes on is
paid a page at a time (measured at 100k documents: the restore's CPU 7.8-8.0 -> 7.3-7.7 s)."""


# ------------------------------------------------------------------------------- transforms
class _RestoreShardFn(beam.DoFn):
    """One shard → its `(line, restored hit)`s: parse, skip lines already loaded (journal),
    version upgrade, the restore's own changes. One fused step: Beam's per-step cost is paid
    once per shard, not four times per document.

    Each (index, type) takes one of three ways (`_learn_way`), each giving the hit
    `restore_hit(upgrade_hit(...))` gives:
    - `_SHORT`: no version step touches it and the restore does not read its source
      (`touched`, `restore_reads_source`: most of an archive, its events and logs): its keys are
      decoded, its `_source` is sent on as the archive's bytes (`restore_line`);
    - `_AS_IS`: nodes and node instances no step touches (in practice node instances restored
      at 3.3: the 3.4 steps and both targets' defaults touch the rest): the same, when the
      restore leaves the source as it is (`restore_line_as_is`: no key path, no agent of its
      deployment), else the long way;
    - `_LONG`: the whole line decoded, upgraded and changed (`_restored_in_full`)."""

    _SHORT, _AS_IS, _LONG = 1, 2, 3  # all true: `ways.get(key) or learn(key)`

    def __init__(self, ctx: RestoreContext, loaded: list[tuple[int, int]]) -> None:
        self._source, self._target, self._key_paths = ctx.source, ctx.target, ctx.key_paths
        self._agents = ctx.agents
        self._starts = [a for a, _ in loaded]
        self._ends = [b for _, b in loaded]
        self._read = beam.metrics.Metrics.counter("cfysnap", "documents_read")

    def setup(self) -> None:
        self._steps = plan(self._source, self._target)
        self._ways: dict[tuple[str, str], int] = {}

    def _learn_way(self, key: tuple[str, str]) -> int:
        """The way hits of (index, type) `key` take (asked once per key)."""
        if touched(self._steps, *key):
            way = self._LONG
        else:
            way = self._AS_IS if restore_reads_source(*key) else self._SHORT
        self._ways[key] = way
        return way

    def teardown(self) -> None:
        if isinstance(self._agents, AgentIndex):
            self._agents.close()

    def _loaded(self, line: int) -> bool:
        i = bisect.bisect_right(self._starts, line) - 1
        return i >= 0 and line <= self._ends[i]

    def process(self, shard: Shard) -> Iterator[HitPage]:
        """The shard's restored hits, `PAGE` at a time (`HitPage`s of `NumberedHit`s, each
        page's `nbytes` the length of its es_data lines): one loop over the shard's lines,
        the short way's work inline (it runs once per document)."""
        steps, key_paths, skip = self._steps, self._key_paths, bool(self._starts)
        agents, ways, learn = self._agents, self._ways, self._learn_way
        short, as_is = self._SHORT, self._AS_IS
        page, nbytes, n = HitPage(), 0, 0
        with FileSystems.open(shard.path) as f:
            for lineno, line in enumerate(f, shard.first_line):
                if (skip and self._loaded(lineno)) or not line.strip():
                    continue
                try:
                    hit: Hit | None = None
                    parts = decode_line(line)
                    if parts is not None:
                        way = ways.get((parts.index, parts.type)) or learn((parts.index, parts.type))
                        if way == short:
                            hit = restore_line(parts)
                        elif way == as_is:
                            hit = restore_line_as_is(parts, key_paths=key_paths, agents=agents)
                    if hit is None:
                        hit = _restored_in_full(line, lineno, steps, key_paths, agents)
                except CorruptArchive as exc:
                    raise CorruptArchive(exc.member, lineno, exc.reason) from None
                page.append((lineno, hit))
                nbytes += len(line)
                if len(page) >= PAGE:
                    n += len(page)
                    page.nbytes = nbytes
                    yield page
                    page, nbytes = HitPage(), 0
        if page:
            n += len(page)
            page.nbytes = nbytes
            yield page
        self._read.inc(n)


def _restored_in_full(
    line: bytes,
    lineno: int,
    steps: Sequence[Step],
    key_paths: Mapping[str, str],
    agents: Mapping[str, tuple[str, Agent]],
) -> Hit:
    """The long way: the line decoded whole, upgraded, given the restore's changes. A source
    msgspec decoded (`raw` not None) goes to the server as bytes: the archive's own when nothing
    changed it, else msgspec's encoding of it, about 7x faster than `json.dumps`, which the
    bulk writer uses for a source left a dict. The same values: msgspec refuses NaN, Infinity
    and numbers out of range when it decodes, so the source holds none, and the upgrade and
    the restore add strings, integers, booleans, nulls, empty containers and agents.json
    values (msgspec-decoded too); only the text differs (compact, UTF-8 rather than ASCII
    escapes). A value msgspec cannot encode (a key path holding a lone surrogate from an
    undecodable directory name) leaves the source a dict, for `json.dumps`."""
    read, raw = parse_hit_with_source(line, lineno)
    hit = restore_hit(upgrade_hit(read, steps), key_paths=key_paths, agents=agents)
    if raw is None:
        return hit
    source = hit["_source"]
    if source is read["_source"]:
        return {**hit, "_source": msgspec.Raw(raw)}
    try:
        return {**hit, "_source": msgspec.Raw(_ENCODE(source))}
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return hit


class RestoreDocuments(beam.PTransform):
    """`Shard` → `HitPage`s of `(es_data line, hit as restored)`: lines of batches the journal
    records as loaded are skipped (resume); the rest are upgraded from `ctx.source` to
    `ctx.target` and given the restore's own changes (event index by own day, `ctx.key_paths`, agents.json merged into
    node instances: `ctx.agents`, an `AgentIndex` every worker reads, pickled as its path).
    The line number stays with each hit: the journal records loaded batches by line."""

    def __init__(self, ctx: RestoreContext, loaded_lines: Sequence[tuple[int, int]] = ()) -> None:
        super().__init__()
        plan(ctx.source, ctx.target)  # bad versions fail here, not mid-pipeline
        self._fn = _RestoreShardFn(ctx, sorted(loaded_lines))

    def expand(self, shards: beam.PCollection[Shard]) -> beam.PCollection[HitPage]:
        return shards | "ParseUpgradeRestore" >> beam.ParDo(self._fn)


class LoadDocuments(beam.PTransform):
    """archive path → `LoadedBatch`es: the whole document side of a restore. `staging` and the
    journal are `FileSystems` paths every worker reaches."""

    def __init__(
        self,
        ctx: RestoreContext,
        target: SearchTarget,
        batching: Batching,
        staging: str,
        loaded_lines: list[tuple[int, int]],
        journal: Journal,
    ) -> None:
        super().__init__()
        self._ctx, self._target, self._batching = ctx, target, batching
        self._staging, self._loaded, self._journal = staging, loaded_lines, journal

    def expand(self, archive_paths: beam.PCollection[str]) -> beam.PCollection:
        ctx, batching = self._ctx, self._batching
        # the index goes where every worker reads it; only its path is pickled into the graph
        if isinstance(ctx.agents, AgentIndex):
            ctx = replace(ctx, agents=ctx.agents.stage(self._staging))
        return (
            archive_paths
            | "SplitEsDataIntoShards"
            >> SplitEsDataIntoShards(self._staging, batching.lines_per_shard)
            | "RestoreDocuments"
            >> RestoreDocuments(ctx, self._loaded)
            | "WriteToSearch"
            >> WriteToSearch(
                self._target,
                max_docs=batching.batch_docs,
                max_bytes=batching.batch_bytes,
                tagged=True,
                in_flight=2,  # measured: the server indexes one batch while the next arrives
                on_batch=JournalBatches(self._journal),
            )
        )


@dataclass(frozen=True)
class JournalBatches:
    """`WriteToSearch`'s `on_batch` for a restore: each acknowledged batch goes into the
    journal (its es_data line ranges, counts and digest), then into the progress report."""

    journal: Journal

    def __call__(self, batch: WrittenBatch) -> None:
        lines = line_ranges(batch.tags)
        self.journal.append(
            {
                "event": "batch",
                "digest": batch.digest,
                "lines": [list(r) for r in lines],
                "counts": dict(batch.counts),
            }
        )
        progress.report(batch.documents, batch.nbytes)
