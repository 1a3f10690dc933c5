"""Deterministic sample Cloudify 3.2/3.3/3.4 managers: hits, agents.json, files, archives."""

from pipelines.sample.generate import (
    ManagerSpec,
    agents_json,
    document_count,
    file_members,
    iter_agents_json,
    key_paths,
    manager_hits,
    manager_ip,
    provider_context,
    snapshot_hits,
    type_counts,
    write_file_tree,
)

__all__ = [
    "ManagerSpec",
    "agents_json",
    "document_count",
    "file_members",
    "iter_agents_json",
    "key_paths",
    "manager_hits",
    "manager_ip",
    "provider_context",
    "snapshot_hits",
    "type_counts",
    "write_file_tree",
]
