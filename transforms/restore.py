"""The restore's Beam side and its plan: what a restore of an archive will write, and the
transforms that write it (spec §6, §7.2).

    archive ─SplitEsDataIntoShards─▶ Shard ─RestoreDocuments(context)─▶ (line, restored hit)
            (skip loaded lines · upgrade · restore changes, one fused step) ─BulkLoad─▶ batches

- `ArchivePlan`: gathered in one pass over es_data before anything is written (the expected
  documents per target (index, type), the blueprint and deployment ids a clash check needs).
- `RestoreContext` (`restore_context`): the archive's small inputs (version gate, agents.json,
  the key paths on the target); `expected_hit` is what the restore writes for a hit, and what
  `verify` expects on the target.
- `LoadDocuments`: the whole document side, `RestoreDocuments` + `BulkLoad`. Every path it is
  given (archive, staging, journal) is a Beam `FileSystems` path: on a cluster, storage every
  worker reaches.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import apache_beam as beam
import msgspec
from apache_beam.io.filesystems import FileSystems

from core import progress
from core.archive import EsDataLine, SnapshotReader, parse_hit_with_source
from core.errors import CorruptArchive, RestoreRefused
from core.journal import Journal, merge_ranges
from core.model import STORAGE_INDEX, Hit, Version
from core.search import SearchTarget
from transforms.agent_index import AgentIndex
from transforms.restore_docs import (
    Agent,
    AgentWarning,
    key_target,
    restore_hit,
    restored_line_key,
)
from transforms.search_io import WriteToSearch, WrittenBatch
from transforms.shards import Shard, SplitEsDataIntoShards
from transforms.versions import DowngradeRefused, plan, upgrade_agents, upgrade_hit

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


@dataclass(frozen=True)
class Batching:
    """How a restore cuts its work: es_data lines per shard, documents and bytes per bulk."""

    lines_per_shard: int = 10_000
    batch_docs: int = 2000
    batch_bytes: int = 8_000_000

    def __post_init__(self) -> None:
        if self.batch_docs < 1 or self.batch_bytes < 1 or self.lines_per_shard < 1:
            raise ValueError("lines_per_shard, batch_docs and batch_bytes must be positive")


# ---------------------------------------------------------------------------------- the plan
@dataclass
class ArchivePlan:
    """What the plan pass over es_data found: expected documents per target (index, type),
    the blueprint and deployment ids the archive restores, how many instances get agent data."""

    expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    blueprint_ids: list[str] = field(default_factory=list)
    deployment_ids: list[str] = field(default_factory=list)
    agents_matched: int = 0
    problem: CorruptArchive | None = None
    """The first hit the restore could not place (an event with no usable time)."""

    def add(self, lineno: int, line: EsDataLine, agents: Mapping[str, tuple[str, Agent]]) -> None:
        """Account for one es_data line (number `lineno`), its source parsed only as needed."""
        try:
            index, doc_type, doc_id = restored_line_key(line)
        except CorruptArchive as exc:
            if self.problem is None:
                self.problem = CorruptArchive(exc.member, lineno, exc.reason)
            return
        self.expected[(index, doc_type)] += 1
        if index == STORAGE_INDEX:
            if doc_type == "blueprint":
                self.blueprint_ids.append(doc_id)
            elif doc_type == "deployment":
                self.deployment_ids.append(doc_id)
            elif doc_type == "node_instance" and doc_id in agents:
                entry_dep, agent = agents[doc_id]
                if agent and line.hit()["_source"].get("deployment_id") == entry_dep:
                    self.agents_matched += 1

    def raise_problem(self) -> None:
        if self.problem is not None:
            raise self.problem


@dataclass(frozen=True)
class RestoreContext:
    """The restore's inputs besides es_data, shared by `restore` and `verify`."""

    source: Version
    target: Version
    key_paths: dict[str, str]
    """node storage `_id` → absolute key path on the target."""
    agents: Mapping[str, tuple[str, Agent]]
    """instance id → (deployment, agents.json entry): an `AgentIndex` on disk."""
    agent_warnings: list[AgentWarning]

    def expected_hit(self, hit: Hit) -> Hit:
        """The hit as the restore writes it: version upgrade, then the restore's own changes."""
        steps = plan(self.source, self.target)
        return restore_hit(upgrade_hit(hit, steps), key_paths=self.key_paths, agents=self.agents)


def restore_context(
    reader: SnapshotReader, target: Version, credentials_dir: Path | None, workdir: Path
) -> RestoreContext:
    """Version gate (RestoreRefused for a newer archive) and the small inputs of a restore;
    agents.json, upgraded a deployment at a time, goes into an `AgentIndex` in `workdir` (a
    local folder that outlives the context's use)."""
    source = reader.version
    try:
        steps = plan(source, target)
    except DowngradeRefused:
        raise RestoreRefused(
            f"the archive is a {source.value} snapshot, newer than the target version "
            f"{target.value}; restore it into a {source.value} (or newer) manager"
        ) from None
    upgraded = (
        item
        for deployment, nodes in reader.iter_agents()
        for item in upgrade_agents({deployment: nodes}, steps).items()
    )
    agents, warnings = AgentIndex.build(upgraded, workdir / "agents.sqlite")
    paths = (
        {name: key_target(credentials_dir, name) for name in reader.key_names()}
        if credentials_dir is not None
        else {}
    )
    return RestoreContext(source, target, paths, agents, warnings)



# ------------------------------------------------------------------------------- transforms
class _RestoreShardFn(beam.DoFn):
    """One shard → its `(line, restored hit)`s: parse, skip lines already loaded (journal),
    version upgrade, the restore's own changes. One fused step: Beam's per-step cost is paid
    once per shard, not four times per document."""

    def __init__(self, ctx: RestoreContext, loaded: list[tuple[int, int]]) -> None:
        self._source, self._target, self._key_paths = ctx.source, ctx.target, ctx.key_paths
        self._agents = ctx.agents
        self._starts = [a for a, _ in loaded]
        self._ends = [b for _, b in loaded]
        self._read = beam.metrics.Metrics.counter("cfysnap", "documents_read")

    def setup(self) -> None:
        self._steps = plan(self._source, self._target)

    def teardown(self) -> None:
        if isinstance(self._agents, AgentIndex):
            self._agents.close()

    def _loaded(self, line: int) -> bool:
        i = bisect.bisect_right(self._starts, line) - 1
        return i >= 0 and line <= self._ends[i]

    def process(self, shard: Shard) -> Iterator[NumberedHit]:
        steps, key_paths, skip = self._steps, self._key_paths, bool(self._starts)
        agents = self._agents
        n = 0
        with FileSystems.open(shard.path) as f:
            for offset, line in enumerate(f):
                lineno = shard.first_line + offset
                if not line.strip() or (skip and self._loaded(lineno)):
                    continue
                try:
                    read, raw = parse_hit_with_source(line, lineno)
                    hit = upgrade_hit(read, steps)
                    hit = restore_hit(hit, key_paths=key_paths, agents=agents)
                except CorruptArchive as exc:
                    raise CorruptArchive(exc.member, lineno, exc.reason) from None
                if raw is not None and hit["_source"] is read["_source"]:
                    # unchanged: the archive's bytes go to the server, not a json.dumps of them
                    hit = {**hit, "_source": msgspec.Raw(raw)}
                n += 1
                yield lineno, hit
        self._read.inc(n)


class RestoreDocuments(beam.PTransform):
    """`Shard` → `(es_data line, hit as restored)`: lines of batches the journal records as
    loaded are skipped (resume); the rest are upgraded from `ctx.source` to `ctx.target` and given
    the restore's own changes (event index by own day, `ctx.key_paths`, agents.json merged into
    node instances: `ctx.agents`, an `AgentIndex` every worker reads, pickled as its path).
    The line number stays with each hit: the journal records loaded batches by line."""

    def __init__(self, ctx: RestoreContext, loaded_lines: Sequence[tuple[int, int]] = ()) -> None:
        super().__init__()
        plan(ctx.source, ctx.target)  # bad versions fail here, not mid-pipeline
        self._fn = _RestoreShardFn(ctx, sorted(loaded_lines))

    def expand(self, shards: beam.PCollection[Shard]) -> beam.PCollection[NumberedHit]:
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
        lines = merge_ranges((line, line) for line in batch.tags)
        self.journal.append(
            {
                "event": "batch",
                "digest": batch.digest,
                "lines": [list(r) for r in lines],
                "counts": dict(batch.counts),
            }
        )
        progress.report(batch.documents, batch.nbytes)
