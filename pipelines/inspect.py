"""`inspect`: what a snapshot archive holds, read in one streaming pass.

The report: version, `has_cloudify_events`, documents per (index, type), files and bytes per
top-level folder, agents (deployments, Compute nodes, instances, empty entries), credentials,
member sizes. Document counts come from es_data itself, not from the manifest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.archive import (
    AGENTS,
    CREDENTIALS_PREFIX,
    ES_DATA,
    MANIFEST,
    METADATA,
    ArchiveLimits,
    SnapshotReader,
    parse_line,
)
from core.text import plural

__all__ = ["ArchiveReport", "inspect_archive"]


@dataclass
class ArchiveReport:
    path: str
    archive_bytes: int
    snapshot_version: str
    has_cloudify_events: bool
    documents: dict[tuple[str, str], int] = field(default_factory=dict)
    folders: dict[str, dict[str, int]] = field(default_factory=dict)
    agents: dict[str, int] = field(default_factory=dict)
    credentials: int = 0
    members: dict[str, int] = field(default_factory=dict)
    has_manifest: bool = False
    encryption: str | None = None
    """The scheme the credentials are encrypted with (manifest.json), None when they are not."""

    @property
    def total_documents(self) -> int:
        return sum(self.documents.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["documents"] = [
            {"index": i, "type": t, "count": c} for (i, t), c in sorted(self.documents.items())
        ]
        data["total_documents"] = self.total_documents
        return data

    def render(self) -> str:
        lines = [
            f"archive              {self.path} ({self.archive_bytes:,} bytes)",
            f"snapshot_version     {self.snapshot_version}",
            f"has_cloudify_events  {str(self.has_cloudify_events).lower()}",
            f"manifest             {'yes' if self.has_manifest else 'no'}",
            f"documents            {self.total_documents:,}",
        ]
        for (index, doc_type), count in sorted(self.documents.items()):
            lines.append(f"  {index:<32} {doc_type:<26} {count:>10,}")
        lines.append("files")
        for folder, stats in sorted(self.folders.items()):
            lines.append(f"  {folder + '/':<32} {stats['files']:>6,} files {stats['bytes']:>14,} bytes")
        a = self.agents
        lines.append(
            f"agents               {plural(a.get('deployments', 0), 'deployment')}, "
            f"{plural(a.get('nodes', 0), 'Compute node')}, {plural(a.get('instances', 0), 'instance')}"
            f" ({a.get('empty', 0):,} empty)"
        )
        sealed = f", encrypted ({self.encryption}: agent keys, agents.json secrets)"
        lines.append(
            f"credentials          {plural(self.credentials, 'agent key')}"
            f"{sealed if self.encryption else ''}"
        )
        lines.append("members")
        for name in (METADATA, ES_DATA, AGENTS, MANIFEST, "influxdb_data", "manager.json"):
            if name in self.members:
                lines.append(f"  {name:<32} {self.members[name]:>14,} bytes")
        return "\n".join(lines)


def inspect_archive(
    path: str | Path,
    *,
    on_line: Callable[[int], None] | None = None,
    limits: ArchiveLimits | None = None,
) -> ArchiveReport:
    """Read `path` once and summarise it. Raises CorruptArchive/UnsupportedVersion on bad input,
    and CorruptArchive before reading anything when a member is past `limits` (default
    `ArchiveLimits()`)."""
    path = Path(path)
    with SnapshotReader(path, limits or ArchiveLimits()) as snap:
        meta = snap.metadata()
        report = ArchiveReport(
            path=str(path),
            archive_bytes=path.stat().st_size,
            snapshot_version=str(meta.get("snapshot_version")),
            has_cloudify_events=bool(meta.get("has_cloudify_events")),
            has_manifest=snap.has(MANIFEST),
        )
        folders: dict[str, Counter[str]] = {}
        for info in snap.infos():
            if info.is_dir():
                continue
            if "/" in info.filename:
                top = info.filename.split("/", 1)[0]
                stats = folders.setdefault(top, Counter())
                stats["files"] += 1
                stats["bytes"] += info.file_size
                if info.filename.startswith(CREDENTIALS_PREFIX) and info.filename.endswith("/agent_key"):
                    report.credentials += 1
            else:
                report.members[info.filename] = info.file_size
        report.folders = {k: dict(v) for k, v in folders.items()}

        counts: Counter[tuple[str, str]] = Counter()
        if snap.has(ES_DATA):
            for lineno, line in snap.iter_lines():
                parsed = parse_line(line, lineno)
                counts[(parsed.index, parsed.type)] += 1
                if on_line and lineno % 10_000 == 0:
                    on_line(lineno)
        report.documents = dict(counts)
        report.agents = _agent_stats(snap.iter_agents(raw=True))  # counts need no key
        encrypted = snap.encrypted
        report.encryption = str(encrypted.get("scheme")) if encrypted is not None else None
    return report


def _agent_stats(deployments: Iterable[tuple[str, Any]]) -> dict[str, int]:
    """Deployments, nodes, instances and empty entries of agents.json, streamed."""
    stats: Counter[str] = Counter(deployments=0)
    for _, nodes in deployments:
        stats["deployments"] += 1
        if not isinstance(nodes, dict):
            continue
        stats["nodes"] += len(nodes)
        for instances in nodes.values():
            if not isinstance(instances, dict):
                continue
            stats["instances"] += len(instances)
            stats["empty"] += sum(1 for v in instances.values() if not v)
    return dict(stats)
