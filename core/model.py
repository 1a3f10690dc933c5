"""The vocabulary of a Cloudify 3.x snapshot: versions, indices, document types, hit shapes.

Everything here is pure and dependency-free so that transforms, pipelines and tests share one
definition of what a "hit", a "version" or an "event index" is
(see ../shared/spec/cloudify-snapshots.md §2, §4, §5).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

from core.errors import UnsupportedVersion

__all__ = [
    "Doc",
    "Hit",
    "HitKey",
    "Version",
    "STORAGE_INDEX",
    "EVENTS_INDEX",
    "LOGSTASH_PREFIX",
    "STORAGE_TYPES",
    "EVENT_TYPES",
    "NEVER_IN_SNAPSHOT_TYPES",
    "FILE_FOLDERS",
    "COMPUTE_TYPE",
    "parse_version",
    "metadata_version",
    "hit_key",
    "is_event_index",
    "is_compute_node",
    "credentials_dir_name",
    "daily_index",
    "event_day",
    "event_day_of",
    "event_daily_index",
    "FLAT_BROKER_KEYS",
    "broker_config_from_flat",
    "INDEX_SETTINGS",
    "storage_mappings",
]

Doc = dict[str, Any]
"""A document's `_source`."""

Hit = dict[str, Any]
"""One es_data line: `{"_index", "_type", "_id", "_source", "_score"?}` in the *logical* layout
(Cloudify's own index and type names, whatever the server's physical layout)."""

HitKey = tuple[str, str, str]
"""(index, type, id): the identity of a document in a snapshot."""

STORAGE_INDEX = "cloudify_storage"
EVENTS_INDEX = "cloudify_events"
LOGSTASH_PREFIX = "logstash-"

STORAGE_TYPES = (
    "blueprint",
    "deployment",
    "node",
    "node_instance",
    "execution",
    "deployment_modification",
    "deployment_update",
    "plugin",
    "provider_context",
    "snapshot",
)
EVENT_TYPES = ("cloudify_event", "cloudify_log")
NEVER_IN_SNAPSHOT_TYPES = ("provider_context", "snapshot")
"""§4: create drops these from es_data."""

FILE_FOLDERS = ("blueprints", "uploaded-blueprints", "plugins", "deployments")
"""File-server folders a snapshot carries (`deployments` on 3.4+ only)."""

COMPUTE_TYPE = "cloudify.nodes.Compute"


class Version(str, Enum):
    """Snapshot format versions cfysnap knows, ordered oldest first."""

    V3_2 = "3.2"
    V3_3 = "3.3"
    V3_4 = "3.4"

    @property
    def order(self) -> int:
        return list(Version).index(self)

    def __lt__(self, other: object) -> bool:  # type: ignore[override]
        if not isinstance(other, Version):
            return NotImplemented
        return self.order < other.order

    def __le__(self, other: object) -> bool:  # type: ignore[override]
        if not isinstance(other, Version):
            return NotImplemented
        return self.order <= other.order


_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)*(?:-.*)?$")


def parse_version(text: object, where: str = "metadata.json") -> Version:
    """Map a `snapshot_version` string ("3.2", "3.3", "3.4.0", "3.4.2", …) to a Version.

    Raises UnsupportedVersion for anything else (including non-strings).
    """
    if isinstance(text, Version):
        return text
    if not isinstance(text, str):
        raise UnsupportedVersion(repr(text), where)
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise UnsupportedVersion(text, where)
    try:
        return Version(f"{int(m.group(1))}.{int(m.group(2))}")
    except ValueError:
        raise UnsupportedVersion(text, where) from None


def metadata_version(version: Version) -> str:
    """The `snapshot_version` a manager of `version` writes (§2): "3.2", "3.3", "3.4.0"."""
    return {Version.V3_2: "3.2", Version.V3_3: "3.3", Version.V3_4: "3.4.0"}[version]


def hit_key(hit: Hit) -> HitKey:
    return (hit["_index"], hit["_type"], hit["_id"])


def is_event_index(index: str) -> bool:
    return index == EVENTS_INDEX or index.startswith(LOGSTASH_PREFIX)


def is_compute_node(node: Doc) -> bool:
    return COMPUTE_TYPE in (node.get("type_hierarchy") or [])


def credentials_dir_name(deployment_id: str, node_id: str) -> str:
    """`snapshot-credentials/<deployment>_<node>/agent_key`: the node's storage `_id` (§6.4)."""
    return f"{deployment_id}_{node_id}"


# ------------------------------------------------------------------------- a manager's indices
INDEX_SETTINGS: dict[str, Any] = {"analysis": {"analyzer": {"default": {"tokenizer": "whitespace"}}}}
"""The settings a manager's bootstrap creates `cloudify_storage` with (and, on 3.2,
`cloudify_events`): the whitespace tokenizer as the default analyzer (spec §4, "Target index
mappings"; MB-3.3 `configure_es`, MB-3.4.2 `create.py`)."""

_DISABLED = {"enabled": False}


def storage_mappings(version: Version) -> dict[str, dict[str, Any]]:
    """The mapping types a `version` manager's bootstrap puts on `cloudify_storage`, exactly as
    its blueprint sends them (spec §4): not-indexed objects, `_id.path = "id"`, and node's
    `types` field indexed under the name `type`. 3.4 adds `execution.parameters` (not indexed)
    and the `deployment_update` type (MB-3.4.2)."""
    mappings: dict[str, dict[str, Any]] = {
        "blueprint": {"properties": {"plan": _DISABLED}},
        "deployment": {
            "properties": {
                name: _DISABLED
                for name in (
                    "workflows", "inputs", "policy_type", "policy_triggers", "groups", "outputs"
                )
            }
        },
        "node": {
            "_id": {"path": "id"},
            "properties": {
                "types": {"type": "string", "index_name": "type"},
                "properties": _DISABLED,
                "operations": _DISABLED,
                "relationships": _DISABLED,
            },
        },
        "node_instance": {
            "_id": {"path": "id"},
            "properties": {"runtime_properties": _DISABLED},
        },
        "deployment_modification": {
            "_id": {"path": "id"},
            "properties": {
                name: _DISABLED for name in ("modified_nodes", "node_instances", "context")
            },
        },
    }
    if version >= Version.V3_4:
        mappings["execution"] = {"properties": {"parameters": _DISABLED}}
        mappings["deployment_update"] = {
            "_id": {"path": "id"},
            "properties": {
                name: _DISABLED
                for name in (
                    "deployment_update_nodes",
                    "deployment_update_node_instances",
                    "deployment_update_deployment",
                    "deployment_plan",
                )
            },
        }
    return mappings


# ------------------------------------------------------------------------------- event days
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
    try:
        return moment.astimezone(UTC).date()
    except OverflowError:  # a time whose UTC day is outside the calendar (year 1 or 9999)
        return None


_UTC_ISO = re.compile(r"\d{4}-\d\d-\d\dT([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?Z", re.ASCII)
"""logstash's own `@timestamp` form ("2015-12-01T10:11:12.345Z"): its UTC day is its date."""


@functools.lru_cache(maxsize=4096)
def _iso_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def daily_index(day: date) -> str:
    """The daily event index of `day`: `logstash-YYYY.MM.DD` (cached: one per day of events)."""
    return f"{LOGSTASH_PREFIX}{day:%Y.%m.%d}"


def event_day(source: Doc) -> date | None:
    """The UTC day an event belongs to (its daily `logstash-YYYY.MM.DD` index), or None when it
    carries no usable time.

    `@timestamp` is logstash's ISO time and always UTC (a zone-less value is read as UTC);
    `timestamp` is the sender's local time with a numeric zone ("2015-12-01 10:11:12.345+0000")
    and is converted to UTC, because logstash names its daily index by the UTC day. A zone-less
    `timestamp` is ambiguous (the sender's zone is unknown), so it counts as unusable.
    """
    return event_day_of(source.get("@timestamp"), source.get("timestamp"))


def event_day_of(at_timestamp: object, timestamp: object) -> date | None:
    """`event_day` of a source whose `@timestamp` and `timestamp` are these (for a job that
    decodes only those two fields of an event). logstash's own `@timestamp` form is a valid time
    of day in UTC, so its day is its date part: the answer `_parse_utc_day` gives, found faster."""
    if isinstance(at_timestamp, str) and _UTC_ISO.fullmatch(at_timestamp):
        day = _iso_date(at_timestamp[:10])
    else:
        day = _parse_utc_day(at_timestamp, naive_is_utc=True)
    return day or _parse_utc_day(timestamp, naive_is_utc=False)


_DAILY_INDEX_OF_DATE: dict[str, str] = {}
"""`daily_index` of the `@timestamp` date parts `event_daily_index` met: a dict, not an
`lru_cache`, whose call costs more than the lookup (cleared at 4,096 dates)."""


def _daily_index_of_date(text: str) -> str | None:
    day = _iso_date(text)
    if day is None:
        return None
    if len(_DAILY_INDEX_OF_DATE) >= 4096:
        _DAILY_INDEX_OF_DATE.clear()
    index = _DAILY_INDEX_OF_DATE[text] = daily_index(day)
    return index


def event_daily_index(at_timestamp: object, timestamp: object) -> str | None:
    """`daily_index(event_day_of(at_timestamp, timestamp))`, or None when neither gives a
    usable time. logstash's own `@timestamp` form, nearly every event, takes one dict lookup
    of its date part (a restore asks it twice per event: its check and its load)."""
    if type(at_timestamp) is str and _UTC_ISO.fullmatch(at_timestamp):
        date_part = at_timestamp[:10]
        index = _DAILY_INDEX_OF_DATE.get(date_part) or _daily_index_of_date(date_part)
        if index is not None:
            return index
    day = event_day_of(at_timestamp, timestamp)
    return None if day is None else daily_index(day)


# ----------------------------------------------------------------------------- agents.json
FLAT_BROKER_KEYS = (
    "broker_user",
    "broker_pass",
    "broker_ip",
    "broker_ssl_enabled",
    "broker_ssl_cert",
)
"""The broker keys 3.2 and 3.3.0 agent entries hold flat, which 3.3.1+ keep in `broker_config`."""


def _ssl_enabled(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def broker_config_from_flat(agent: dict[str, Any]) -> dict[str, Any]:
    """An agent entry with its flat broker keys moved into `broker_config`, which gains
    `broker_port` as the **integer** 5671 (SSL) or 5672 (no SSL): what a 3.3.1+ manager's
    `BootstrapContext.broker_config()` writes (its restore's own conversion writes the strings
    "5671"/"5672"; both restore fine). Every other key stays. A new dict; `agent` is unchanged."""
    broker = {k: agent[k] for k in FLAT_BROKER_KEYS if k in agent}
    broker["broker_port"] = 5671 if _ssl_enabled(broker.get("broker_ssl_enabled")) else 5672
    rest = {k: v for k, v in agent.items() if k not in FLAT_BROKER_KEYS}
    return {**rest, "broker_config": broker}
