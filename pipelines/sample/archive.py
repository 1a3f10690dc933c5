"""A complete snapshot archive of a generated manager, as that manager's version writes it (§1-§4)."""

from __future__ import annotations

from pathlib import Path

from core.archive import AGENTS, METADATA, SnapshotWriter
from core.model import Version, metadata_version
from pipelines.sample.generate import (
    ManagerSpec,
    file_members,
    iter_agents_json,
    manager_ip,
    snapshot_hits,
)

__all__ = ["write_sample_archive", "sample_metadata"]


def sample_metadata(spec: ManagerSpec) -> dict[str, object]:
    """metadata.json of the manager's snapshot: 3.2 (T32) has `cloudify_events`, 3.3+ daily
    logstash indices (§2)."""
    return {
        "has_cloudify_events": spec.version == Version.V3_2,
        "snapshot_version": metadata_version(spec.version),
    }


def write_sample_archive(spec: ManagerSpec, path: Path) -> None:
    """Write the snapshot archive of `spec`'s manager to `path`, atomically.

    Members: metadata.json, es_data (`snapshot_hits`, one `json.dumps(hit)` per line), agents.json
    (streamed), then the file members (blueprints, uploaded-blueprints, plugins 3.3+, deployments
    3.4, snapshot-credentials), and for 3.2 manager.json `{"MANAGEMENT_IP": ...}` as T32 writes it.
    Memory does not grow with the spec's size. Deterministic apart from cfysnap's manifest.
    """
    with SnapshotWriter(path) as w:
        w.write_json(METADATA, sample_metadata(spec))
        w.write_hits(snapshot_hits(spec))
        with w.open_member(AGENTS) as f:
            for piece in iter_agents_json(spec):
                f.write(piece.encode())
        for name, data in file_members(spec):
            w.write_bytes(name, data)
        if spec.version == Version.V3_2:
            w.write_json("manager.json", {"MANAGEMENT_IP": manager_ip(spec)})
