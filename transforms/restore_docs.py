"""The restore's own document changes, as pure functions (spec §6.3, §6.4, §6.5, §9).

These run after the version upgrade (`transforms.versions`) on every es_data hit that a restore
writes, and `verify` runs the very same functions to compute what the target should hold:

- **Events** (`route_event`): every event or log goes to `logstash-YYYY.MM.DD`, the UTC day of
  its own `@timestamp` (else `timestamp`), whatever its index in the archive and whatever the
  date of the restore. The target index is therefore a function of the document alone, and the
  `_id` is kept: restoring the same snapshot again — also after deleting every blueprint and
  deployment, the documented 3.x duplication case — overwrites the same documents, and one event
  present twice in an archive under different indices (`cloudify_events` and `logstash-…`) lands
  once: events are de-duplicated by (type, id) independent of the archive's `_index`. An event
  with no usable time raises `CorruptArchive` (a restore finds it in its check pass, before
  writing anything).
- **Credentials** (`rewrite_key_path`): a Compute node whose key the archive carries gets
  `properties.cloudify_agent.key` = the absolute path the restore wrote the key to. Applied to
  the node document before it is bulk-loaded, so each node is written once and never points at
  a key path of the old manager (3.x did a partial update after the bulk).
- **Agents** (`merge_agent`): the agents.json entry of a node instance is merged into its
  `runtime_properties.cloudify_agent` by the 3.3.1 / 3.4 rules (§6.3): flat broker keys move into
  `broker_config` with `broker_port`; an empty `broker_config.broker_ip` falls back to the
  runtime `cloudify_agent.manager_ip` (else ""); the merge is shallow (agents.json keys win);
  `runtime_properties.agent_status` is removed.

  `broker_port` is written as an **integer** (5671 with SSL, 5672 without): that is what a 3.3.1+
  manager's own `BootstrapContext.broker_config()` produces and what the 3.2→3.3 convert step
  writes, so every restored instance has one type whatever the archive's version; the 3.3.1
  restore's string form was an accident of its flat-key conversion (§9), and AMQP clients accept
  both.

Functions never mutate their input; an unchanged document is returned as the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from core.archive import ES_DATA, EsDataLine
from core.errors import CorruptArchive
from core.model import (
    EVENTS_INDEX,
    LOGSTASH_PREFIX,
    STORAGE_INDEX,
    Doc,
    Hit,
    broker_config_from_flat,
    daily_index,
    event_daily_index,
    event_day,
    is_event_index,
)

__all__ = [
    "Agent",
    "AgentWarning",
    "event_index",
    "route_event",
    "key_target",
    "rewrite_key_path",
    "normalise_agent",
    "merge_agent",
    "deployment_entries",
    "restore_hit",
    "restored_key",
    "restored_line_index",
    "restore_reads_source",
    "restore_line",
    "restore_line_as_is",
    "agent_deployment",
    "line_deployment_id",
]

KEY_FILE = "agent_key"

Agent = dict[str, Any]
"""One agents.json entry (the agent/broker dict of one node instance)."""


@dataclass(frozen=True)
class AgentWarning:
    """A part of agents.json the restore skipped. Never carries secrets: ids and a shape only."""

    deployment: str
    reason: str

    def __str__(self) -> str:
        return f"agents.json: deployment {self.deployment}: {self.reason}"


# ------------------------------------------------------------------------------------- events
def event_index(hit: Hit) -> str:
    """`logstash-YYYY.MM.DD` from the event's own time (UTC day of `@timestamp`, else `timestamp`)."""
    source = hit.get("_source")
    day = event_day(source) if isinstance(source, dict) else None
    if day is None:
        raise _no_time(hit.get("_type"), hit.get("_id"))
    return daily_index(day)


def _no_time(doc_type: object, doc_id: object) -> CorruptArchive:
    return CorruptArchive(
        ES_DATA, None, f"event {doc_type}/{doc_id} has no parseable @timestamp or timestamp"
    )


def route_event(hit: Hit) -> Hit:
    """An event/log hit with `_index` set by `event_index`; any other hit unchanged."""
    if not is_event_index(hit["_index"]):
        return hit
    index = event_index(hit)
    return hit if index == hit["_index"] else {**hit, "_index": index}


def restored_key(hit: Hit) -> tuple[str, str, str]:
    """(index, type, id) a hit is written to on the target (before any other change)."""
    index = event_index(hit) if is_event_index(hit["_index"]) else hit["_index"]
    return (index, hit["_type"], hit["_id"])


class _EventTimes(msgspec.Struct, gc=False):
    at_timestamp: Any = msgspec.field(name="@timestamp", default=None)
    timestamp: Any = None


_EVENT_TIMES = msgspec.json.Decoder(_EventTimes)


def restored_line_index(line: EsDataLine) -> str:
    """The `_index` `restored_key` gives, of an es_data line whose source is still bytes: an
    event's (its own day's) from its source's two time fields, read alone; CorruptArchive when
    neither gives a usable time. (`is_event_index` written out: this runs for every document
    of a restore, twice.)"""
    index = line.index
    if index != EVENTS_INDEX and not index.startswith(LOGSTASH_PREFIX):
        return index
    times = _EVENT_TIMES.decode(line.source)
    daily = event_daily_index(times.at_timestamp, times.timestamp)
    if daily is None:
        raise _no_time(line.type, line.id)
    return daily


def restore_reads_source(index: str, doc_type: str) -> bool:
    """Whether `restore_hit` can change the `_source` of a hit of (index, type): nodes (their
    key path) and node instances (their agent) of the storage index. Of any other hit it
    changes at most the `_index` (an event's own day), which `restored_line_index` reads from the
    source's two time fields."""
    return index == STORAGE_INDEX and doc_type in ("node", "node_instance")


def restore_line(line: EsDataLine) -> Hit:
    """`restore_hit` of a line that no version step touches and whose source the restore leaves
    as it is (`restore_reads_source` False, or `restore_line_as_is` says so): the hit as it is
    written, its `_source` still the archive's bytes (`msgspec.Raw`), its `_index` the one
    `restored_line_index` gives."""
    return {"_index": restored_line_index(line), "_type": line.type, "_id": line.id, "_source": line.source}


def restore_line_as_is(
    line: EsDataLine,
    *,
    key_paths: Mapping[str, str],
    agents: Mapping[str, tuple[str, Agent]],
) -> Hit | None:
    """`restore_line(line)` for a line no version step touches when `restore_hit` leaves its
    source as it is, told without decoding that source whole: a node without a key path of the
    archive's; a node instance without a non-empty agents.json entry of its own deployment (its
    `deployment_id` alone decoded). None when `restore_hit` may change it (a node whose key path
    only its source shows, an instance that gets its agent): the caller decodes that one."""
    if line.index == STORAGE_INDEX:
        if line.type == "node" and line.id in key_paths:
            return None
        if line.type == "node_instance":
            deployment = agent_deployment(agents, line.id)  # one lookup: an SQLite file
            if deployment is not None and line_deployment_id(line) == deployment:
                return None
    return restore_line(line)


def agent_deployment(agents: Mapping[str, tuple[str, Agent]], instance_id: str) -> str | None:
    """The deployment of `instance_id`'s non-empty agents.json entry, or None. An index that
    answers it itself (`AgentIndex.agent_deployment`, without decoding the entry) is asked."""
    answer = getattr(agents, "agent_deployment", None)  # AgentIndex imports this module
    if answer is not None:
        return answer(instance_id)  # type: ignore[no-any-return]
    found = agents.get(instance_id)
    return found[0] if found is not None and found[1] else None


class _InstanceDeployment(msgspec.Struct, gc=False):
    deployment_id: Any = None


_INSTANCE_DEPLOYMENT = msgspec.json.Decoder(_InstanceDeployment)


def line_deployment_id(line: EsDataLine) -> Any:
    """A node instance's `deployment_id`, its source decoded for that field only."""
    return _INSTANCE_DEPLOYMENT.decode(line.source).deployment_id


# -------------------------------------------------------------------------------- credentials
def key_target(credentials_dir: Path | str, name: str) -> str:
    """The absolute path a restore writes node `name`'s key to: `<dir>/<name>/agent_key`."""
    return str(Path(credentials_dir).absolute() / name / KEY_FILE)


def rewrite_key_path(node: Doc, key_path: str) -> Doc:
    """A node document whose `properties.cloudify_agent.key` is `key_path` (created if missing)."""
    properties = node.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    agent = properties.get("cloudify_agent")
    if not isinstance(agent, dict):
        agent = {}
    if agent.get("key") == key_path:
        return node
    return {**node, "properties": {**properties, "cloudify_agent": {**agent, "key": key_path}}}


# ------------------------------------------------------------------------------------- agents
def normalise_agent(agent: Agent, runtime_agent: Mapping[str, Any]) -> Agent:
    """An agents.json entry in the 3.3.1 form: `broker_config` (from the flat keys if it has none,
    with an integer `broker_port`), whose empty `broker_ip` falls back to the runtime `manager_ip`.
    Raises ValueError when `broker_config` is present but not an object."""
    if "broker_config" in agent:
        broker = agent["broker_config"]
        if not isinstance(broker, dict):
            raise ValueError(f"broker_config is a {type(broker).__name__}, not an object")
        rest = dict(agent)
    else:
        rest = broker_config_from_flat(agent)
        broker = rest["broker_config"]
    if not broker.get("broker_ip"):
        broker = {**broker, "broker_ip": runtime_agent.get("manager_ip") or ""}
    rest["broker_config"] = broker
    return rest


def merge_agent(instance: Doc, agent: Agent) -> Doc:
    """A node_instance document with `agent` merged into `runtime_properties.cloudify_agent`
    (§6.3, 3.3.1 rules) and `runtime_properties.agent_status` removed. An empty entry (an
    instance that was not started when a 3.2 snapshot was taken) leaves the document as is."""
    if not agent:
        return instance
    runtime = instance.get("runtime_properties")
    if not isinstance(runtime, dict):
        runtime = {}
    current = runtime.get("cloudify_agent")
    if not isinstance(current, dict):
        current = {}
    merged = {**current, **normalise_agent(agent, current)}
    new_runtime = {k: v for k, v in runtime.items() if k != "agent_status"}
    new_runtime["cloudify_agent"] = merged
    return {**instance, "runtime_properties": new_runtime}


def deployment_entries(nodes: object) -> tuple[list[tuple[str, Agent]], str | None]:
    """A deployment's agents.json entries as (instance id, entry), or why the deployment is left
    out whole (a malformed part), as the 3.4.0.2+ restore does (per-deployment try/except: one
    broken deployment never fails a restore)."""
    if not isinstance(nodes, dict):
        return [], f"is a {type(nodes).__name__}, not an object of nodes"
    entries: list[tuple[str, Agent]] = []
    for node_id, instances in nodes.items():
        if not isinstance(instances, dict):
            return [], f"node {node_id} is a {type(instances).__name__}, not an object of instances"
        for instance_id, entry in instances.items():
            if not isinstance(entry, dict):
                return [], f"instance {instance_id} is a {type(entry).__name__}, not an object"
            if entry:
                try:
                    normalise_agent(entry, {})
                except ValueError as exc:
                    return [], f"instance {instance_id}: {exc}"
            entries.append((instance_id, entry))
    return entries, None


# ----------------------------------------------------------------------------------- combined
def restore_hit(
    hit: Hit,
    *,
    key_paths: Mapping[str, str],
    agents: Mapping[str, tuple[str, Agent]],
) -> Hit:
    """Every restore change for one (already upgraded) hit: event routing, the node's new key
    path (`key_paths`: node storage `_id` → absolute key path), the instance's agent merge
    (`agents`: instance id → (deployment, entry), an `AgentIndex`; applied when the instance's
    deployment matches)."""
    hit = route_event(hit)
    if hit["_index"] != STORAGE_INDEX:
        return hit
    source = hit.get("_source")
    if not isinstance(source, dict):
        return hit
    new = source
    if hit["_type"] == "node" and hit["_id"] in key_paths:
        new = rewrite_key_path(source, key_paths[hit["_id"]])
    elif hit["_type"] == "node_instance":
        found = agents.get(hit["_id"])  # one lookup: `agents` is an SQLite file
        if found is not None and source.get("deployment_id") == found[0]:
            new = merge_agent(source, found[1])
    return hit if new is source else {**hit, "_source": new}
