"""What a restore will write, gathered before anything is written (spec §6, §7.2), without Beam:
a restore checks its archive (`pipelines.restore.check_archive`) before it starts the runner.

- `Batching`: how a restore cuts its work (es_data lines per shard, documents and bytes per bulk).
- `ArchivePlan`: gathered in one pass over es_data before anything is written (the expected
  documents per target (index, type), the blueprint and deployment ids a clash check needs).
- `RestoreContext` (`restore_context`): the archive's small inputs (version gate, agents.json,
  the key paths on the target); `expected_hit` is what the restore writes for a hit, and what
  `verify` expects on the target.

The Beam side that writes them is `transforms.restore`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.archive import EsDataLine, SnapshotReader
from core.errors import CorruptArchive, RestoreRefused
from core.model import STORAGE_INDEX, Hit, Version
from transforms.agent_index import AgentIndex
from transforms.restore_docs import (
    Agent,
    AgentWarning,
    agent_deployment,
    key_target,
    line_deployment_id,
    restore_hit,
    restored_line_index,
)
from transforms.versions import DowngradeRefused, plan, upgrade_agents, upgrade_hit

__all__ = ["Batching", "ArchivePlan", "PlanPass", "RestoreContext", "restore_context"]


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
        doc_type, doc_id = line.type, line.id
        try:
            index = restored_line_index(line)
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
            elif doc_type == "node_instance":
                deployment = agent_deployment(agents, doc_id)  # the index is an SQLite file
                if deployment is not None and line_deployment_id(line) == deployment:
                    self.agents_matched += 1

    def merge(self, later: ArchivePlan) -> None:
        """Add what `later` found in the es_data lines after this plan's."""
        self.expected.update(later.expected)
        self.blueprint_ids += later.blueprint_ids
        self.deployment_ids += later.deployment_ids
        self.agents_matched += later.agents_matched
        self.problem = self.problem or later.problem

    def raise_problem(self) -> None:
        if self.problem is not None:
            raise self.problem


@dataclass
class PlanPass:
    """`ArchivePlan.add` as the `on_hit` of the archive's check (`core.validate`), one that
    can be split (`SplitSink`): the check may hand the second half of es_data to a forked child,
    whose plan comes back pickled and is merged in line order."""

    plan: ArchivePlan
    agents: Mapping[str, tuple[str, Agent]]

    def __call__(self, lineno: int, line: EsDataLine) -> None:
        self.plan.add(lineno, line, self.agents)

    def later(self) -> PlanPass:
        # a handle of its own for the child: an open SQLite connection must not cross a fork
        agents = AgentIndex(self.agents.path) if isinstance(self.agents, AgentIndex) else self.agents
        return PlanPass(ArchivePlan(), agents)

    def absorb(self, later: PlanPass) -> None:
        self.plan.merge(later.plan)


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
