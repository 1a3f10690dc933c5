"""Realistic, deterministic Cloudify 3.2 / 3.3 / 3.4 manager states for tests, benchmarks and demos.

A `ManagerSpec` describes the size and version of a manager; the functions below derive from it,
without any hidden state, everything that manager holds (spec §1-§5):

- `manager_hits(spec)`: the whole search-server state as logical hits
  `{"_index", "_type", "_id", "_source"}` (storage docs, provider context, snapshot records,
  events and logs), streamed: memory does not grow with the size of the spec.
- `snapshot_hits(spec)`: what a snapshot of that manager holds in `es_data` (same docs minus
  `provider_context` and `snapshot`, each with `"_score": 0.0`, storage docs first).
- `agents_json(spec)` / `iter_agents_json(spec)`: agents.json as that version writes it (§3).
- `write_file_tree(spec, fs_root)` / `file_members(spec)`: the manager's file server and the
  matching archive members, including one fake agent key per Compute node.

Same spec → byte-identical output. Every id (instance suffixes, UUIDs, event ids) is derived from
`spec.seed` and the document's position by hashing, never from a shared random stream, so any
document can be built on its own and the streams stay lazy.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import math
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.model import (
    COMPUTE_TYPE,
    EVENTS_INDEX,
    LOGSTASH_PREFIX,
    NEVER_IN_SNAPSHOT_TYPES,
    STORAGE_INDEX,
    Doc,
    Hit,
    Version,
    credentials_dir_name,
    metadata_version,
    parse_version,
)

__all__ = [
    "ManagerSpec",
    "manager_hits",
    "snapshot_hits",
    "provider_context",
    "agents_json",
    "iter_agents_json",
    "key_paths",
    "write_file_tree",
    "file_members",
    "type_counts",
    "document_count",
    "manager_ip",
]

DEFAULT_KEYS_DIR = "/root/.ssh/cfysnap-sample"
FILE_SERVER_ROOT = "/opt/manager/resources"
EVENT_SPAN = timedelta(days=4)
"""Events and logs are spread evenly over this span, so 3.3+ managers have several daily indices."""

_BASE_TIME = {
    Version.V3_2: datetime(2015, 8, 3, 9, 0, 0),
    Version.V3_3: datetime(2015, 12, 1, 9, 0, 0),
    Version.V3_4: datetime(2016, 7, 4, 9, 0, 0),
}
_BLUEPRINT_NAMES = ("nodecellar", "hello-world", "mongo-cluster", "haproxy-lb", "wordpress", "nginx-farm")
_OTHER_NODE_NAMES = ("nodejs", "mongod", "app", "haproxy", "nginx", "postgres")
_WINDOWS_TYPE = "cloudify.openstack.nodes.WindowsServer"
_SYSTEM_EXECUTIONS = 2  # create_snapshot + restore_snapshot, 3.3+
_SNAPSHOTS = 2  # snapshot records, 3.3+
_DEPLOYMENT_UPDATES = 3  # at most, 3.4
_NON_ASCII = "déploiement ✓ 节点"


# --------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class ManagerSpec:
    """Size, version and seed of a generated manager. Frozen, hashable, picklable."""

    version: Version = Version.V3_3
    blueprints: int = 2
    deployments_per_blueprint: int = 2
    compute_nodes: int = 1
    """Compute nodes per deployment."""
    other_nodes: int = 2
    """Non-Compute nodes per deployment."""
    instances_per_node: int = 2
    executions_per_deployment: int = 3
    events: int = 50
    """cloudify_event docs in total."""
    logs: int = 50
    """cloudify_log docs in total."""
    plugins: int = 2
    """Plugin docs (and wagon files); ignored for 3.2."""
    seed: int = 0
    keys_dir: str = DEFAULT_KEYS_DIR
    """Absolute folder of the agent key files named in Compute nodes' properties.cloudify_agent.key."""
    legacy_types: bool = False
    """3.3/3.4 only: deployments made from blueprints that import 3.2's types.yaml, as on managers
    that kept 3.2 blueprints or restored 3.2 snapshots on 3.3.0. Their deployments lack the
    `install_new_agents` workflow; the Compute nodes of even deployments lack the
    `cloudify_agent.create_amqp` and `validate_amqp` operations, those of odd ones (a 3.3.0
    restore, which had no `validate_amqp` yet) lack `validate_amqp` only."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", parse_version(self.version, "ManagerSpec.version"))
        for name in (
            "blueprints", "deployments_per_blueprint", "compute_nodes", "other_nodes",
            "instances_per_node", "executions_per_deployment", "events", "logs", "plugins",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ManagerSpec.{name} must be an int >= 0, got {value!r}")
        if not os.path.isabs(self.keys_dir):
            raise ValueError(f"ManagerSpec.keys_dir must be absolute, got {self.keys_dir!r}")

    @property
    def event_index_style(self) -> str:
        """"cloudify_events" for 3.2 managers, "logstash" (daily indices) for 3.3+ (§2, §4)."""
        return EVENTS_INDEX if self.version == Version.V3_2 else "logstash"

    @property
    def deployments(self) -> int:
        return self.blueprints * self.deployments_per_blueprint

    @property
    def nodes_per_deployment(self) -> int:
        return self.compute_nodes + self.other_nodes

    @classmethod
    def sized(cls, version: Version, documents: int, *, seed: int = 0) -> ManagerSpec:
        """A spec of about `documents` docs in `manager_hits` (exact once `documents` >= ~30).

        The structure grows with the square root of the size; node instances take ~15% and
        events/logs fill the rest. Works from 10 to 10,000,000 documents.
        """
        version = parse_version(version, "ManagerSpec.sized")
        n = max(int(documents), 1)
        deployments = max(1, round(math.sqrt(n) / 10))
        blueprints = max(1, round(math.sqrt(deployments)))
        per_blueprint = max(1, math.ceil(deployments / blueprints))
        nodes = 3
        instances = max(1, round(0.15 * n / (blueprints * per_blueprint * nodes)))
        spec = cls(
            version=version, blueprints=blueprints, deployments_per_blueprint=per_blueprint,
            compute_nodes=1, other_nodes=nodes - 1, instances_per_node=instances,
            executions_per_deployment=3, events=0, logs=0, plugins=2, seed=seed,
        )
        if document_count(spec) > n:  # tiny managers: the smallest sensible structure
            spec = replace(
                spec, blueprints=1, deployments_per_blueprint=1, other_nodes=0,
                instances_per_node=1, executions_per_deployment=1, plugins=0,
            )
        rest = max(0, n - document_count(spec))
        return replace(spec, events=rest // 2, logs=rest - rest // 2)

    @classmethod
    def sized_snapshot(cls, version: Version, documents: int, *, seed: int = 0) -> ManagerSpec:
        """A spec whose snapshot (`snapshot_hits`: without the documents a snapshot never holds,
        provider_context and snapshot) has exactly `documents` docs, from 30 up."""
        spec = cls.sized(version, documents, seed=seed)
        for _ in range(3):  # the left-out documents hardly depend on the size: settles at once
            held = snapshot_count(spec)
            if held == documents:
                break
            spec = cls.sized(version, document_count(spec) + documents - held, seed=seed)
        return spec


def snapshot_type_counts(spec: ManagerSpec) -> dict[str, int]:
    """`type_counts` of the snapshot: without provider_context and snapshot documents."""
    return {t: n for t, n in type_counts(spec).items() if t not in NEVER_IN_SNAPSHOT_TYPES}


def snapshot_count(spec: ManagerSpec) -> int:
    return sum(snapshot_type_counts(spec).values())


def type_counts(spec: ManagerSpec) -> dict[str, int]:
    """Number of docs of each `_type` in `manager_hits(spec)` (computed, nothing generated)."""
    v33 = spec.version >= Version.V3_3
    deps = spec.deployments
    nodes = deps * spec.nodes_per_deployment
    counts = {
        "provider_context": 1,
        "plugin": spec.plugins if v33 else 0,
        "blueprint": spec.blueprints,
        "snapshot": _SNAPSHOTS if v33 else 0,
        "deployment": deps,
        "node": nodes,
        "node_instance": nodes * spec.instances_per_node,
        "execution": deps * spec.executions_per_deployment + (_SYSTEM_EXECUTIONS if v33 else 0),
        "deployment_modification": deps,
        "deployment_update": min(deps, _DEPLOYMENT_UPDATES) if spec.version >= Version.V3_4 else 0,
        "cloudify_event": spec.events,
        "cloudify_log": spec.logs,
    }
    return {t: c for t, c in counts.items() if c}


def document_count(spec: ManagerSpec) -> int:
    """Total number of hits `manager_hits(spec)` yields."""
    return sum(type_counts(spec).values())


# --------------------------------------------------------------------------------------------
# Deterministic building blocks


def _digest(spec: ManagerSpec, *parts: object, size: int = 16) -> bytes:
    text = "|".join(map(str, (spec.seed, *parts)))
    return hashlib.blake2b(text.encode(), digest_size=size).digest()


def _uuid(spec: ManagerSpec, *parts: object) -> str:
    """A version-4-shaped UUID string (what `str(uuid.uuid4())` looks like), from a hash."""
    h = bytearray(_digest(spec, *parts))
    h[6] = (h[6] & 0x0F) | 0x40
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _es_auto_id(spec: ManagerSpec, *parts: object) -> str:
    """22 url-safe base64 chars, like an ES 1.x auto-generated id."""
    return base64.urlsafe_b64encode(_digest(spec, *parts)).decode()[:22]


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(n: int, width: int) -> str:
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = _B36[r] + out
    return out


def _base(spec: ManagerSpec) -> datetime:
    return _BASE_TIME[spec.version] + timedelta(hours=spec.seed % 24)


def _stamp(t: datetime) -> str:
    """`str(datetime.now())` as the REST service stores it."""
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")


def manager_ip(spec: ManagerSpec) -> str:
    """The manager's (and its broker's) IP address."""
    return f"10.67.{spec.seed % 250}.5"


def _fake_pem(label: str, seed_bytes: bytes, lines: int) -> str:
    body = base64.b64encode(b"CFYSNAP-SAMPLE-NOT-A-REAL-KEY:" + seed_bytes * 24).decode()
    rows = [body[i * 64:(i + 1) * 64] for i in range(lines)]
    return f"-----BEGIN {label}-----\n" + "\n".join(rows) + f"\n-----END {label}-----\n"


# --------------------------------------------------------------------------------------------
# Names of the manager's entities (all derived from indices)


def _blueprint_id(i: int) -> str:
    name = _BLUEPRINT_NAMES[i % len(_BLUEPRINT_NAMES)]
    return name if i < len(_BLUEPRINT_NAMES) else f"{name}-{i // len(_BLUEPRINT_NAMES)}"


def _deployment_id(b: int, k: int) -> str:
    return f"{_blueprint_id(b)}-dep{k + 1}"


def _deployment_ids(spec: ManagerSpec) -> Iterator[tuple[int, int, str, str]]:
    """(deployment index, blueprint index, blueprint id, deployment id) of every deployment."""
    d = 0
    for b in range(spec.blueprints):
        for k in range(spec.deployments_per_blueprint):
            yield d, b, _blueprint_id(b), _deployment_id(b, k)
            d += 1


def _dep_of(spec: ManagerSpec, d: int) -> tuple[str, str]:
    """(blueprint id, deployment id) of deployment number `d`."""
    if not spec.deployments_per_blueprint:  # only blueprint plans, built without deployments
        return _blueprint_id(0), _deployment_id(0, 0)
    b, k = divmod(d, spec.deployments_per_blueprint)
    return _blueprint_id(b), _deployment_id(b, k)


def _node_name(spec: ManagerSpec, n: int) -> str:
    """Node `n` of a deployment: Compute nodes first, then the others."""
    if n < spec.compute_nodes:
        return {0: "vm", 1: "win_vm"}.get(n, f"vm{n}")
    j = n - spec.compute_nodes
    name = _OTHER_NODE_NAMES[j % len(_OTHER_NODE_NAMES)]
    return name if j < len(_OTHER_NODE_NAMES) else f"{name}{j // len(_OTHER_NODE_NAMES)}"


def _is_windows(n: int) -> bool:
    return n == 1


def _instance_id(spec: ManagerSpec, d: int, n: int, k: int) -> str:
    """`<node>_<suffix>`; the suffix is a bijection of the global instance number, so unique."""
    g = (d * spec.nodes_per_deployment + n) * spec.instances_per_node + k
    width = _suffix_width(spec)
    scrambled = (g * 2654435761 + spec.seed * 7919 + 12345) % (36**width)
    return f"{_node_name(spec, n)}_{_b36(scrambled, width)}"


@functools.lru_cache(maxsize=64)
def _suffix_width(spec: ManagerSpec) -> int:
    """5 base-36 chars like Cloudify's ids, more when the manager has over 36**5 instances."""
    total = spec.deployments * spec.nodes_per_deployment * spec.instances_per_node
    width = 5
    while 36**width < total:
        width += 1
    return width


def _instance_state(k: int) -> str:
    return "uninitialized" if k % 4 == 1 else "started"


def _instance_ip(spec: ManagerSpec, d: int, n: int, k: int) -> str:
    g = (d * spec.nodes_per_deployment + n) * spec.instances_per_node + k
    return f"10.{(g >> 16) % 256}.{(g >> 8) % 256}.{g % 256 or 1}"


def _execution_id(spec: ManagerSpec, d: int, k: int) -> str:
    return _uuid(spec, "execution", d, k)


def _snapshot_id(spec: ManagerSpec, i: int) -> str:
    day = _base(spec) + EVENT_SPAN + timedelta(days=i)
    return f"snapshot-{day:%Y%m%d}-{i + 1}"


# --------------------------------------------------------------------------------------------
# Plugins, operations, workflows


def _six_plugin_fields(**values: Any) -> dict[str, Any]:
    fields = ("package_name", "package_version", "supported_platform", "distribution",
              "distribution_version", "distribution_release")
    return {f: values.get(f) for f in fields}


def _plugin_ref(spec: ManagerSpec, name: str, executor: str, source: str | None, install: bool,
                **package: Any) -> dict[str, Any]:
    """A plugin as the DSL parser lists it in nodes and in the plan."""
    plugin: dict[str, Any] = {
        "name": name,
        "source": source,
        "executor": executor,
        "install": install,
        "install_arguments": None,
    }
    if spec.version >= Version.V3_4:
        plugin.update(_six_plugin_fields(**package))
    return plugin


def _openstack_plugin(spec: ManagerSpec) -> dict[str, Any]:
    return _plugin_ref(
        spec, "openstack", "central_deployment_agent",
        "https://github.com/cloudify-cosmo/cloudify-openstack-plugin/archive/1.3.1.zip", True,
        package_name="cloudify-openstack-plugin", package_version="1.3.1",
    )


def _script_plugin(spec: ManagerSpec) -> dict[str, Any]:
    return _plugin_ref(spec, "script", "host_agent", None, False)


def _diamond_plugin(spec: ManagerSpec) -> dict[str, Any]:
    return _plugin_ref(
        spec, "diamond", "host_agent",
        "https://github.com/cloudify-cosmo/cloudify-diamond-plugin/archive/1.3.1.zip", True,
        package_name="cloudify-diamond-plugin", package_version="1.3.1",
    )


def _default_workflows_plugin(spec: ManagerSpec) -> dict[str, Any]:
    return _plugin_ref(spec, "default_workflows", "central_deployment_agent", None, False)


def _agent_plugin(spec: ManagerSpec) -> dict[str, Any]:
    return _plugin_ref(spec, "agent", "central_deployment_agent", None, False)


def _operation(impl: str, plugin: str, executor: str, inputs: dict[str, Any] | None = None,
               intrinsic: bool = False) -> dict[str, Any]:
    return {
        "operation": impl,
        "plugin": plugin,
        "executor": executor,
        "inputs": inputs or {},
        "has_intrinsic_functions": intrinsic,
        "max_retries": None,
        "retry_interval": None,
    }


def _compute_operations(spec: ManagerSpec, d: int = 0) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for op in ("create", "start", "stop", "delete"):
        ops[f"cloudify.interfaces.lifecycle.{op}"] = _operation(
            f"nova_plugin.server.{op}", "openstack", "central_deployment_agent",
            {"openstack_config": {}} if op == "create" else {},
        )
    if spec.version == Version.V3_2:
        for op in ("install", "start", "stop", "uninstall"):
            ops[f"cloudify.interfaces.worker_installer.{op}"] = _operation(
                f"worker_installer.tasks.{op}", "agent_installer", "central_deployment_agent")
        ops["cloudify.interfaces.plugin_installer.install"] = _operation(
            "plugin_installer.tasks.install", "plugin_installer", "host_agent")
    else:
        for op in ("create", "configure", "start", "stop", "delete", "restart"):
            ops[f"cloudify.interfaces.cloudify_agent.{op}"] = _operation(
                f"cloudify_agent.installer.operations.{op}", "agent", "central_deployment_agent")
        if not spec.legacy_types or d % 2 == 1:
            ops["cloudify.interfaces.cloudify_agent.create_amqp"] = _operation(
                "cloudify_agent.operations.create_agent_amqp", "agent", "central_deployment_agent",
                {"install_agent_timeout": 300})
        if not spec.legacy_types:
            ops["cloudify.interfaces.cloudify_agent.validate_amqp"] = _operation(
                "cloudify_agent.operations.validate_agent_amqp", "agent", "central_deployment_agent",
                {"validate_agent_timeout": 20})
    ops["cloudify.interfaces.monitoring_agent.install"] = _operation(
        "diamond_agent.tasks.install", "diamond", "host_agent",
        {"diamond_config": {"interval": 10}})
    return ops


def _script_operations(name: str) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for op in ("configure", "start"):
        ops[f"cloudify.interfaces.lifecycle.{op}"] = _operation(
            "script_runner.tasks.run", "script", "host_agent",
            {"script_path": f"scripts/{op}_{name}.sh"})
    ops["cloudify.interfaces.lifecycle.stop"] = _operation(
        "script_runner.tasks.run", "script", "host_agent",
        {"script_path": f"scripts/stop_{name}.sh", "process": {"env": {"NODE": name}}})
    return ops


def _workflows(spec: ManagerSpec) -> dict[str, Any]:
    def wf(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "operation": f"cloudify.plugins.workflows.{name}",
            "plugin": "default_workflows",
            "parameters": parameters or {},
        }

    workflows = {
        "install": wf("install"),
        "uninstall": wf("uninstall"),
        "execute_operation": wf("execute_operation", {
            "operation": {},
            "operation_kwargs": {"default": {}},
            "allow_kwargs_override": {"default": None},
            "run_by_dependency_order": {"default": False},
            "type_names": {"default": []},
            "node_ids": {"default": []},
            "node_instance_ids": {"default": []},
        }),
    }
    if spec.version >= Version.V3_3:
        workflows["heal"] = wf("auto_heal_reinstall_node_subgraph", {
            "node_instance_id": {"description": "Which node instance has failed"},
            "diagnose_value": {"default": "Not provided"},
        })
        workflows["scale"] = wf("scale", {
            "node_id": {}, "delta": {"default": 1}, "scale_compute": {"default": True},
        })
    if spec.version >= Version.V3_3 and not spec.legacy_types:
        workflows["install_new_agents"] = wf("install_new_agents", {
            "install_agent_timeout": {"default": 300},
            "node_ids": {"default": []},
            "node_instance_ids": {"default": []},
        })
    return workflows


# --------------------------------------------------------------------------------------------
# Storage documents


def _node_doc(spec: ManagerSpec, d: int, n: int) -> Doc:
    bp_id, dep_id = _dep_of(spec, d)
    name = _node_name(spec, n)
    ipn = spec.instances_per_node
    compute = n < spec.compute_nodes
    if compute:
        hierarchy = ["cloudify.nodes.Root", COMPUTE_TYPE, "cloudify.openstack.nodes.Server"]
        node_type = "cloudify.openstack.nodes.Server"
        agent: dict[str, Any] = {
            "key": str(Path(spec.keys_dir) / f"{credentials_dir_name(dep_id, name)}.pem"),
            "user": "centos" if n % 2 == 0 else "ubuntu",
        }
        if _is_windows(n):
            hierarchy.append(_WINDOWS_TYPE)
            node_type = _WINDOWS_TYPE
            agent = {"key": agent["key"], "user": "Administrator", "password": "S4mple-Passw0rd"}
        properties: dict[str, Any] = {
            "cloudify_agent": agent,
            "install_agent": True,
            "image": "centos-7-x86_64",
            "flavor": "m1.medium",
            "server": {},
            "management_network_name": "cfy-mgmt",
            "use_external_resource": False,
            "resource_id": "",
            "os_family": "windows" if _is_windows(n) else "linux",
        }
        operations = _compute_operations(spec, d)
        plugins = [_openstack_plugin(spec), _diamond_plugin(spec), _script_plugin(spec)]
        if spec.version >= Version.V3_4:
            plugins.append(_agent_plugin(spec))
        plugins_to_install: list[Any] | None = [_diamond_plugin(spec), _script_plugin(spec)]
        host_id: str | None = name
        relationships: list[Any] = []
    else:
        hierarchy = ["cloudify.nodes.Root", "cloudify.nodes.SoftwareComponent", f"nodecellar.nodes.{name}"]
        node_type = f"nodecellar.nodes.{name}"
        properties = {"port": 8080 + n, "version": "1.0", "description": f"{name} service"}
        operations = _script_operations(name)
        plugins = [_script_plugin(spec)]
        plugins_to_install = None
        host_id = _node_name(spec, 0) if spec.compute_nodes else None
        relationships = []
        if spec.compute_nodes:
            relationships.append({
                "target_id": _node_name(spec, 0),
                "type": "cloudify.relationships.contained_in",
                "type_hierarchy": ["cloudify.relationships.depends_on", "cloudify.relationships.contained_in"],
                "properties": {"connection_type": "all_to_all"},
                "source_operations": {},
                "target_operations": {},
            })
    doc: Doc = {
        "id": name,
        "deployment_id": dep_id,
        "blueprint_id": bp_id,
        "type": node_type,
        "type_hierarchy": hierarchy,
        "number_of_instances": ipn,
        "planned_number_of_instances": ipn,
        "deploy_number_of_instances": ipn,
        "host_id": host_id,
        "properties": properties,
        "operations": operations,
        "plugins": plugins,
        "plugins_to_install": plugins_to_install,
        "relationships": relationships,
    }
    if spec.version >= Version.V3_4:
        doc["min_number_of_instances"] = 0
        doc["max_number_of_instances"] = -1
    return doc


def _runtime_agent(spec: ManagerSpec, d: int, n: int, k: int) -> dict[str, Any] | None:
    """`runtime_properties.cloudify_agent` of a started Compute instance (absent for every third)."""
    if k % 3 == 2:
        return None
    iid = _instance_id(spec, d, n, k)
    agent: dict[str, Any] = {
        "name": iid,
        "queue": iid,
        "ip": _instance_ip(spec, d, n, k),
        "user": "Administrator" if _is_windows(n) else "centos",
        "windows": _is_windows(n),
        "manager_ip": manager_ip(spec),
    }
    if spec.version >= Version.V3_3:
        agent["basedir"] = "C:\\CloudifyAgent" if _is_windows(n) else "/home/centos"
        agent["version"] = metadata_version(spec.version)
    if spec.version >= Version.V3_4 and k % 6 == 0:
        # an agent that already knows its own broker: wins over the bootstrap defaults (§3.2)
        agent["broker_config"] = {
            "broker_ip": f"10.68.{spec.seed % 250}.9",
            "broker_user": "cloudify",
            "broker_pass": "c10udify",
            "broker_ssl_enabled": False,
            "broker_ssl_cert": "",
            "broker_port": 5672,
        }
    return agent


def _instance_doc(spec: ManagerSpec, d: int, n: int, k: int) -> Doc:
    _, dep_id = _dep_of(spec, d)
    name = _node_name(spec, n)
    iid = _instance_id(spec, d, n, k)
    state = _instance_state(k)
    compute = n < spec.compute_nodes
    runtime: dict[str, Any] = {}
    relationships: list[Any] = []
    if compute:
        host_id: str | None = iid
        if state == "started":
            runtime = {"ip": _instance_ip(spec, d, n, k), "external_id": _uuid(spec, "server", d, n, k)}
            agent = _runtime_agent(spec, d, n, k)
            if agent is not None:
                runtime["cloudify_agent"] = agent
    else:
        host_id = _instance_id(spec, d, 0, k) if spec.compute_nodes else None
        if host_id is not None:
            relationships.append({
                "target_id": host_id,
                "target_name": _node_name(spec, 0),
                "type": "cloudify.relationships.contained_in",
            })
        if state == "started":
            runtime = {"port": 8080 + n, "description": f"{name} — {_NON_ASCII}" if k == 0 else name}
    doc: Doc = {
        "id": iid,
        "node_id": name,
        "deployment_id": dep_id,
        "host_id": host_id,
        "state": state,
        "runtime_properties": runtime,
        "relationships": relationships,
    }
    if spec.version >= Version.V3_4:
        in_group = spec.compute_nodes > 0 and (n == 0 or not compute)
        doc["scaling_groups"] = (
            [{"name": "vm_group", "id": f"vm_group_{_instance_id(spec, d, 0, k).split('_')[-1]}"}]
            if in_group else []
        )
    return doc


def _plan_node(spec: ManagerSpec, n: int) -> Doc:
    """A node template in the blueprint plan (no deployment, key as an unresolved input)."""
    node = _node_doc(spec, 0, n)
    del node["deployment_id"], node["blueprint_id"]
    node["name"] = node["id"]
    node["instances"] = {"deploy": spec.instances_per_node}
    agent = node["properties"].get("cloudify_agent")
    if agent is not None:
        agent["key"] = {"get_input": "agent_private_key_path"}
    return node


def _blueprint_doc(spec: ManagerSpec, b: int) -> Doc:
    created = _stamp(_base(spec) + timedelta(minutes=7 * b, microseconds=123457 + b))
    plan: Doc = {
        "nodes": [_plan_node(spec, n) for n in range(spec.nodes_per_deployment)],
        "relationships": {
            "cloudify.relationships.contained_in": {
                "name": "cloudify.relationships.contained_in",
                "derived_from": "cloudify.relationships.depends_on",
                "type_hierarchy": ["cloudify.relationships.depends_on", "cloudify.relationships.contained_in"],
                "properties": {"connection_type": "all_to_all"},
                "source_interfaces": {},
                "target_interfaces": {},
            },
        },
        "workflows": _workflows(spec),
        "deployment_plugins_to_install": [_openstack_plugin(spec)] if spec.compute_nodes else [],
        "workflow_plugins_to_install": [_default_workflows_plugin(spec)],
        "inputs": {
            "image": {"default": "centos-7-x86_64"},
            "agent_private_key_path": {"default": "~/.ssh/agent_key.pem"},
        },
        "outputs": {"endpoint": {"description": "Web application endpoint",
                                 "value": {"get_attribute": [_node_name(spec, 0), "ip"]}}},
        "policy_types": {},
        "policy_triggers": {},
        "groups": {},
        "version": {"definitions_name": "cloudify_dsl", "definitions_version": [1, 2],
                    "raw": "cloudify_dsl_1_2"},
    }
    if spec.version >= Version.V3_4:
        plan["scaling_groups"] = {}
    doc: Doc = {"id": _blueprint_id(b), "plan": plan, "created_at": created, "updated_at": created}
    if spec.version >= Version.V3_3:
        doc["description"] = (
            f"Exemple de {_blueprint_id(b)} — {_NON_ASCII}" if b % 2 == 0 else None
        )
        doc["main_file_name"] = "blueprint.yaml"
    return doc


def _deployment_doc(spec: ManagerSpec, d: int) -> Doc:
    bp_id, dep_id = _dep_of(spec, d)
    created = _stamp(_base(spec) + timedelta(hours=1, minutes=3 * d, microseconds=654321 - d % 1000))
    doc: Doc = {
        "id": dep_id,
        "blueprint_id": bp_id,
        "created_at": created,
        "updated_at": created,
        "workflows": _workflows(spec),
        "inputs": {"image": "centos-7-x86_64", "agent_private_key_path": "~/.ssh/agent_key.pem"},
        "outputs": {"endpoint": {"description": "Web application endpoint",
                                 "value": {"get_attribute": [_node_name(spec, 0), "ip"]}}},
        "policy_types": {},
        "policy_triggers": {},
        "groups": {},
        "permalink": None,
    }
    if spec.version >= Version.V3_4:
        doc["scaling_groups"] = {
            "vm_group": {
                "members": [_node_name(spec, 0)],
                "properties": {
                    "min_instances": 0,
                    "max_instances": -1,
                    "default_instances": spec.instances_per_node,
                    "current_instances": spec.instances_per_node,
                    "planned_instances": spec.instances_per_node,
                },
            },
        } if spec.compute_nodes else {}
        doc["description"] = f"{dep_id}: {_NON_ASCII}" if d % 2 == 0 else None
    return doc


_SNAPSHOT_CONFIG_KEYS = (
    ("file_server_root", FILE_SERVER_ROOT),
    ("file_server_snapshots_folder", "snapshots"),
    ("file_server_blueprints_folder", "blueprints"),
    ("file_server_uploaded_blueprints_folder", "uploaded-blueprints"),
    ("file_server_uploaded_plugins_folder", "plugins"),
)


def _snapshot_config(spec: ManagerSpec) -> dict[str, Any]:
    config: dict[str, Any] = dict(_SNAPSHOT_CONFIG_KEYS)
    if spec.version >= Version.V3_4:
        config["file_server_deployments_folder"] = "deployments"
    config.update({"db_address": "localhost", "db_port": 9200,
                   "created_status": "created", "failed_status": "failed"})
    return config


_EXECUTION_CYCLE = (
    ("install", "terminated"),
    ("install", "failed"),
    ("uninstall", "terminated"),
    ("execute_operation", "terminated"),
    ("install", "cancelled"),
)


def _execution_workflow(d: int, k: int) -> tuple[str, str]:
    if k == 0:
        return "create_deployment_environment", "terminated"
    return _EXECUTION_CYCLE[(k - 1 + d) % len(_EXECUTION_CYCLE)]


def _execution_doc(spec: ManagerSpec, d: int, k: int) -> Doc:
    bp_id, dep_id = _dep_of(spec, d)
    workflow, status = _execution_workflow(d, k)
    parameters: dict[str, Any] = {}
    if workflow == "create_deployment_environment":
        parameters = {"policy_configuration": {"policy_types": {}, "policy_triggers": {}, "groups": {}}}
    elif workflow == "execute_operation":
        parameters = {"operation": "cloudify.interfaces.monitoring.start", "operation_kwargs": {},
                      "allow_kwargs_override": None, "run_by_dependency_order": False,
                      "type_names": [], "node_ids": [], "node_instance_ids": []}
    error = ""
    if status == "failed":
        error = ("Traceback (most recent call last):\n  File \"/opt/mgmtworker/env/lib/python2.7/"
                 "site-packages/cloudify/dispatch.py\", line 596, in main\n"
                 f"NonRecoverableError: échec du déploiement {dep_id} ✗ (节点 vm)\n")
    doc: Doc = {
        "id": _execution_id(spec, d, k),
        "status": status,
        "deployment_id": dep_id,
        "blueprint_id": bp_id,
        "workflow_id": workflow,
        "created_at": _stamp(_base(spec) + timedelta(hours=2, minutes=3 * d + k, microseconds=111111 + k)),
        "error": error,
        "parameters": parameters,
    }
    if spec.version >= Version.V3_3:
        doc["is_system_workflow"] = False
    return doc


def _system_execution_doc(spec: ManagerSpec, i: int) -> Doc:
    if i == 0:
        workflow = "create_snapshot"
        parameters: dict[str, Any] = {"snapshot_id": _snapshot_id(spec, 0), "include_metrics": False,
                                      "include_credentials": True, "config": _snapshot_config(spec)}
    else:
        workflow = "restore_snapshot"
        parameters = {"snapshot_id": _snapshot_id(spec, 1), "recreate_deployments_envs": True,
                      "force": False, "config": _snapshot_config(spec)}
    return {
        "id": _uuid(spec, "system-execution", i),
        "status": "terminated",
        "deployment_id": None,
        "blueprint_id": None,
        "workflow_id": workflow,
        "created_at": _stamp(_base(spec) + EVENT_SPAN + timedelta(days=i, microseconds=222222)),
        "error": "",
        "parameters": parameters,
        "is_system_workflow": True,
    }


def _modification_doc(spec: ManagerSpec, d: int) -> Doc:
    _, dep_id = _dep_of(spec, d)
    status = ("finished", "rolledback", "started")[d % 3]
    start = _base(spec) + timedelta(hours=3, minutes=d, microseconds=333333)
    node = _node_name(spec, 0)
    before: list[dict[str, Any]] = []
    added: list[dict[str, Any]] = []
    if spec.nodes_per_deployment:
        before.append({
            "id": _instance_id(spec, d, 0, 0),
            "node_id": node,
            "deployment_id": dep_id,
            "host_id": _instance_id(spec, d, 0, 0) if spec.compute_nodes else None,
            "state": "started",
            "runtime_properties": {},
            "relationships": [],
            "version": 3,
        })
        added.append({"id": f"{node}_{_uuid(spec, 'added-instance', d)[:5]}",
                      "node_id": node, "modification": "added"})
    return {
        "id": _uuid(spec, "modification", d),
        "deployment_id": dep_id,
        "status": status,
        "created_at": _stamp(start),
        "ended_at": None if status == "started" else _stamp(start + timedelta(seconds=42)),
        "modified_nodes": {node: {"instances": spec.instances_per_node + 1}},
        "node_instances": {
            "added_and_related": added,
            "removed_and_related": [],
            "before_modification": before,
        },
        "context": {"source": "scale", "delta": 1},
    }


def _deployment_update_doc(spec: ManagerSpec, d: int) -> Doc:
    _, dep_id = _dep_of(spec, d)
    uid = _uuid(spec, "deployment-update", d)
    return {
        "id": f"{dep_id}-{uid}",
        "deployment_id": dep_id,
        "steps": [
            {"id": _uuid(spec, "step", d, 0), "action": "add", "entity_type": "node",
             "entity_id": "nodes:monitoring_node"},
            {"id": _uuid(spec, "step", d, 1), "action": "modify", "entity_type": "property",
             "entity_id": f"nodes:{_node_name(spec, 0)}:properties:flavor"},
        ],
        "state": ("successful", "failed", "successful")[d % 3],
        "deployment_plan": {"nodes": [], "workflows": {}, "outputs": {}, "inputs": {}},
        "deployment_update_nodes": None,
        "deployment_update_node_instances": None,
        "deployment_update_deployment": None,
        "modified_entity_ids": {"node": ["monitoring_node"], "property": [_node_name(spec, 0)]},
        "execution_id": _uuid(spec, "update-execution", d),
        "created_at": _stamp(_base(spec) + timedelta(hours=5, minutes=d, microseconds=444444)),
    }


_PLUGIN_PACKAGES = (
    "cloudify-openstack-plugin", "cloudify-diamond-plugin", "cloudify-fabric-plugin",
    "cloudify-script-plugin", "cloudify-aws-plugin", "cloudify-docker-plugin",
)


def _plugin_doc(spec: ManagerSpec, i: int) -> Doc:
    package = _PLUGIN_PACKAGES[i % len(_PLUGIN_PACKAGES)]
    version = f"1.{3 + i // len(_PLUGIN_PACKAGES)}.{i % 3}"
    any_platform = i % 2 == 1
    platform = "any" if any_platform else "linux_x86_64"
    module = package.replace("-", "_")
    archive = f"{module}-{version}-py27-none-{platform}" + ("" if any_platform else "-centos-Core") + ".wgn"
    return {
        "id": _uuid(spec, "plugin", i),
        "package_name": package,
        "archive_name": archive,
        "package_source": f"https://github.com/cloudify-cosmo/{package}/archive/{version}.zip",
        "package_version": version,
        "supported_platform": platform,
        "distribution": None if any_platform else "centos",
        "distribution_version": None if any_platform else "7.0.1406",
        "distribution_release": None if any_platform else "Core",
        "wheels": [f"{module}-{version}-py27-none-any.whl", "cloudify_plugins_common-3.3-py27-none-any.whl"],
        "excluded_wheels": [],
        "supported_py_versions": ["py27"],
        "uploaded_at": _stamp(_base(spec) - timedelta(hours=1, minutes=i) + timedelta(microseconds=555555)),
    }


def _snapshot_doc(spec: ManagerSpec, i: int) -> Doc:
    return {
        "id": _snapshot_id(spec, i),
        "created_at": _stamp(_base(spec) + EVENT_SPAN + timedelta(days=i, microseconds=666666)),
        "status": ("created", "uploaded")[i % 2],
        "error": "",
    }


def provider_context(spec: ManagerSpec) -> Doc:
    """The provider context (`_id` "CONTEXT") with the bootstrap broker/agent defaults (§3, §5)."""
    ssl = spec.version >= Version.V3_4
    return {
        "name": "openstack_manager",
        "context": {
            "cloudify": {
                "resources_prefix": "cfy-",
                "cloudify_agent": {
                    "user": "centos",
                    "remote_execution_port": 22,
                    "min_workers": 2,
                    "max_workers": 5,
                    "agent_key_path": "~/.ssh/agent_key.pem",
                    "broker_user": "cloudify",
                    "broker_pass": f"c10udify-{spec.seed}",
                    "broker_ip": manager_ip(spec),
                    "broker_ssl_enabled": ssl,
                    "broker_ssl_cert": _fake_pem("CERTIFICATE", _digest(spec, "broker-cert"), 6),
                },
                "workflows": {"task_retries": -1, "task_retry_interval": 30},
                "policy_engine": {"start_timeout": 30},
            },
            "resources": {"int_network": {"id": _uuid(spec, "network"), "name": "cfy-mgmt"}},
        },
    }


# --------------------------------------------------------------------------------------------
# Events and logs


def _event_time(spec: ManagerSpec, i: int, total: int, offset_ms: int) -> datetime:
    span_ms = int(EVENT_SPAN.total_seconds() * 1000)
    ms = (i * span_ms) // max(total, 1) + offset_ms
    return _base(spec) + timedelta(hours=6, milliseconds=ms)


def _event_index(spec: ManagerSpec, t: datetime) -> str:
    if spec.version == Version.V3_2:
        return EVENTS_INDEX
    return f"{LOGSTASH_PREFIX}{t.year:04d}.{t.month:02d}.{t.day:02d}"


def _message_context(spec: ManagerSpec, i: int, task: bool) -> dict[str, Any]:
    d = i % spec.deployments if spec.deployments else 0
    bp_id, dep_id = _dep_of(spec, d) if spec.deployments else ("", "")
    epd = spec.executions_per_deployment
    if epd:
        k = (i // max(spec.deployments, 1)) % epd
        execution_id = _execution_id(spec, d, k)
        workflow, _ = _execution_workflow(d, k)
    else:
        execution_id, workflow = _uuid(spec, "orphan-execution", d), "install"
    context: dict[str, Any] = {
        "blueprint_id": bp_id,
        "deployment_id": dep_id,
        "execution_id": execution_id,
        "workflow_id": workflow,
    }
    if task and spec.nodes_per_deployment and spec.instances_per_node:
        n = (i // 7) % spec.nodes_per_deployment
        k = (i // 3) % spec.instances_per_node
        compute = n < spec.compute_nodes
        context.update({
            "task_id": _uuid(spec, "task", i),
            "task_name": "nova_plugin.server.create" if compute else "script_runner.tasks.run",
            "task_queue": dep_id if compute else _instance_id(spec, d, 0, k),
            "task_target": dep_id if compute else _instance_id(spec, d, 0, k),
            "operation": "cloudify.interfaces.lifecycle.create" if compute
            else "cloudify.interfaces.lifecycle.configure",
            "plugin": "openstack" if compute else "script",
            "node_id": _instance_id(spec, d, n, k),
            "node_name": _node_name(spec, n),
        })
    return context


_EVENT_TYPES = ("workflow_started", "sending_task", "task_started", "task_succeeded",
                "task_failed", "task_rescheduled", "workflow_succeeded")


def _event_hit(spec: ManagerSpec, i: int) -> Hit:
    t = _event_time(spec, i, spec.events, 0)
    stamp = t.isoformat(sep=" ", timespec="milliseconds")
    event_type = _EVENT_TYPES[i % len(_EVENT_TYPES)]
    task = event_type.startswith("task") or event_type == "sending_task"
    context = _message_context(spec, i, task)
    workflow = context["workflow_id"]
    task_name = context.get("task_name", "")
    text = {
        "workflow_started": f"Starting '{workflow}' workflow execution",
        "sending_task": f"Sending task '{task_name}'",
        "task_started": f"Task started '{task_name}'",
        "task_succeeded": f"Task succeeded '{task_name}'",
        "task_failed": f"Task failed '{task_name}' -> RecoverableError: connexion refusée",
        "task_rescheduled": f"Task rescheduled '{task_name}' -> retrying in 30 seconds",
        "workflow_succeeded": f"'{workflow}' workflow execution succeeded",
    }[event_type]
    if i % 5 == 0:
        text += f" ({_NON_ASCII} {context.get('node_name', context['deployment_id'])})"
    source = {
        "type": "cloudify_event",
        "event_type": event_type,
        "timestamp": f"{stamp}+0000",
        "@timestamp": f"{stamp.replace(' ', 'T')}Z",
        "message_code": None,
        "context": context,
        "message": {"text": text, "arguments": None},
        "tags": ["event"],
        "@version": "1",
    }
    return {"_index": _event_index(spec, t), "_type": "cloudify_event",
            "_id": _es_auto_id(spec, "event", i), "_source": source}


_LOG_LEVELS = ("info", "info", "debug", "warning", "info", "error")


def _log_hit(spec: ManagerSpec, i: int) -> Hit:
    t = _event_time(spec, i, spec.logs, 17)
    stamp = t.isoformat(sep=" ", timespec="milliseconds")
    level = _LOG_LEVELS[i % len(_LOG_LEVELS)]
    context = _message_context(spec, i + 1, True)
    node = context.get("node_name", context["deployment_id"])
    if i % 4 == 0:
        text = f"Installation du paquet terminée ✓ — {_NON_ASCII} {node}"
    elif level == "error":
        text = f"Failed to start {node}: exit code 1"
    else:
        text = f"Executing: /tmp/{node}/configure.sh (line {i})"
    source = {
        "type": "cloudify_log",
        "logger": context.get("task_id", "ctx"),
        "level": level,
        "timestamp": f"{stamp}+0000",
        "@timestamp": f"{stamp.replace(' ', 'T')}Z",
        "message_code": None,
        "context": context,
        "message": {"text": text},
        "tags": ["event"],
        "@version": "1",
    }
    return {"_index": _event_index(spec, t), "_type": "cloudify_log",
            "_id": _es_auto_id(spec, "log", i), "_source": source}


# --------------------------------------------------------------------------------------------
# The streams


def _storage(type_: str, id_: str, source: Doc) -> Hit:
    return {"_index": STORAGE_INDEX, "_type": type_, "_id": id_, "_source": source}


def _storage_hits(spec: ManagerSpec) -> Iterator[Hit]:
    v33 = spec.version >= Version.V3_3
    yield _storage("provider_context", "CONTEXT", provider_context(spec))
    if v33:
        for i in range(spec.plugins):
            doc = _plugin_doc(spec, i)
            yield _storage("plugin", doc["id"], doc)
        for i in range(_SNAPSHOTS):
            doc = _snapshot_doc(spec, i)
            yield _storage("snapshot", doc["id"], doc)
    for b in range(spec.blueprints):
        yield _storage("blueprint", _blueprint_id(b), _blueprint_doc(spec, b))
    for d, _b, _bp_id, dep_id in _deployment_ids(spec):
        yield _storage("deployment", dep_id, _deployment_doc(spec, d))
        for n in range(spec.nodes_per_deployment):
            node = _node_doc(spec, d, n)
            yield _storage("node", credentials_dir_name(dep_id, node["id"]), node)
            for k in range(spec.instances_per_node):
                inst = _instance_doc(spec, d, n, k)
                yield _storage("node_instance", inst["id"], inst)
        for k in range(spec.executions_per_deployment):
            doc = _execution_doc(spec, d, k)
            yield _storage("execution", doc["id"], doc)
        doc = _modification_doc(spec, d)
        yield _storage("deployment_modification", doc["id"], doc)
    if v33:
        for i in range(_SYSTEM_EXECUTIONS):
            doc = _system_execution_doc(spec, i)
            yield _storage("execution", doc["id"], doc)
    if spec.version >= Version.V3_4:
        for d in range(min(spec.deployments, _DEPLOYMENT_UPDATES)):
            doc = _deployment_update_doc(spec, d)
            yield _storage("deployment_update", doc["id"], doc)


def _event_hits(spec: ManagerSpec) -> Iterator[Hit]:
    for i in range(spec.events):
        yield _event_hit(spec, i)
    for i in range(spec.logs):
        yield _log_hit(spec, i)


def manager_hits(spec: ManagerSpec) -> Iterator[Hit]:
    """The manager's whole search-server state, as logical hits `{"_index","_type","_id","_source"}`.

    Storage docs (provider context, plugins, snapshot records, blueprints, then per deployment:
    deployment, nodes, instances, executions, modification; then system executions and deployment
    updates) followed by events then logs. Lazy: O(1) memory whatever the spec's size; every call
    yields fresh dicts, equal for equal specs. `type_counts(spec)` gives the counts without
    generating anything.
    """
    yield from _storage_hits(spec)
    yield from _event_hits(spec)


def snapshot_hits(spec: ManagerSpec) -> Iterator[Hit]:
    """What a snapshot of this manager holds in es_data (§4): no provider_context/snapshot docs,
    storage docs first, then events and logs, each hit `{"_index","_type","_id","_score","_source"}`
    with `_score` 0.0. Lazy like `manager_hits`."""
    for hit in manager_hits(spec):
        if hit["_type"] in NEVER_IN_SNAPSHOT_TYPES:
            continue
        yield {"_index": hit["_index"], "_type": hit["_type"], "_id": hit["_id"], "_score": 0.0,
               "_source": hit["_source"]}


# --------------------------------------------------------------------------------------------
# agents.json


def _agent_dict(spec: ManagerSpec, d: int, n: int, k: int, defaults: dict[str, Any],
                bootstrap: dict[str, Any], node: Doc) -> dict[str, Any]:
    state = _instance_state(k)
    runtime_agent = _runtime_agent(spec, d, n, k) if state == "started" else None
    if spec.version == Version.V3_2:  # the T32 tool (§3.3)
        if state != "started":
            return {}
        merged = {**bootstrap, **node["properties"].get("cloudify_agent", {})}
        iid = _instance_id(spec, d, n, k)
        result: dict[str, Any] = {key: merged[key] for key in ("user", "password") if key in merged}
        result["name"] = iid
        result["queue"] = iid
        result["ip"] = _instance_ip(spec, d, n, k)  # every started Compute instance has runtime "ip"
        result["manager_ip"] = manager_ip(spec)
        result["windows"] = _WINDOWS_TYPE in node["type_hierarchy"]
        result["version"] = "3.2"
        result.update({"broker_ip": manager_ip(spec), "broker_ssl_enabled": False,
                       "broker_ssl_cert": "", "broker_user": "guest", "broker_pass": "guest"})
        return result
    # 3.3.1 / 3.4 (§3.2): two keys, each overridden by the instance's runtime cloudify_agent
    runtime_agent = runtime_agent or {}
    return {key: runtime_agent.get(key, value) for key, value in defaults.items()}


def iter_agents_json(spec: ManagerSpec) -> Iterator[str]:
    """agents.json text in pieces, equal to `json.dumps(agents_json(spec))`, in O(1) memory."""
    defaults, bootstrap = _agent_defaults(spec)
    yield "{"
    for d, _b, _bp, dep_id in _deployment_ids(spec):
        yield (", " if d else "") + json.dumps(dep_id) + ": {"
        for n in range(spec.compute_nodes):
            node = _node_doc(spec, d, n)
            yield (", " if n else "") + json.dumps(node["id"]) + ": {"
            for k in range(spec.instances_per_node):
                agent = _agent_dict(spec, d, n, k, defaults, bootstrap, node)
                yield (", " if k else "") + json.dumps(_instance_id(spec, d, n, k)) + ": " + json.dumps(agent)
            yield "}"
        yield "}"
    yield "}"


def _agent_defaults(spec: ManagerSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    bootstrap = provider_context(spec)["context"]["cloudify"]["cloudify_agent"]
    ssl = bool(bootstrap["broker_ssl_enabled"])
    broker_config = {
        "broker_ip": bootstrap["broker_ip"] or manager_ip(spec),
        "broker_user": bootstrap["broker_user"],
        "broker_pass": bootstrap["broker_pass"],
        "broker_ssl_enabled": ssl,
        "broker_ssl_cert": bootstrap["broker_ssl_cert"],
        "broker_port": 5671 if ssl else 5672,
    }
    return {"version": metadata_version(spec.version), "broker_config": broker_config}, bootstrap


def agents_json(spec: ManagerSpec) -> dict[str, Any]:
    """agents.json as the version's manager (3.3/3.4, 3.3.1 `broker_config` form) or the T32 tool
    (3.2, flat form, `{}` for instances not `started`) writes it (§3).

    deployment → Compute node → instance → agent dict; every deployment is a key. Holds one
    entry per Compute instance in memory: use `iter_agents_json` for huge specs.
    """
    result: dict[str, Any] = json.loads("".join(iter_agents_json(spec)))
    return result


# --------------------------------------------------------------------------------------------
# File server and credentials


def _resolve_keys_dir(spec: ManagerSpec, keys_dir: Path | str | None) -> Path:
    spec_dir = Path(spec.keys_dir)
    if keys_dir is not None and Path(keys_dir).absolute() != spec_dir:
        raise ValueError(
            f"keys_dir {str(keys_dir)!r} differs from spec.keys_dir {spec.keys_dir!r}: the nodes' "
            "properties.cloudify_agent.key paths come from the spec; build the spec with that keys_dir"
        )
    return spec_dir


def key_paths(spec: ManagerSpec, keys_dir: Path | str | None = None) -> dict[str, Path]:
    """`"<deployment>_<node>"` → the absolute key path in that Compute node's
    `properties.cloudify_agent.key`. `keys_dir`, if given, must equal `spec.keys_dir`."""
    base = _resolve_keys_dir(spec, keys_dir)
    paths: dict[str, Path] = {}
    for _d, _b, _bp, dep_id in _deployment_ids(spec):
        for n in range(spec.compute_nodes):
            name = credentials_dir_name(dep_id, _node_name(spec, n))
            paths[name] = base / f"{name}.pem"
    return paths


def _key_bytes(spec: ManagerSpec, name: str) -> bytes:
    return _fake_pem("RSA PRIVATE KEY", _digest(spec, "agent-key", name), 12).encode()


def _blueprint_files(spec: ManagerSpec, b: int) -> list[tuple[str, bytes]]:
    """(path relative to the blueprint folder, content) of an extracted blueprint."""
    bp_id = _blueprint_id(b)
    lines = [
        "tosca_definitions_version: cloudify_dsl_1_2",
        "",
        f"description: >\n  Exemple de {bp_id} — {_NON_ASCII}",
        "",
        "imports:",
        "  - http://www.getcloudify.org/spec/cloudify/3.3/types.yaml",
        "  - http://www.getcloudify.org/spec/openstack-plugin/1.3.1/plugin.yaml",
        "",
        "inputs:",
        "  image:",
        "    default: centos-7-x86_64",
        "  agent_private_key_path:",
        "    default: ~/.ssh/agent_key.pem",
        "",
        "node_templates:",
    ]
    scripts: list[tuple[str, bytes]] = []
    for n in range(spec.nodes_per_deployment):
        name = _node_name(spec, n)
        if n < spec.compute_nodes:
            lines += [
                f"  {name}:",
                "    type: cloudify.openstack.nodes.Server",
                "    properties:",
                "      image: { get_input: image }",
                "      cloudify_agent:",
                "        key: { get_input: agent_private_key_path }",
            ]
            continue
        lines += [f"  {name}:", f"    type: nodecellar.nodes.{name}", "    interfaces:",
                  "      cloudify.interfaces.lifecycle:"]
        for op in ("configure", "start", "stop"):
            lines.append(f"        {op}: scripts/{op}_{name}.sh")
            script = (f"#!/bin/bash -e\n# {op} {name} ({bp_id})\n"
                      f"ctx logger info \"{op} {name}: {_NON_ASCII}\"\n").encode()
            scripts.append((f"scripts/{op}_{name}.sh", script))
        if spec.compute_nodes:
            lines += ["    relationships:", "      - type: cloudify.relationships.contained_in",
                      f"        target: {_node_name(spec, 0)}"]
    return [("blueprint.yaml", ("\n".join(lines) + "\n").encode()), *scripts]


def _tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    """A small, byte-deterministic tar.gz (fixed mtimes, owners and modes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_438_592_400
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _file_server_files(spec: ManagerSpec) -> Iterator[tuple[str, bytes]]:
    """(path relative to the file-server root, content) of everything a snapshot copies (§1)."""
    for b in range(spec.blueprints):
        bp_id = _blueprint_id(b)
        files = _blueprint_files(spec, b)
        for rel, data in files:
            yield f"blueprints/{bp_id}/{rel}", data
        yield (f"uploaded-blueprints/{bp_id}/{bp_id}.tar.gz",
               _tar_gz([(f"{bp_id}/{rel}", data) for rel, data in files]))
    if spec.version >= Version.V3_3:
        for i in range(spec.plugins):
            plugin = _plugin_doc(spec, i)
            package = {k: plugin[k] for k in ("package_name", "package_version", "package_source",
                                              "supported_platform", "distribution",
                                              "distribution_version", "distribution_release",
                                              "wheels", "excluded_wheels", "supported_py_versions")
                       if k in plugin}
            wagon = _tar_gz([(f"{plugin['package_name']}/package.json",
                              json.dumps(package, sort_keys=True).encode())])
            yield f"plugins/{plugin['id']}/{plugin['archive_name']}", wagon
    if spec.version >= Version.V3_4:
        for d, _b, _bp, dep_id in _deployment_ids(spec):
            yield (f"deployments/{dep_id}/resources/update_{d}.sh",
                   f"#!/bin/bash\n# deployment resource of {dep_id}\n".encode())


def _credentials(spec: ManagerSpec) -> Iterator[tuple[str, bytes]]:
    for _d, _b, _bp, dep_id in _deployment_ids(spec):
        for n in range(spec.compute_nodes):
            name = credentials_dir_name(dep_id, _node_name(spec, n))
            yield name, _key_bytes(spec, name)


def file_members(spec: ManagerSpec) -> Iterator[tuple[str, bytes]]:
    """Archive members of the file tree: `blueprints/…`, `uploaded-blueprints/…`, `plugins/…`
    (3.3+), `deployments/…` (3.4), then `snapshot-credentials/<dep>_<node>/agent_key` (the same
    bytes `write_file_tree` writes at `key_paths(spec)`). Lazy, deterministic."""
    yield from _file_server_files(spec)
    for name, key in _credentials(spec):
        yield f"snapshot-credentials/{name}/agent_key", key


def write_file_tree(spec: ManagerSpec, fs_root: Path, keys_dir: Path | str | None = None) -> None:
    """Write the manager's file server under `fs_root` and one agent key (mode 0600) per Compute
    node at `key_paths(spec)`. `keys_dir`, if given, must equal `spec.keys_dir` (the node docs
    name those paths). Overwrites existing files; deterministic content."""
    keys = key_paths(spec, keys_dir)
    fs_root = Path(fs_root)
    for rel, data in _file_server_files(spec):
        target = fs_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if rel.endswith(".sh"):
            target.chmod(0o755)
    for name, key in _credentials(spec):
        target = keys[name]
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        os.chmod(target, 0o600)
