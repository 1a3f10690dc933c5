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

from datetime import UTC, date, datetime
from typing import Any

from pipelines.errors import CorruptArchive
from pipelines.model import (
    EVENTS_INDEX,
    LOGSTASH_PREFIX,
    Doc,
    Hit,
    Version,
    metadata_version,
)

__all__ = [
    "SOURCE",
    "TARGET",
    "upgrade_hit",
    "upgrade_metadata",
    "upgrade_agents",
    "event_day",
]

SOURCE = Version.V3_2
TARGET = Version.V3_3

FLAT_BROKER_KEYS = (
    "broker_user",
    "broker_pass",
    "broker_ip",
    "broker_ssl_enabled",
    "broker_ssl_cert",
)
BROKER_PORT_SSL = 5671
BROKER_PORT_NO_SSL = 5672


def _with_missing(doc: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`doc` plus the keys of `defaults` it lacks; `doc` itself when it lacks none."""
    missing = {k: v for k, v in defaults.items() if k not in doc}
    return {**doc, **missing} if missing else doc


# --- es_data documents -------------------------------------------------------------------------


def upgrade_execution(doc: Doc) -> Doc:
    return _with_missing(doc, {"is_system_workflow": False})


def _parse_utc_day(value: object, *, naive_is_utc: bool) -> date | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        if not naive_is_utc:
            return None
        return moment.date()
    return moment.astimezone(UTC).date()


def event_day(source: Doc) -> date | None:
    """The UTC day an event belongs to, or None when it carries no usable time.

    `@timestamp` is logstash's ISO time and always UTC (a zone-less value is read as UTC);
    `timestamp` is the sender's local time with a numeric zone ("2015-12-01 10:11:12.345+0000")
    and is converted to UTC, because logstash names its daily index by the UTC day. A zone-less
    `timestamp` is ambiguous (the sender's zone is unknown), so it counts as unusable.
    """
    return _parse_utc_day(source.get("@timestamp"), naive_is_utc=True) or _parse_utc_day(
        source.get("timestamp"), naive_is_utc=False
    )


def _move_event(hit: Hit) -> Hit:
    source = hit.get("_source")
    day = event_day(source) if isinstance(source, dict) else None
    if day is None:
        # The daily index must come from the event's own time. Falling back to "today" (what the
        # 3.3 restore does) or any other guess would silently misfile the event into a day it
        # does not belong to, where curator rotation and day-based queries treat it wrongly,
        # so a convert that cannot place an event fails, naming the document.
        raise CorruptArchive(
            "es_data",
            None,
            f"event {hit.get('_type')}/{hit.get('_id')} has no parseable @timestamp or timestamp",
        )
    return {**hit, "_index": f"{LOGSTASH_PREFIX}{day:%Y.%m.%d}"}


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


def _ssl_enabled(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def upgrade_agent(agent: object) -> object:
    """One agent entry: flat broker keys -> `broker_config` (with integer `broker_port`)."""
    if not isinstance(agent, dict) or not agent or "broker_config" in agent:
        return agent
    flat = {k: agent[k] for k in FLAT_BROKER_KEYS if k in agent}
    if not flat:
        return agent
    port = BROKER_PORT_SSL if _ssl_enabled(flat.get("broker_ssl_enabled")) else BROKER_PORT_NO_SSL
    rest = {k: v for k, v in agent.items() if k not in FLAT_BROKER_KEYS}
    return {**rest, "broker_config": {**flat, "broker_port": port}}


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
