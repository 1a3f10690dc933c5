"""3.3 -> 3.4: the snapshot_version only.

A 3.3 snapshot and a 3.4 one have the same format (spec §6.6): the same members, the same
agents.json (the 3.3.1 `broker_config` form is the 3.4 form), the same document types. What a 3.4
restore adds to the documents (scaling fields, instance bounds, the `agent` plugin, plugin
package fields, and again every 3.3 default) is the §6.2 table, which it applies to every
snapshot whatever its version: that is `defaults.py`, applied at the end of every plan, not here.

- metadata.json: `snapshot_version` "3.4.0"; `has_cloudify_events` unchanged.
- es_data and agents.json: unchanged.

Not done here (the 3.4 restore does it against the target): dropping `plugin` documents whose
archive the target already has, and installing the others.
"""

from __future__ import annotations

from typing import Any

from core.model import Hit, Version, metadata_version

__all__ = ["SOURCE", "TARGET", "touches", "upgrade_hit", "upgrade_metadata", "upgrade_agents"]

SOURCE = Version.V3_3
TARGET = Version.V3_4


def touches(index: str, doc_type: str) -> bool:
    """`upgrade_hit` changes no hit."""
    return False


def upgrade_hit(hit: Hit) -> Hit:
    """Identity: no document changes format between 3.3 and 3.4."""
    return hit


def upgrade_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    version = metadata_version(TARGET)
    if meta.get("snapshot_version") == version:
        return meta
    return {**meta, "snapshot_version": version}


def upgrade_agents(agents: dict[str, Any]) -> dict[str, Any]:
    """Identity: a 3.3 agents.json (3.3.1 `broker_config` form) is already the 3.4 form."""
    return agents
