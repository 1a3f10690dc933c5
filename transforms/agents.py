"""Build a snapshot's agents.json from a manager's documents (spec §3).

agents.json maps deployment → Compute node → node instance → agent dict. It is built from three
small projections of the documents, never from whole documents (principle 12):

    pages ──page_agent_facts──▶ [(deployment id, fact)] ──StageFacts──▶ fact files by
         bucket of deployment ids ──GroupByKey(bucket)──▶ one bucket's files
         ──deployment_agents──▶ '"<dep>": {...}' fragments ──WriteFragments──▶ fragment files
         ──AssembleAgentsJson──▶ ArchiveMember("agents.json", source=<staged file>)
                                 (deployments sorted by id: the same bytes on every runner)

A fact is a `DeploymentFact` (the deployment exists), a `NodeFact` (a Compute node: only what the
agent dict needs) or an `InstanceFact` (a node instance: state, runtime ip and
`runtime_properties.cloudify_agent`). Facts are staged in files, never shuffled as elements:
an in-memory runner's GroupByKey holds everything grouped until the stage ends (a fact per node
instance: ~40 MB of a 1M-document manager's create); only `FACT_BUCKETS` (bucket, file) pairs
are grouped, and one bucket's facts are read at a time. The whole agents.json is streamed from
the fragment files into one staged file, so no step holds it all.

The agent dict has the form the source version's tool wrote:
- 3.3 / 3.4 (`agent_v33`): the 3.3.1 form, `{"version", "broker_config"}` from the bootstrap
  (provider context) defaults, each key overridden by the instance's runtime `cloudify_agent`.
- 3.2 (`agent_v32`): the 3.2.1 snapshots tool's flat form, `{}` for instances not `started`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import msgspec
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.windowed_value import WindowedValue

from core.archive import AGENTS
from core.crypto import Encryption, encrypt_agents
from core.model import STORAGE_INDEX, Doc, Hit, Version, is_compute_node, metadata_version
from core.search import RawHit
from transforms._beam import RunOnce, in_global_window
from transforms.shards import ArchiveMember

__all__ = [
    "AgentDefaults",
    "DeploymentFact",
    "NodeFact",
    "InstanceFact",
    "WINDOWS_TYPE",
    "agent_defaults",
    "agent_facts",
    "page_agent_facts",
    "encode_fact",
    "decode_fact",
    "agent_v33",
    "agent_v32",
    "deployment_agents",
    "agents_fragment",
    "BuildAgentsJson",
]

WINDOWS_TYPE = "cloudify.openstack.nodes.WindowsServer"
_JSON_DECODE = msgspec.json.decode
_FLAT_BROKER_V32 = {
    "3.2": {"broker_user": "guest", "broker_pass": "guest"},
    "3.2.1": {"broker_user": "cloudify", "broker_pass": "c10udify"},
}
"""T32 writes `guest`/`guest` for 3.2 managers, `cloudify`/`c10udify` for 3.2.1 (§3.3)."""


# ------------------------------------------------------------------------------------ facts
@dataclass(frozen=True)
class DeploymentFact:
    """The deployment exists: it gets a key in agents.json even without Compute nodes."""


@dataclass(frozen=True)
class NodeFact:
    """What agents.json needs of a Compute node."""

    node_id: str
    windows: bool
    agent_properties: dict[str, Any] = field(default_factory=dict, hash=False)
    """`properties.cloudify_agent` without `key` (user, password, ...)."""
    ip: str | None = None
    """`properties.ip`, if any."""


@dataclass(frozen=True)
class InstanceFact:
    """What agents.json needs of a node instance (of any node: the join decides)."""

    instance_id: str
    node_id: str
    state: str
    runtime_agent: dict[str, Any] | None = field(default=None, hash=False)
    """`runtime_properties.cloudify_agent`, if it is an object."""
    ip: str | None = None
    """`runtime_properties.ip`, if any."""


Fact = DeploymentFact | NodeFact | InstanceFact


EncodedFact = tuple[Any, ...]
"""A fact as staged: a tuple of primitives (dicts as JSON text), ~5x smaller than a pickle."""


def encode_fact(fact: Fact) -> EncodedFact:
    if isinstance(fact, DeploymentFact):
        return ("d",)
    if isinstance(fact, NodeFact):
        return ("n", fact.node_id, fact.windows, json.dumps(fact.agent_properties), fact.ip)
    agent = None if fact.runtime_agent is None else json.dumps(fact.runtime_agent)
    return ("i", fact.instance_id, fact.node_id, fact.state, agent, fact.ip)


def decode_fact(encoded: EncodedFact) -> Fact:
    kind = encoded[0]
    if kind == "d":
        return DeploymentFact()
    if kind == "n":
        _, node_id, windows, props, ip = encoded
        return NodeFact(node_id, windows, json.loads(props), ip)
    _, instance_id, node_id, state, agent, ip = encoded
    return InstanceFact(
        instance_id, node_id, state, None if agent is None else json.loads(agent), ip
    )


def agent_facts(hit: Hit) -> Iterator[tuple[str, Fact]]:
    """(deployment id, fact) of one hit: deployments, Compute nodes and the instances of hosts.

    Only host instances (`host_id` is the instance's own id: Cloudify makes every instance of a
    Compute node its own host, and only those) can be in agents.json, so only they are kept.
    """
    if hit.get("_index") != STORAGE_INDEX:
        return
    doc: Doc = hit.get("_source") or {}
    doc_type = hit.get("_type")
    if doc_type == "deployment":
        yield str(hit["_id"]), DeploymentFact()
    elif doc_type == "node" and is_compute_node(doc):
        props = doc.get("properties") or {}
        agent = props.get("cloudify_agent")
        agent = {k: v for k, v in agent.items() if k != "key"} if isinstance(agent, dict) else {}
        hierarchy = doc.get("type_hierarchy") or []
        yield (
            str(doc.get("deployment_id")),
            NodeFact(str(doc.get("id")), WINDOWS_TYPE in hierarchy, agent, props.get("ip")),
        )
    elif doc_type == "node_instance":
        instance_id = str(doc.get("id", hit["_id"]))
        if doc.get("host_id") != instance_id:
            return
        runtime = doc.get("runtime_properties") or {}
        agent = runtime.get("cloudify_agent")
        yield (
            str(doc.get("deployment_id")),
            InstanceFact(
                instance_id,
                str(doc.get("node_id")),
                str(doc.get("state")),
                agent if isinstance(agent, dict) else None,
                runtime.get("ip"),
            ),
        )


# ------------------------------------------------------------------------- agent dicts
@dataclass(frozen=True)
class AgentDefaults:
    """The source manager's defaults for agent dicts (from its provider context)."""

    version: Version
    bootstrap: dict[str, Any] = field(hash=False)
    """`context.cloudify.cloudify_agent` of the provider context (may be empty)."""
    manager_ip: str = ""
    release: str = ""
    """"3.2.1" for a 3.2.1 manager (its tool's agent dicts differ from 3.2's); else the version."""

    @property
    def broker_config(self) -> dict[str, Any]:
        """`BootstrapContext.broker_config()` of 3.3.1 / 3.4 (§3.2): `broker_port` an int."""
        b = self.bootstrap
        ssl = bool(b.get("broker_ssl_enabled", False))
        return {
            "broker_ip": b.get("broker_ip") or self.manager_ip,
            "broker_user": b.get("broker_user") or "guest",
            "broker_pass": b.get("broker_pass") or "guest",
            "broker_ssl_enabled": ssl,
            "broker_ssl_cert": b.get("broker_ssl_cert") or "",
            "broker_port": 5671 if ssl else 5672,
        }


def agent_defaults(
    version: Version, provider_context: Doc | None, release: str = ""
) -> AgentDefaults:
    """Defaults from a provider context document (`{"name", "context": {...}}`), or none."""
    cloudify = ((provider_context or {}).get("context") or {}).get("cloudify") or {}
    bootstrap = cloudify.get("cloudify_agent") or {}
    if not isinstance(bootstrap, dict):
        bootstrap = {}
    return AgentDefaults(
        version, dict(bootstrap), str(bootstrap.get("broker_ip") or ""), release or version.value
    )


def agent_v33(instance: InstanceFact, defaults: AgentDefaults) -> dict[str, Any]:
    """3.3.1 / 3.4 agent dict (§3.2): `version` and `broker_config`, each overridden as a whole
    by the same key of the instance's runtime `cloudify_agent`."""
    base = {"version": metadata_version(defaults.version), "broker_config": defaults.broker_config}
    runtime = instance.runtime_agent or {}
    return {key: runtime.get(key, value) for key, value in base.items()}


def agent_v32(instance: InstanceFact, node: NodeFact, defaults: AgentDefaults) -> dict[str, Any]:
    """The 3.2.1 snapshots tool's agent dict (§3.3): `{}` unless the instance is `started`;
    else bootstrap `cloudify_agent` overlaid by the node's, flat broker keys. `version` and the
    broker credentials are those the tool writes for the manager's release (3.2 or 3.2.1)."""
    if instance.state != "started":
        return {}
    merged = {**defaults.bootstrap, **node.agent_properties}
    agent: dict[str, Any] = {k: merged[k] for k in ("user", "password") if k in merged}
    agent["name"] = instance.instance_id
    agent["queue"] = instance.instance_id
    ip = instance.ip if instance.ip is not None else node.ip
    if ip is not None:
        agent["ip"] = ip
    agent["manager_ip"] = defaults.manager_ip
    agent["windows"] = node.windows
    release = defaults.release if defaults.release in _FLAT_BROKER_V32 else "3.2"
    agent["version"] = release
    agent.update(
        {
            "broker_ip": defaults.manager_ip,
            "broker_ssl_enabled": False,
            "broker_ssl_cert": "",
            **_FLAT_BROKER_V32[release],
        }
    )
    return agent


def deployment_agents(facts: Iterable[Fact], defaults: AgentDefaults) -> dict[str, Any] | None:
    """One deployment's agents.json value: Compute node → instance → agent dict (sorted by id).

    None when the facts hold no `DeploymentFact` (instances or nodes of a deployment that does
    not exist are not listed, as the manager's REST listing would not find them).
    """
    exists = False
    nodes: dict[str, NodeFact] = {}
    instances: list[InstanceFact] = []
    for fact in facts:
        if isinstance(fact, DeploymentFact):
            exists = True
        elif isinstance(fact, NodeFact):
            nodes[fact.node_id] = fact
        else:
            instances.append(fact)
    if not exists:
        return None
    result: dict[str, dict[str, Any]] = {node_id: {} for node_id in sorted(nodes)}
    for instance in sorted(instances, key=lambda i: i.instance_id):
        node = nodes.get(instance.node_id)
        if node is None:
            continue
        if defaults.version == Version.V3_2:
            agent = agent_v32(instance, node, defaults)
        else:
            agent = agent_v33(instance, defaults)
        result[node.node_id][instance.instance_id] = agent
    return result


def agents_fragment(deployment_id: str, value: dict[str, Any]) -> str:
    """`"<deployment>": {...}`: one entry of the agents.json object, as `json.dumps` writes it."""
    return json.dumps(deployment_id) + ": " + json.dumps(value)


# ------------------------------------------------------------------------------ transforms
FACT_BUCKETS = 16
"""Buckets of deployment ids the facts are staged in: one bucket's facts are in memory at once
(1/16 of them, or one deployment's when a deployment holds more)."""

_FACT_ENCODER = msgspec.json.Encoder()
_FACT_DECODER = msgspec.json.Decoder()


def fact_bucket(deployment_id: str) -> int:
    """The bucket of a deployment's facts: the same on every worker and run (not `hash()`)."""
    return zlib.crc32(deployment_id.encode()) % FACT_BUCKETS


class _StageFactsFn(beam.DoFn):
    """Lists of (deployment id, encoded fact) → fact files in `staging`, one per bucket a
    bundle saw (a JSON array per line: the id, then the fact); emits (bucket, path) at bundle
    end."""

    def __init__(self, staging: str) -> None:
        self._staging = staging

    def start_bundle(self) -> None:
        self._files: dict[int, tuple[str, Any]] = {}

    # no `-> None`: Beam 2.78 reads it as an output type that is not iterable and
    # refuses the DoFn; this one emits only in finish_bundle
    def process(self, facts: list[tuple[str, EncodedFact]]):
        files, encode = self._files, _FACT_ENCODER.encode
        try:
            for deployment, fact in facts:
                bucket = fact_bucket(deployment)
                staged = files.get(bucket)
                if staged is None:
                    name = f"facts-{bucket:02d}-{uuid.uuid4().hex}.jsonl"
                    path = FileSystems.join(self._staging, name)
                    staged = files[bucket] = (path, FileSystems.create(path))
                staged[1].write(encode((deployment, *fact)) + b"\n")
        except BaseException:
            self._close_all()  # the bundle fails: its files are never emitted, nor left open
            raise

    def _close_all(self) -> None:
        for _path, out in self._files.values():
            with contextlib.suppress(OSError):
                out.close()
        self._files = {}

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for bucket, (path, out) in sorted(self._files.items()):
            out.close()
            yield in_global_window((bucket, path))


class _BucketAgentsFn(beam.DoFn):
    """(bucket, its fact files) → the agents.json fragment of each of its deployments that
    exists (`deployment_agents`), sealed with `encryption` when given."""

    def __init__(self, defaults: AgentDefaults, encryption: Encryption | None) -> None:
        self._defaults, self._encryption = defaults, encryption

    def process(self, element: tuple[int, Iterable[str]]) -> Iterator[str]:
        _bucket, paths = element
        facts: defaultdict[str, list[EncodedFact]] = defaultdict(list)
        for path in paths:
            with FileSystems.open(path) as f:
                for line in f:
                    deployment, *fact = _FACT_DECODER.decode(line)
                    facts[deployment].append(tuple(fact))
        for deployment in sorted(facts):
            value = deployment_agents(map(decode_fact, facts.pop(deployment)), self._defaults)
            if value is not None:
                yield agents_fragment(deployment, _sealed(deployment, value, self._encryption))


class _WriteFragmentsFn(beam.DoFn):
    """One fragment file per bundle (one fragment per line); emits its path at bundle end."""

    def __init__(self, staging: str) -> None:
        self._staging = staging

    def start_bundle(self) -> None:
        self._out: Any = None
        self._path = ""

    # no `-> None`: Beam 2.78 reads it as an output type that is not iterable and
    # refuses the DoFn; this one emits only in finish_bundle
    def process(self, fragment: str):
        if self._out is None:
            self._path = FileSystems.join(self._staging, f"agents-{uuid.uuid4().hex}.part")
            self._out = FileSystems.create(self._path)
        self._out.write(fragment.encode() + b"\n")

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._out is not None:
            self._out.close()
            yield in_global_window(self._path)


def _fragment_key(line: bytes) -> str:
    """The deployment id a fragment line (`"<deployment>": {...}`) starts with."""
    key, _ = json.JSONDecoder().raw_decode(line.decode())
    return str(key)


class _AssembleAgentsFn(beam.DoFn):
    """Every fragment file into one agents.json file, deployments sorted by id (the same bytes
    however the runner bundled and grouped them); emit it as an archive member.

    Memory: an index of (deployment id, file, offset, length), one entry per deployment; the
    fragments themselves are copied from their files, never held."""

    def __init__(self, staging: str) -> None:
        self._staging = staging

    def process(self, _: Any, parts: list[str]) -> Iterator[ArchiveMember]:
        index: list[tuple[str, str, int, int]] = []
        for part in parts:
            with FileSystems.open(part) as f:
                offset = 0
                for line in f:
                    body = line.rstrip(b"\n")
                    if body:
                        index.append((_fragment_key(body), part, offset, len(body)))
                    offset += len(line)
        index.sort()
        path = FileSystems.join(self._staging, AGENTS)
        out = FileSystems.create(path)
        readers: dict[str, Any] = {}
        try:
            out.write(b"{")
            for n, (_key, part, offset, length) in enumerate(index):
                reader = readers.get(part)
                if reader is None:
                    reader = readers[part] = FileSystems.open(part)
                reader.seek(offset)
                out.write(reader.read(length) if n == 0 else b", " + reader.read(length))
            out.write(b"}")
        finally:
            out.close()
            for reader in readers.values():
                reader.close()
        yield ArchiveMember(AGENTS, source=path)


_FACT_TYPES = frozenset({"deployment", "node", "node_instance"})


def page_agent_facts(page: list[RawHit]) -> Iterator[tuple[str, EncodedFact]]:
    """(deployment id, encoded fact) of a scroll page: only deployments, nodes and node
    instances are parsed (a deployment's fact needs only its id)."""
    for hit in page:
        if hit.type not in _FACT_TYPES or hit.index != STORAGE_INDEX:
            continue
        source = {} if hit.type == "deployment" else _JSON_DECODE(hit.source)
        doc = {"_index": hit.index, "_type": hit.type, "_id": hit.id, "_source": source}
        for deployment, fact in agent_facts(doc):
            yield deployment, encode_fact(fact)


def _sealed(deployment: str, value: dict[str, Any], encryption: Encryption | None) -> Any:
    if encryption is None:
        return value
    return encrypt_agents({deployment: value}, encryption)[deployment]  # type: ignore[index]


class BuildAgentsJson(beam.PTransform):
    """Lists of (deployment id, encoded fact) (`page_agent_facts` of a page) → one
    `ArchiveMember("agents.json")` staged in `staging` (§3).

    The facts are staged in files by bucket of deployment ids and only (bucket, file) pairs
    are grouped; memory is one bucket's facts (or one deployment's). Always emits exactly one
    member (`{}` for a manager without deployments). With
    `encryption`, every broker password and SSL key is sealed where it is built
    (`core.crypto.encrypt_agents`): the fragments and agents.json never hold them plain. The
    staged facts do (a node's agent properties, an instance's runtime `cloudify_agent`), as the
    staged es_data shards hold the documents themselves: in the job's 0700 staging folder, which
    is removed when the job ends.
    """

    def __init__(
        self, staging: str, defaults: AgentDefaults, encryption: Encryption | None = None
    ) -> None:
        super().__init__()
        self._staging, self._defaults, self._encryption = staging, defaults, encryption

    def expand(
        self, facts: beam.PCollection[list[tuple[str, EncodedFact]]]
    ) -> beam.PCollection[ArchiveMember]:
        fragment_files = (
            facts
            | "StageFacts" >> beam.ParDo(_StageFactsFn(self._staging))
            | "GroupByBucket" >> beam.GroupByKey()
            | "BuildDeploymentAgents"
            >> beam.ParDo(_BucketAgentsFn(self._defaults, self._encryption))
            | "WriteFragments" >> beam.ParDo(_WriteFragmentsFn(self._staging))
        )
        return (fragment_files,) | "AssembleAgentsJson" >> RunOnce(_AssembleAgentsFn(self._staging))
