"""3.2 -> 3.3: daily event indices, broker_config in agents.json, system-workflow flags.

What changes in the format between a 3.2 snapshot (the 3.2 snapshots tool's) and a 3.3 one
(spec §6.3, §6.5), done offline. The documents' 3.3 defaults (`workflows.install_new_agents`,
the `create_amqp`/`validate_amqp` operations, blueprint `description`/`main_file_name`) are the
§6.2 table, which a 3.3 or 3.4 restore applies to every snapshot whatever its version: they are
`defaults.py`, applied at the end of every plan (`plan()`), not here.

- execution: `is_system_workflow` false where missing.
- events: every hit in index `cloudify_events` moves to `logstash-YYYY.MM.DD`, the UTC day of the
  event's own `@timestamp` (else `timestamp`), never the day of the conversion; a hit with neither
  raises CorruptArchive. Hits already in `logstash-*` are unchanged.
- metadata.json: `snapshot_version` "3.3", `has_cloudify_events` false (no event is left in
  `cloudify_events`, so a restore must not rename them again).
- agents.json: in each non-empty agent entry without `broker_config`, the flat keys `broker_user`,
  `broker_pass`, `broker_ip`, `broker_ssl_enabled`, `broker_ssl_cert` move into `broker_config`,
  which gains `broker_port` as the **integer** 5671 (SSL) or 5672 (no SSL). Integer because that is
  what a 3.3.1 manager writes into its own snapshots (`BootstrapContext.broker_config()`); the
  restore's own flat-key conversion writes the strings "5671"/"5672", and both restore fine.
  Every other key stays, `version` included (it is the agent's version, not the manager's).
  Empty entries (instances that were not started) stay empty; entries that already have
  `broker_config`, or have no flat broker key at all, are unchanged.

Only missing things are added, so the step is idempotent. Unknown types and fields pass through.
Functions never mutate their input: changed dicts are rebuilt level by level (unchanged
sub-objects are shared), and an unchanged document is returned as the very same object.
"""

from __future__ import annotations

from typing import Any

from core.errors import CorruptArchive
from core.model import (
    EVENTS_INDEX,
    FLAT_BROKER_KEYS,
    Doc,
    Hit,
    Version,
    broker_config_from_flat,
    event_daily_index,
    metadata_version,
)

__all__ = [
    "SOURCE",
    "TARGET",
    "touches",
    "MOVE_FIELDS",
    "moves_index",
    "moved_index",
    "upgrade_hit",
    "upgrade_metadata",
    "upgrade_agents",
]

SOURCE = Version.V3_2
TARGET = Version.V3_3



def _with_missing(doc: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`doc` plus the keys of `defaults` it lacks; `doc` itself when it lacks none."""
    missing = {k: v for k, v in defaults.items() if k not in doc}
    return {**doc, **missing} if missing else doc


# --- es_data documents -------------------------------------------------------------------------


def upgrade_execution(doc: Doc) -> Doc:
    return _with_missing(doc, {"is_system_workflow": False})


MOVE_FIELDS = ("@timestamp", "timestamp")
"""The `_source` fields an event's daily index is read from (`moved_index`)."""


def moves_index(index: str, doc_type: str) -> bool:
    """Whether `upgrade_hit` changes hits of this (index, type) in their `_index` alone, to
    `moved_index` of their `MOVE_FIELDS` (or refuses them when that is None): every hit in
    `cloudify_events`."""
    return index == EVENTS_INDEX


def moved_index(at_timestamp: object, timestamp: object) -> str | None:
    """The daily index of an event whose `@timestamp` and `timestamp` are these; None when
    neither gives a usable time."""
    return event_daily_index(at_timestamp, timestamp)


def _move_event(hit: Hit) -> Hit:
    source = hit.get("_source")
    index = (
        moved_index(*(source.get(name) for name in MOVE_FIELDS)) if isinstance(source, dict) else None
    )
    if index is None:
        # The daily index must come from the event's own time. Falling back to "today" (what the
        # 3.3 restore does) or any other guess would silently misfile the event into a day it
        # does not belong to, where curator rotation and day-based queries treat it wrongly,
        # so a convert that cannot place an event fails, naming the document.
        raise CorruptArchive(
            "es_data",
            None,
            f"event {hit.get('_type')}/{hit.get('_id')} has no parseable @timestamp or timestamp",
        )
    return {**hit, "_index": index}


def touches(index: str, doc_type: str) -> bool:
    """What `upgrade_hit` can change: every hit in `cloudify_events`, and executions."""
    return index == EVENTS_INDEX or doc_type == "execution"


def upgrade_hit(hit: Hit) -> Hit:
    """One es_data line in, one out. Events in `cloudify_events` (any `_type`: nothing may be
    left in an index the metadata says is gone) get their daily `logstash-` index; executions
    get `is_system_workflow`; anything else is returned as is (the same object)."""
    if hit.get("_index") == EVENTS_INDEX:
        return _move_event(hit)
    source = hit.get("_source")
    if hit.get("_type") != "execution" or not isinstance(source, dict):
        return hit
    new_source = upgrade_execution(source)
    return hit if new_source is source else {**hit, "_source": new_source}


# --- metadata.json -----------------------------------------------------------------------------


def upgrade_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    wanted = {"snapshot_version": metadata_version(TARGET), "has_cloudify_events": False}
    if all(k in meta and meta[k] == v and type(meta[k]) is type(v) for k, v in wanted.items()):
        return meta
    return {**meta, **wanted}


# --- agents.json -------------------------------------------------------------------------------


def upgrade_agent(agent: object) -> object:
    """One agent entry: flat broker keys -> `broker_config` (with integer `broker_port`)."""
    if not isinstance(agent, dict) or not agent or "broker_config" in agent:
        return agent
    if not any(k in agent for k in FLAT_BROKER_KEYS):
        return agent
    return broker_config_from_flat(agent)


def _map_changed(mapping: object, fn: Any) -> object:
    """`{k: fn(v)}` for a dict, rebuilt only when some value changed; anything else as is."""
    if not isinstance(mapping, dict):
        return mapping
    new = {k: fn(v) for k, v in mapping.items()}
    return mapping if all(new[k] is v for k, v in mapping.items()) else new


def upgrade_agents(agents: dict[str, Any]) -> dict[str, Any]:
    """The whole agents.json: deployment -> compute node -> node instance -> agent entry."""

    def node(instances: object) -> object:
        return _map_changed(instances, upgrade_agent)

    def deployment(nodes: object) -> object:
        return _map_changed(nodes, node)

    return _map_changed(agents, deployment)  # type: ignore[return-value]
