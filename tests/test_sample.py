"""The sample-manager generator: determinism, per-version document shapes (spec §5), event
indices, agents.json forms (§3), sizing, streaming, file tree, archive and loading."""

from __future__ import annotations

import io
import itertools
import json
import stat
import tarfile
import time
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from core.errors import BulkLoadError
from core.model import COMPUTE_TYPE, STORAGE_INDEX, Version, storage_mappings
from core.search import Layout, SearchClient
from pipelines.sample import (
    ManagerSpec,
    agents_json,
    document_count,
    file_members,
    iter_agents_json,
    key_paths,
    manager_hits,
    provider_context,
    snapshot_hits,
    type_counts,
    write_file_tree,
)
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.load import install_manager, load_empty_manager, load_manager

V32, V33, V34 = Version.V3_2, Version.V3_3, Version.V3_4
ALL = [V32, V33, V34]


def by_type(spec: ManagerSpec) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for hit in manager_hits(spec):
        out.setdefault(hit["_type"], []).append(hit)
    return out


def tiny(version: Version, **kw: Any) -> ManagerSpec:
    """1 deployment, 1 Compute node with 2 instances (the second uninitialized)."""
    base: dict[str, Any] = dict(version=version, blueprints=1, deployments_per_blueprint=1,
                                compute_nodes=1, other_nodes=0, instances_per_node=2)
    base.update(kw)
    return ManagerSpec(**base)


# ------------------------------------------------------------------------------------------------
# determinism and counts


@pytest.mark.parametrize("version", ALL)
def test_same_spec_same_hits_and_seed_changes_them(version: Version) -> None:
    spec = ManagerSpec(version=version)
    first = [json.dumps(h) for h in manager_hits(spec)]
    assert first == [json.dumps(h) for h in manager_hits(ManagerSpec(version=version))]
    other = [json.dumps(h) for h in manager_hits(ManagerSpec(version=version, seed=1))]
    assert other != first and len(other) == len(first)
    assert list(file_members(spec)) == list(file_members(ManagerSpec(version=version)))


@pytest.mark.parametrize("version", ALL)
def test_type_counts_match_the_stream_and_keys_are_unique(version: Version) -> None:
    spec = ManagerSpec(version=version)
    hits = list(manager_hits(spec))
    assert Counter(h["_type"] for h in hits) == type_counts(spec)
    assert len(hits) == document_count(spec)
    keys = [(h["_type"], h["_id"]) for h in hits]
    assert len(set(keys)) == len(keys)
    deployments = {h["_id"] for h in hits if h["_type"] == "deployment"}
    # §7.2 conflict pass: no other document may carry a deployment's id
    assert not [h for h in hits if h["_type"] != "deployment" and h["_id"] in deployments]


def test_default_spec_counts() -> None:
    assert type_counts(ManagerSpec()) == {
        "provider_context": 1, "plugin": 2, "blueprint": 2, "snapshot": 2, "deployment": 4,
        "node": 12, "node_instance": 24, "execution": 14, "deployment_modification": 4,
        "cloudify_event": 50, "cloudify_log": 50,
    }


@pytest.mark.parametrize("version", ALL)
def test_every_section5_type_present_per_version(version: Version) -> None:
    types = set(by_type(ManagerSpec(version=version)))
    common = {"provider_context", "blueprint", "deployment", "node", "node_instance", "execution",
              "deployment_modification", "cloudify_event", "cloudify_log"}
    expected = {
        V32: common,
        V33: common | {"plugin", "snapshot"},
        V34: common | {"plugin", "snapshot", "deployment_update"},
    }[version]
    assert types == expected


# ------------------------------------------------------------------------------------------------
# document shapes


@pytest.mark.parametrize("version", ALL)
def test_blueprint_and_deployment_fields(version: Version) -> None:
    docs = by_type(ManagerSpec(version=version))
    blueprint = docs["blueprint"][0]
    bp_fields = {"id", "plan", "created_at", "updated_at"}
    if version >= V33:
        bp_fields |= {"description", "main_file_name"}
        assert "✓" in blueprint["_source"]["description"]
    assert set(blueprint["_source"]) == bp_fields
    assert blueprint["_id"] == blueprint["_source"]["id"]
    plan = blueprint["_source"]["plan"]
    assert {"nodes", "workflows", "deployment_plugins_to_install", "workflow_plugins_to_install"} <= set(plan)
    plugin = plan["deployment_plugins_to_install"][0]
    six = {"package_name", "package_version", "supported_platform", "distribution",
           "distribution_version", "distribution_release"}
    assert (six <= set(plugin)) == (version >= V34)

    dep = docs["deployment"][0]["_source"]
    dep_fields = {"id", "blueprint_id", "created_at", "updated_at", "workflows", "inputs",
                  "outputs", "policy_types", "policy_triggers", "groups", "permalink"}
    if version >= V34:
        dep_fields |= {"scaling_groups", "description"}
    assert set(dep) == dep_fields
    assert dep["permalink"] is None
    assert {"install", "uninstall"} <= set(dep["workflows"])
    assert ("install_new_agents" in dep["workflows"]) == (version >= V33)
    assert dep["workflows"]["install"] == {
        "operation": "cloudify.plugins.workflows.install", "plugin": "default_workflows",
        "parameters": {}}


@pytest.mark.parametrize("version", ALL)
def test_nodes(version: Version) -> None:
    spec = ManagerSpec(version=version)
    nodes = by_type(spec)["node"]
    fields = {"id", "deployment_id", "blueprint_id", "type", "type_hierarchy",
              "number_of_instances", "planned_number_of_instances", "deploy_number_of_instances",
              "host_id", "properties", "operations", "plugins", "plugins_to_install",
              "relationships"}
    if version >= V34:
        fields |= {"min_number_of_instances", "max_number_of_instances"}
    paths = key_paths(spec)
    compute = [n for n in nodes if COMPUTE_TYPE in n["_source"]["type_hierarchy"]]
    assert len(compute) == spec.deployments * spec.compute_nodes
    assert len(nodes) - len(compute) == spec.deployments * spec.other_nodes
    for hit in nodes:
        node = hit["_source"]
        assert set(node) == fields
        assert hit["_id"] == f"{node['deployment_id']}_{node['id']}"
    for hit in compute:
        node = hit["_source"]
        agent = node["properties"]["cloudify_agent"]
        assert agent["key"] == str(paths[hit["_id"]]) and Path(agent["key"]).is_absolute()
        assert agent["user"]
        ops = node["operations"]
        amqp = {"cloudify.interfaces.cloudify_agent.create_amqp",
                "cloudify.interfaces.cloudify_agent.validate_amqp"}
        assert (amqp <= set(ops)) == (version >= V33)
        if version >= V33:
            assert ops["cloudify.interfaces.cloudify_agent.validate_amqp"] == {
                "operation": "cloudify_agent.operations.validate_agent_amqp", "plugin": "agent",
                "executor": "central_deployment_agent", "inputs": {"validate_agent_timeout": 20},
                "has_intrinsic_functions": False, "max_retries": None, "retry_interval": None}
        names = [p["name"] for p in node["plugins"]]
        assert ("agent" in names) == (version >= V34)
        if version >= V34:
            assert node["min_number_of_instances"] == 0 and node["max_number_of_instances"] == -1
            assert all("distribution_release" in p for p in node["plugins"] + node["plugins_to_install"])


@pytest.mark.parametrize("version", ALL)
def test_node_instances(version: Version) -> None:
    docs = by_type(ManagerSpec(version=version, instances_per_node=3))
    instances = [h["_source"] for h in docs["node_instance"]]
    fields = {"id", "node_id", "deployment_id", "host_id", "state", "runtime_properties",
              "relationships"} | ({"scaling_groups"} if version >= V34 else set())
    assert all(set(i) == fields for i in instances)
    assert {i["state"] for i in instances} == {"started", "uninitialized"}
    assert all(h["_id"] == h["_source"]["id"] and h["_id"].startswith(h["_source"]["node_id"] + "_")
               for h in docs["node_instance"])
    compute_ids = {h["_source"]["id"] for h in docs["node"]
                   if COMPUTE_TYPE in h["_source"]["type_hierarchy"]}
    started_compute = [i for i in instances if i["node_id"] in compute_ids and i["state"] == "started"]
    with_agent = [i for i in started_compute if "cloudify_agent" in i["runtime_properties"]]
    assert with_agent and len(with_agent) < len(started_compute)  # sometimes present
    assert all(i["runtime_properties"]["cloudify_agent"]["ip"] for i in with_agent)
    assert all(i["runtime_properties"] == {} for i in instances if i["state"] == "uninitialized")


@pytest.mark.parametrize("version", ALL)
def test_executions(version: Version) -> None:
    executions = [h["_source"] for h in by_type(ManagerSpec(version=version))["execution"]]
    fields = {"id", "status", "deployment_id", "blueprint_id", "workflow_id", "created_at", "error",
              "parameters"}
    if version == V32:
        assert all(set(e) == fields for e in executions)
        assert not any(e["workflow_id"].endswith("_snapshot") for e in executions)
    else:
        assert all(set(e) == fields | {"is_system_workflow"} for e in executions)
        system = {e["workflow_id"]: e for e in executions if e["is_system_workflow"]}
        assert set(system) == {"create_snapshot", "restore_snapshot"}
        for e in system.values():
            assert e["deployment_id"] is None and e["parameters"]["snapshot_id"]
            assert e["parameters"]["config"]["file_server_root"] == "/opt/manager/resources"
            assert ("file_server_deployments_folder" in e["parameters"]["config"]) == (version >= V34)
    assert {"install", "create_deployment_environment"} <= {e["workflow_id"] for e in executions}
    assert [e for e in executions if e["status"] == "failed" and e["error"]]


def test_other_storage_docs() -> None:
    docs = by_type(ManagerSpec(version=V34))
    assert set(docs["plugin"][0]["_source"]) == {
        "id", "package_name", "archive_name", "package_source", "package_version",
        "supported_platform", "distribution", "distribution_version", "distribution_release",
        "wheels", "excluded_wheels", "supported_py_versions", "uploaded_at"}
    assert set(docs["snapshot"][0]["_source"]) == {"id", "created_at", "status", "error"}
    assert set(docs["deployment_modification"][0]["_source"]) == {
        "id", "deployment_id", "status", "created_at", "ended_at", "modified_nodes",
        "node_instances", "context"}
    assert set(docs["deployment_update"][0]["_source"]) == {
        "id", "deployment_id", "steps", "state", "deployment_plan", "deployment_update_nodes",
        "deployment_update_node_instances", "deployment_update_deployment",
        "modified_entity_ids", "execution_id", "created_at"}
    (context,) = docs["provider_context"]
    assert context["_id"] == "CONTEXT" and context["_index"] == STORAGE_INDEX
    agent = context["_source"]["context"]["cloudify"]["cloudify_agent"]
    assert {"broker_user", "broker_pass", "broker_ip", "broker_ssl_enabled", "broker_ssl_cert"} <= set(agent)
    assert agent["broker_ssl_cert"].startswith("-----BEGIN CERTIFICATE-----\n")
    assert context["_source"] == provider_context(ManagerSpec(version=V34))


# ------------------------------------------------------------------------------------------------
# events and logs


@pytest.mark.parametrize("version", ALL)
def test_events_and_logs(version: Version) -> None:
    docs = by_type(ManagerSpec(version=version))
    hits = docs["cloudify_event"] + docs["cloudify_log"]
    assert len(docs["cloudify_event"]) == 50 and len(docs["cloudify_log"]) == 50
    for hit in hits:
        src = hit["_source"]
        assert src["type"] == hit["_type"]
        assert len(hit["_id"]) == 22 and set(hit["_id"]) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert {"timestamp", "@timestamp", "context", "message", "message_code"} <= set(src)
        assert src["message"]["text"]
        assert src["@timestamp"][:10] == src["timestamp"][:10]
        assert {"blueprint_id", "deployment_id", "execution_id", "workflow_id"} <= set(src["context"])
        if version == V32:
            assert hit["_index"] == "cloudify_events"
        else:
            assert hit["_index"] == "logstash-" + src["@timestamp"][:10].replace("-", ".")
    for hit in docs["cloudify_event"]:
        assert {"event_type", "message"} <= set(hit["_source"]) and "arguments" in hit["_source"]["message"]
    for hit in docs["cloudify_log"]:
        assert hit["_source"]["level"] in {"debug", "info", "warning", "error"} and "logger" in hit["_source"]
    assert len({h["_index"] for h in hits}) == (1 if version == V32 else 5)  # several days
    assert any("节点" in h["_source"]["message"]["text"] for h in docs["cloudify_event"])
    assert any("✓" in h["_source"]["message"]["text"] for h in docs["cloudify_log"])
    assert len({h["_id"] for h in hits}) == len(hits)
    # events point at this manager's executions
    execution_ids = {h["_id"] for h in docs["execution"]}
    assert {h["_source"]["context"]["execution_id"] for h in hits} <= execution_ids


@pytest.mark.parametrize("version", ALL)
def test_snapshot_hits_drop_provider_context_and_snapshots(version: Version) -> None:
    spec = ManagerSpec(version=version)
    hits = list(snapshot_hits(spec))
    assert all(list(h) == ["_index", "_type", "_id", "_score", "_source"] for h in hits)
    assert all(h["_score"] == 0.0 for h in hits)
    assert not {"provider_context", "snapshot"} & {h["_type"] for h in hits}
    kinds = [h["_index"] == STORAGE_INDEX for h in hits]
    assert kinds == sorted(kinds, reverse=True)  # storage first, then events/logs
    expected = [h for h in manager_hits(spec) if h["_type"] not in ("provider_context", "snapshot")]
    assert [{k: v for k, v in h.items() if k != "_score"} for h in hits] == expected


# ------------------------------------------------------------------------------------------------
# agents.json


def _tiny_ids(spec: ManagerSpec) -> tuple[str, dict[str, Any], dict[str, Any]]:
    docs = by_type(spec)
    (dep,) = docs["deployment"]
    first, second = (h["_source"] for h in docs["node_instance"])
    return dep["_id"], first, second


def test_agents_json_3_2_flat_form() -> None:
    spec = tiny(V32)
    dep, started, uninit = _tiny_ids(spec)
    assert (started["state"], uninit["state"]) == ("started", "uninitialized")
    assert agents_json(spec) == {dep: {"vm": {
        started["id"]: {
            "user": "centos", "name": started["id"], "queue": started["id"],
            "ip": started["runtime_properties"]["ip"], "manager_ip": "10.67.0.5",
            "windows": False, "version": "3.2", "broker_ip": "10.67.0.5",
            "broker_ssl_enabled": False, "broker_ssl_cert": "", "broker_user": "guest",
            "broker_pass": "guest",
        },
        uninit["id"]: {},
    }}}


def test_agents_json_3_3_broker_config_form() -> None:
    spec = tiny(V33)
    dep, started, uninit = _tiny_ids(spec)
    cert = provider_context(spec)["context"]["cloudify"]["cloudify_agent"]["broker_ssl_cert"]
    entry = {"version": "3.3", "broker_config": {
        "broker_ip": "10.67.0.5", "broker_user": "cloudify", "broker_pass": "c10udify-0",
        "broker_ssl_enabled": False, "broker_ssl_cert": cert, "broker_port": 5672}}
    assert agents_json(spec) == {dep: {"vm": {started["id"]: entry, uninit["id"]: entry}}}


def test_agents_json_3_4_runtime_overrides_defaults() -> None:
    spec = tiny(V34)
    dep, started, uninit = _tiny_ids(spec)
    cert = provider_context(spec)["context"]["cloudify"]["cloudify_agent"]["broker_ssl_cert"]
    runtime_broker = started["runtime_properties"]["cloudify_agent"]["broker_config"]
    assert runtime_broker["broker_ip"] != "10.67.0.5"
    assert agents_json(spec) == {dep: {"vm": {
        started["id"]: {"version": "3.4.0", "broker_config": runtime_broker},
        uninit["id"]: {"version": "3.4.0", "broker_config": {
            "broker_ip": "10.67.0.5", "broker_user": "cloudify", "broker_pass": "c10udify-0",
            "broker_ssl_enabled": True, "broker_ssl_cert": cert, "broker_port": 5671}},
    }}}


@pytest.mark.parametrize("version", ALL)
def test_agents_json_lists_every_deployment_and_only_compute_nodes(version: Version) -> None:
    assert agents_json(tiny(version, compute_nodes=0, other_nodes=2)) == {"nodecellar-dep1": {}}
    spec = ManagerSpec(version=version, compute_nodes=2)
    agents = agents_json(spec)
    assert set(agents) == {h["_id"] for h in manager_hits(spec) if h["_type"] == "deployment"}
    assert all(set(nodes) == {"vm", "win_vm"} for nodes in agents.values())
    assert "".join(iter_agents_json(spec)) == json.dumps(agents)
    if version == V32:
        windows = [a for nodes in agents.values() for a in nodes["win_vm"].values() if a]
        assert windows and all(a["windows"] and a["password"] for a in windows)


# ------------------------------------------------------------------------------------------------
# sizing and streaming


@pytest.mark.parametrize(("version", "documents"), [(V32, 1000), (V33, 1000), (V34, 1000), (V33, 100_000)])
def test_sized_is_within_ten_percent(version: Version, documents: int) -> None:
    spec = ManagerSpec.sized(version, documents)
    n = sum(1 for _ in manager_hits(spec))
    assert abs(n - documents) <= documents // 10
    counts = type_counts(spec)
    assert counts["cloudify_event"] + counts["cloudify_log"] + counts["node_instance"] > 0.8 * n


@pytest.mark.parametrize("documents", [10, 10_000_000])
def test_sized_extremes(documents: int) -> None:
    for version in ALL:
        spec = ManagerSpec.sized(version, documents)
        assert abs(document_count(spec) - documents) <= max(2, documents // 10)
    assert sum(1 for _ in manager_hits(ManagerSpec.sized(V33, 10))) == document_count(
        ManagerSpec.sized(V33, 10))


@pytest.mark.parametrize("documents", [30, 31, 200, 2000, 10_000, 99_999])
def test_sized_snapshot_holds_exactly_what_was_asked(documents: int) -> None:
    """`sample archive --documents N` writes N es_data lines: the documents a snapshot never holds
    (provider_context, snapshot) come on top (issue 15: 10,000 asked, 9,999 written)."""
    for version in ALL:
        spec = ManagerSpec.sized_snapshot(version, documents, seed=3)
        assert sum(1 for _ in snapshot_hits(spec)) == documents, (version, documents)


def test_sample_archive_writes_exactly_n_lines_and_says_so(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    out = tmp_path / "s.zip"
    result = CliRunner().invoke(app, ["sample", "archive", str(out), "--version", "3.2",
                                      "--documents", "10000"])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as z:
        lines = z.read("es_data").splitlines()
    assert len(lines) == 10_000
    types = Counter(json.loads(line)["_type"] for line in lines)
    listed = ", ".join(f"{t} {n:,}" for t, n in types.items())
    assert result.output == f"wrote {out}: a 3.2 manager's snapshot, 10,000 documents ({listed})\n"


def test_manager_hits_is_a_lazy_stream() -> None:
    start = time.perf_counter()
    stream = manager_hits(ManagerSpec.sized(V33, 2_000_000))
    first = list(itertools.islice(stream, 10))
    assert len(first) == 10 and time.perf_counter() - start < 1.0
    assert iter(stream) is stream  # a generator, not a list


def test_manager_hits_memory_does_not_grow_with_size() -> None:
    def peak(documents: int) -> int:
        tracemalloc.start()
        try:
            assert sum(1 for _ in manager_hits(ManagerSpec.sized(V34, documents))) == documents
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(2_000), peak(40_000)
    assert large < small * 2 + 64_000


# ------------------------------------------------------------------------------------------------
# file tree, archive, load


@pytest.mark.parametrize("version", ALL)
def test_write_file_tree(version: Version, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    spec = ManagerSpec(version=version, keys_dir=str(keys))
    fs = tmp_path / "fs"
    write_file_tree(spec, fs, keys)
    members = dict(file_members(spec))
    tops = {name.split("/")[0] for name in members}
    expected = {"blueprints", "uploaded-blueprints", "snapshot-credentials"}
    expected |= {"plugins"} if version >= V33 else set()
    expected |= {"deployments"} if version >= V34 else set()
    assert tops == expected
    for name, data in members.items():
        if not name.startswith("snapshot-credentials/"):
            assert (fs / name).read_bytes() == data
    paths = key_paths(spec, keys)
    assert len(paths) == spec.deployments
    for name, path in paths.items():
        assert path.parent == keys
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = path.read_bytes()
        assert key == members[f"snapshot-credentials/{name}/agent_key"]
        assert key.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    tar_name = next(n for n in members if n.startswith("uploaded-blueprints/nodecellar/"))
    assert tar_name == "uploaded-blueprints/nodecellar/nodecellar.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(members[tar_name])) as tar:
        assert "nodecellar/blueprint.yaml" in tar.getnames()
    assert "✓" in members["blueprints/nodecellar/blueprint.yaml"].decode()
    with pytest.raises(ValueError, match="keys_dir"):
        write_file_tree(spec, fs, tmp_path / "elsewhere")


@pytest.mark.parametrize("version", ALL)
def test_write_sample_archive(version: Version, tmp_path: Path) -> None:
    spec = ManagerSpec(version=version, keys_dir=str(tmp_path / "keys"))
    path = tmp_path / "snap.zip"
    write_sample_archive(spec, path)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert json.loads(z.read("metadata.json")) == {
            V32: {"has_cloudify_events": True, "snapshot_version": "3.2"},
            V33: {"has_cloudify_events": False, "snapshot_version": "3.3"},
            V34: {"has_cloudify_events": False, "snapshot_version": "3.4.0"},
        }[version]
        lines = z.read("es_data").decode().splitlines()
        assert lines == [json.dumps(h) for h in snapshot_hits(spec)]
        assert json.loads(z.read("agents.json")) == agents_json(spec)
        for name, data in file_members(spec):
            assert z.read(name) == data
        assert ("manager.json" in names) == (version == V32)
        if version == V32:
            assert json.loads(z.read("manager.json")) == {"MANAGEMENT_IP": "10.67.0.5"}


@pytest.mark.server
@pytest.mark.es8
def test_load_manager_gives_the_server_a_managers_shape(search: SearchClient, tmp_path: Path) -> None:
    spec = ManagerSpec(version=V34, keys_dir=str(tmp_path / "keys"))
    counts = load_manager(spec, search, tmp_path / "fs")
    assert sum(counts.values()) == document_count(spec)
    assert counts[(STORAGE_INDEX, "provider_context")] == 1
    search.refresh()
    assert {k: v for k, v in search.logical_indices("*").items() if v} == counts
    stored = Counter(
        (h["_index"], h["_type"], h["_id"], json.dumps(h["_source"], sort_keys=True))
        for h in search.scan("*")
    )
    assert stored == Counter(
        (h["_index"], h["_type"], h["_id"], json.dumps(h["_source"], sort_keys=True))
        for h in manager_hits(spec)
    )
    if search.layout is Layout.TYPED:  # the manager's own settings and mappings (spec §4)
        _, settings = search.request("GET", "/cloudify_storage/_settings")
        analysis = settings["cloudify_storage"]["settings"]["index"]["analysis"]
        assert analysis == {"analyzer": {"default": {"tokenizer": "whitespace"}}}
        _, mappings = search.request("GET", "/cloudify_storage/_mapping")
        types = mappings["cloudify_storage"]["mappings"]
        for doc_type, mapping in storage_mappings(V34).items():
            for key, value in mapping.items():
                if key == "properties":
                    for name, field_mapping in value.items():
                        got = dict(types[doc_type]["properties"][name])
                        if got.get("type") == "object":
                            got.pop("type")  # 1.x names the type of an `enabled: false` object
                        assert got == field_mapping, (doc_type, name)
                else:
                    assert types[doc_type][key] == value, (doc_type, key)
        assert types["node_instance"]["_id"] == {"path": "id"}
    assert (tmp_path / "fs" / "blueprints" / "nodecellar" / "blueprint.yaml").is_file()
    assert all(p.is_file() for p in key_paths(spec).values())


@pytest.mark.server
def test_load_empty_manager_is_a_fresh_managers_state(search: SearchClient) -> None:
    counts = load_empty_manager(V33, search)
    assert counts == {(STORAGE_INDEX, "provider_context"): 1}
    search.refresh()
    assert {k: v for k, v in search.logical_indices("*").items() if v} == counts
    assert search.get(STORAGE_INDEX, "provider_context", "CONTEXT") == provider_context(
        ManagerSpec(version=V33)
    )
    _, mappings = search.request("GET", "/cloudify_storage/_mapping")
    assert sorted(mappings["cloudify_storage"]["mappings"]) == sorted(
        [*storage_mappings(V33), "provider_context"]
    )


@pytest.mark.server
def test_load_manager_fails_naming_a_document_that_does_not_fit(
    search: SearchClient, tmp_path: Path
) -> None:
    """A server whose mapping refuses some documents: `BulkLoadError` names them."""
    install_manager(search, V34)
    search.request("PUT", "/cloudify_storage/_mapping/plugin",
                   {"plugin": {"properties": {"uploaded_at": {"type": "long"}}}})
    spec = ManagerSpec(version=V34, keys_dir=str(tmp_path / "keys"))
    with pytest.raises(BulkLoadError) as err:
        load_manager(spec, search, tmp_path / "fs")
    plugin_ids = sorted(h["_id"] for h in manager_hits(spec) if h["_type"] == "plugin")
    assert sorted(item[2] for item in err.value.items) == plugin_ids
    assert {item[:2] for item in err.value.items} == {(STORAGE_INDEX, "plugin")}


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        ManagerSpec(events=-1)
    with pytest.raises(ValueError):
        ManagerSpec(keys_dir="relative/keys")
    assert ManagerSpec(version="3.4").version is V34  # type: ignore[arg-type]
    assert ManagerSpec(version=V32).event_index_style == "cloudify_events"
    assert ManagerSpec(version=V34).event_index_style == "logstash"
