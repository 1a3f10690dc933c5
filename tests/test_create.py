"""`create`: pure agent/exclusion rules, then real creates from generated managers loaded into the
real search server (the generator's `snapshot_hits`, `agents_json` and `file_members` are the
oracle), the store mode, and a server stopped in the middle of a job."""

from __future__ import annotations

import functools
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.archive import SnapshotReader
from core.errors import JobFailed, StoreError, UnsafePath
from core.manager import read_version
from core.model import STORAGE_INDEX, Version
from core.search import SearchClient
from core.store import archive_path
from core.validate import validate_archive
from pipelines.create import (
    CreateConfig,
    _reconcile,
    run,
)
from pipelines.sample.generate import (
    ManagerSpec,
    agents_json,
    document_count,
    file_members,
    manager_ip,
    snapshot_hits,
)
from pipelines.sample.load import load_manager
from tests.conftest import SEARCH_SERVER, fresh_manager, wipe
from transforms import search_io
from transforms.agents import (
    AgentDefaults,
    DeploymentFact,
    InstanceFact,
    NodeFact,
    agent_facts,
    agent_v32,
    agent_v33,
    decode_fact,
    deployment_agents,
    encode_fact,
)
from transforms.read_manager import is_excluded, list_file_tree

MULTI = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
ARCHIVE_OWN = {"es_data", "metadata.json", "agents.json", "manifest.json", "manager.json"}


# ----------------------------------------------------------------------------------- helpers
def hit_multiset(hits: Iterable[dict[str, Any]]) -> Counter[tuple[str, str, str, str]]:
    return Counter(
        (h["_index"], h["_type"], h["_id"], json.dumps(h["_source"], sort_keys=True)) for h in hits
    )


def archive_hits(path: Path) -> Counter[tuple[str, str, str, str]]:
    with SnapshotReader(path) as snap:
        return hit_multiset(hit for _, hit in snap.iter_hits())


def archive_files(path: Path) -> dict[str, bytes]:
    with SnapshotReader(path) as snap:
        return {n: snap.open(n).read() for n in snap.file_names() if n not in ARCHIVE_OWN}


_loaded: dict[str, tuple[ManagerSpec, Path]] = {}


def manager(client: SearchClient, spec: ManagerSpec) -> Path:
    """Make the server hold exactly `spec`'s manager (reloaded only when it does not); fs root."""
    fs_root = Path(spec.keys_dir).parent / "fs"
    with SearchClient(client.url) as c:
        c.refresh()
        if _loaded.get("current", (None,))[0] == spec and sum(
            n for n in c.logical_indices("*").values()
        ) == document_count(spec):
            return _loaded["current"][1]
        wipe(c)
        load_manager(spec, c, fs_root)
    _loaded["current"] = (spec, fs_root)
    return fs_root


def sized(tmp_root: Path, version: Version, documents: int, seed: int = 0) -> ManagerSpec:
    """A generated manager with its own folder (file server `fs/`, agent keys `keys/`)."""
    folder = tmp_root / f"{version.value}-{documents}-{seed}"
    spec = ManagerSpec.sized(version, documents, seed=seed)
    return replace(spec, keys_dir=str(folder / "keys"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("managers")


# ------------------------------------------------------------------------- pure: agents.json
DEFAULTS_33 = AgentDefaults(
    Version.V3_3,
    {
        "broker_ip": "10.0.0.5",
        "broker_user": "cloudify",
        "broker_pass": "pw",
        "user": "centos",
        "broker_ssl_enabled": False,
        "broker_ssl_cert": "",
    },
    "10.0.0.5",
)
NODE = NodeFact("vm", windows=False, agent_properties={"user": "ubuntu"}, ip=None)


def test_agent_v33_is_the_3_3_1_form_and_runtime_keys_win_whole() -> None:
    plain = InstanceFact("vm_1", "vm", "started", None)
    assert agent_v33(plain, DEFAULTS_33) == {
        "version": "3.3",
        "broker_config": {
            "broker_ip": "10.0.0.5",
            "broker_user": "cloudify",
            "broker_pass": "pw",
            "broker_ssl_enabled": False,
            "broker_ssl_cert": "",
            "broker_port": 5672,
        },
    }
    own = {"broker_ip": "1.2.3.4"}
    runtime = InstanceFact("vm_2", "vm", "started", {"broker_config": own, "name": "vm_2"})
    assert agent_v33(runtime, DEFAULTS_33) == {"version": "3.3", "broker_config": own}


def test_agent_v32_is_flat_and_empty_unless_started() -> None:
    defaults = replace(DEFAULTS_33, version=Version.V3_2)
    assert agent_v32(InstanceFact("vm_1", "vm", "uninitialized", None), NODE, defaults) == {}
    assert agent_v32(InstanceFact("vm_2", "vm", "started", None, "10.1.1.1"), NODE, defaults) == {
        "user": "ubuntu",
        "name": "vm_2",
        "queue": "vm_2",
        "ip": "10.1.1.1",
        "manager_ip": "10.0.0.5",
        "windows": False,
        "version": "3.2",
        "broker_ip": "10.0.0.5",
        "broker_ssl_enabled": False,
        "broker_ssl_cert": "",
        "broker_user": "guest",
        "broker_pass": "guest",
    }


def test_deployment_agents_lists_compute_instances_only_and_empty_deployments() -> None:
    facts = [
        DeploymentFact(),
        NODE,
        InstanceFact("vm_1", "vm", "started", None),
        InstanceFact("app_1", "app", "started", None),
    ]
    assert deployment_agents(facts, DEFAULTS_33) == {
        "vm": {"vm_1": agent_v33(facts[2], DEFAULTS_33)}
    }
    assert deployment_agents([DeploymentFact()], DEFAULTS_33) == {}
    assert deployment_agents([NODE], DEFAULTS_33) is None  # no such deployment


def test_build_agents_json_gives_every_existing_deployment_once_sorted(tmp_path: Path) -> None:
    """Facts of 40 deployments through `BuildAgentsJson`: agents.json is every existing
    deployment once, sorted by id, each built from all of its facts; a deployment without its
    `DeploymentFact` is left out; the facts were staged in files of the buckets they fell in."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline

    from transforms.agents import FACT_BUCKETS, BuildAgentsJson, fact_bucket

    deployments = [f"dep{n:02d}" for n in range(40)]
    assert len({fact_bucket(d) for d in deployments}) > FACT_BUCKETS // 2  # spread over buckets
    facts = [(d, encode_fact(DeploymentFact())) for d in deployments]
    facts += [(d, encode_fact(NODE)) for d in deployments] + [("ghost", encode_fact(NODE))]
    facts += [(d, encode_fact(InstanceFact(f"vm_{d}", "vm", "started", None))) for d in deployments]
    facts += [("ghost", encode_fact(InstanceFact("vm_ghost", "vm", "started", None)))]
    staging = tmp_path / "staging"
    staging.mkdir()
    copy = tmp_path / "agents.json"
    with TestPipeline() as p:
        pages = [facts[n : n + 7] for n in range(0, len(facts), 7)][::-1]  # lists, as pages give
        members = p | beam.Create(pages) | BuildAgentsJson(str(staging), DEFAULTS_33)
        _ = members | beam.Map(lambda m: copy.write_bytes(Path(m.source).read_bytes()))
    agents = json.loads(copy.read_bytes())
    instance = InstanceFact("vm_x", "vm", "started", None)
    assert agents == {d: {"vm": {f"vm_{d}": agent_v33(instance, DEFAULTS_33)}} for d in deployments}
    assert list(agents) == sorted(deployments)
    buckets = {int(f.name.split("-")[1]) for f in staging.glob("facts-*.jsonl")}
    assert buckets == {fact_bucket(d) for d in [*deployments, "ghost"]}


def test_a_bucket_joins_a_deployments_facts_from_every_bundles_file(tmp_path: Path) -> None:
    """Two bundles each staged part of the same deployments' facts: the bucket's build reads
    both files and each deployment gets all of its instances (none twice, none lost)."""
    from transforms.agents import _BucketAgentsFn, _StageFactsFn, fact_bucket

    stage = _StageFactsFn(str(tmp_path))
    paths: list[str] = []
    for half in (0, 1):
        stage.start_bundle()
        for d in ("a", "b"):
            if half == 0:
                stage.process([(d, encode_fact(DeploymentFact())), (d, encode_fact(NODE))])
            stage.process([(d, encode_fact(InstanceFact(f"vm_{d}{half}", "vm", "started", None)))])
        out = [wv.value for wv in stage.finish_bundle()]
        assert [bucket for bucket, _ in out] == sorted({fact_bucket("a"), fact_bucket("b")})
        paths += [path for _, path in out]
    by_bucket: dict[int, list[str]] = {}
    for path in paths:
        by_bucket.setdefault(int(Path(path).name.split("-")[1]), []).append(path)
    build = _BucketAgentsFn(DEFAULTS_33, None)
    fragments = [f for item in sorted(by_bucket.items()) for f in build.process(item)]
    agents = json.loads("{" + ", ".join(sorted(fragments)) + "}")
    instance = InstanceFact("x", "vm", "started", None)
    agent = agent_v33(instance, DEFAULTS_33)
    assert agents == {d: {"vm": {f"vm_{d}0": agent, f"vm_{d}1": agent}} for d in ("a", "b")}


def test_a_staged_fact_reads_back_as_it_was(tmp_path: Path) -> None:
    """Every kind of fact, with dicts, booleans, ips and None filled in, through a fact file
    and back (`_StageFactsFn` writes, `_BucketAgentsFn` reads), equals itself; and a 3.2
    manager's agents (which use `windows` and `ip`) come out of the staged facts as
    `deployment_agents` builds them from the facts themselves."""
    from transforms.agents import _BucketAgentsFn, _StageFactsFn, agents_fragment

    facts = [
        DeploymentFact(),
        NodeFact("win", True, {"user": "Administrator", "port": 5985}, "10.0.0.9"),
        NodeFact("vm", windows=False, agent_properties={}, ip=None),
        InstanceFact("win_1", "win", "started", {"name": "win_1", "ssl": True}, "10.1.1.1"),
        InstanceFact("vm_1", "vm", "started", None, None),
        InstanceFact("vm_2", "vm", "uninitialized", None, "10.1.1.2"),
    ]
    stage = _StageFactsFn(str(tmp_path))
    stage.start_bundle()
    stage.process([("dep", encode_fact(f)) for f in facts])
    (item,) = [wv.value for wv in stage.finish_bundle()]
    with open(item[1], "rb") as f:
        import msgspec

        read_back = [decode_fact(tuple(msgspec.json.decode(line)[1:])) for line in f]
    assert read_back == facts
    defaults = replace(DEFAULTS_33, version=Version.V3_2)
    (fragment,) = _BucketAgentsFn(defaults, None).process((item[0], [item[1]]))
    assert fragment == agents_fragment("dep", deployment_agents(facts, defaults) or {})
    assert json.loads("{" + fragment + "}")["dep"]["win"]["win_1"]["windows"] is True


def test_agent_facts_are_small_projections_of_hosts_only() -> None:
    instance = {
        "id": "vm_1",
        "node_id": "vm",
        "deployment_id": "d",
        "host_id": "vm_1",
        "state": "started",
        "runtime_properties": {
            "ip": "1.1.1.1",
            "other": "x" * 100,
            "cloudify_agent": {"name": "vm_1"},
        },
    }
    hosted = {**instance, "id": "app_1", "node_id": "app", "host_id": "vm_1"}

    def hit(t: str, doc: dict[str, Any]) -> dict[str, Any]:
        return {"_index": STORAGE_INDEX, "_type": t, "_id": doc["id"], "_source": doc}

    facts = list(agent_facts(hit("node_instance", instance)))
    assert facts == [("d", InstanceFact("vm_1", "vm", "started", {"name": "vm_1"}, "1.1.1.1"))]
    assert list(agent_facts(hit("node_instance", hosted))) == []
    for _, fact in facts + [("d", NODE), ("d", DeploymentFact())]:
        assert decode_fact(encode_fact(fact)) == fact


def test_is_excluded_drops_context_snapshots_and_own_execution_only() -> None:
    types, ids = frozenset({"provider_context", "snapshot"}), frozenset({"e1"})

    def hit(index: str, t: str, i: str) -> dict[str, Any]:
        return {"_index": index, "_type": t, "_id": i, "_source": {}}

    assert is_excluded(hit(STORAGE_INDEX, "snapshot", "s"), types, ids)
    assert is_excluded(hit(STORAGE_INDEX, "execution", "e1"), types, ids)
    assert not is_excluded(hit(STORAGE_INDEX, "execution", "e2"), types, ids)
    assert not is_excluded(hit("logstash-2015.12.01", "cloudify_event", "e1"), types, ids)


def test_reconcile_fails_on_any_difference() -> None:
    _reconcile({("i", "t"): 3}, {"i/t": 3}, {"i/t": 1}, {"i/t": 2})
    with pytest.raises(JobFailed, match="i/t: 3 on the server, 2 read"):
        _reconcile({("i", "t"): 3}, {"i/t": 2}, {}, {"i/t": 2})
    with pytest.raises(JobFailed, match="i/t: 3 read, 2 written"):
        _reconcile({("i", "t"): 3}, {"i/t": 3}, {}, {"i/t": 2})


def test_file_tree_refuses_links_leaving_the_root(tmp_path: Path) -> None:
    (tmp_path / "fs" / "blueprints" / "bp").mkdir(parents=True)
    (tmp_path / "fs" / "blueprints" / "bp" / "a.yaml").write_text("a")
    assert [m.name for m in list_file_tree(str(tmp_path / "fs"), "blueprints")] == [
        "blueprints/bp/a.yaml"
    ]
    (tmp_path / "secret").write_text("s")
    (tmp_path / "fs" / "blueprints" / "bp" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePath):
        list(list_file_tree(str(tmp_path / "fs"), "blueprints"))
    assert list(list_file_tree(str(tmp_path / "fs"), "plugins")) == []


def test_snapshot_archive_path_stays_in_the_store(tmp_path: Path) -> None:
    assert archive_path(tmp_path, "s1") == (tmp_path / "snapshots/s1/s1.zip").resolve()
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(StoreError):
            archive_path(tmp_path, bad)


# ------------------------------------------------------------------------ real server: create
@pytest.mark.server
@pytest.mark.es8
def test_create_3_3_equals_the_manager(search: SearchClient, root: Path, tmp_path: Path) -> None:
    spec = sized(root, Version.V3_3, 20_000)
    fs_root = manager(search, spec)
    out = tmp_path / "snap.zip"
    summary = run(CreateConfig(search.url, fs_root, output=out, progress=False))

    assert archive_hits(out) == hit_multiset(snapshot_hits(spec))
    assert archive_files(out) == dict(file_members(spec))  # files and credentials, byte for byte
    with SnapshotReader(out) as snap:
        assert snap.metadata() == {"has_cloudify_events": False, "snapshot_version": "3.3"}
        assert snap.agents() == agents_json(spec)
    assert validate_archive(out) == []
    assert summary.total_documents == sum(1 for _ in snapshot_hits(spec))
    assert summary.dropped == {
        "cloudify_storage/provider_context": 1,
        "cloudify_storage/snapshot": 2,
    }
    assert summary.credentials == spec.deployments * spec.compute_nodes
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["snap.zip"]  # staging removed


@pytest.mark.server
def test_create_exclusions(search: SearchClient, root: Path, tmp_path: Path) -> None:
    spec = sized(root, Version.V3_3, 20_000)
    fs_root = manager(search, spec)
    out = tmp_path / "snap.zip"
    config = CreateConfig(
        search.url,
        fs_root,
        output=out,
        include_credentials=False,
        exclude_events=True,
        progress=False,
    )
    run(config)
    expected = [h for h in snapshot_hits(spec) if h["_type"] != "cloudify_event"]
    assert archive_hits(out) == hit_multiset(expected)
    files = dict(file_members(spec))
    assert archive_files(out) == {
        n: b for n, b in files.items() if not n.startswith("snapshot-credentials/")
    }


@pytest.mark.server
def test_create_multi_process_gives_the_same_archive(
    search: SearchClient, root: Path, tmp_path: Path
) -> None:
    spec = sized(root, Version.V3_3, 20_000)
    fs_root = manager(search, spec)
    one, two = tmp_path / "one.zip", tmp_path / "two.zip"
    run(CreateConfig(search.url, fs_root, output=one, progress=False))
    run(CreateConfig(search.url, fs_root, output=two, slices=3, progress=False), MULTI)
    assert archive_hits(two) == archive_hits(one) == hit_multiset(snapshot_hits(spec))
    assert archive_files(two) == archive_files(one)
    with SnapshotReader(one) as a, SnapshotReader(two) as b:
        assert a.agents() == b.agents() == agents_json(spec)
        assert a.metadata() == b.metadata()


@pytest.mark.server
@pytest.mark.parametrize("version", [Version.V3_2, Version.V3_4])
def test_create_from_elasticsearch_1_7_and_8_gives_the_same_archive(
    search: SearchClient, search8: SearchClient, root: Path, tmp_path: Path, version: Version
) -> None:
    """The same manager held by a real 1.7 server (typed, `cloudify_events` for 3.2) and by an
    8.x server (`<index>-<type>`): the same documents, files, keys, agents and metadata."""
    spec = sized(root, version, 4000, seed=3)
    fs_root = Path(spec.keys_dir).parent / "fs"
    load_manager(spec, search, fs_root)
    load_manager(spec, search8, fs_root)
    on_1_7, on_8 = tmp_path / "es1.zip", tmp_path / "es8.zip"
    run(CreateConfig(search.url, fs_root, output=on_1_7, progress=False))
    run(CreateConfig(search8.url, fs_root, output=on_8, progress=False))
    assert archive_hits(on_1_7) == archive_hits(on_8) == hit_multiset(snapshot_hits(spec))
    assert archive_files(on_1_7) == archive_files(on_8) == dict(file_members(spec))
    with SnapshotReader(on_1_7) as a, SnapshotReader(on_8) as b:
        assert a.metadata() == b.metadata()
        assert a.agents() == b.agents() == agents_json(spec)


@pytest.mark.server
def test_two_workers_read_each_document_of_a_five_shard_storage_exactly_once(
    search: SearchClient, root: Path, tmp_path: Path
) -> None:
    """1.7 has no sliced scroll: the read is split by shard, and two worker processes share the
    5 shards of a manager's `cloudify_storage` (and of every daily event index)."""
    spec = sized(root, Version.V3_4, 8000, seed=5)
    fs_root = manager(search, spec)
    _, shards = search.request("GET", "/cloudify_storage/_search_shards")
    assert sorted(group[0]["shard"] for group in shards["shards"]) == [0, 1, 2, 3, 4]
    assert [str(p) for p in search.partitions("cloudify_storage", None, 2)] == [
        f"shard {i}/5" for i in range(1, 6)
    ]
    out = tmp_path / "two.zip"
    summary = run(CreateConfig(search.url, fs_root, output=out, progress=False), MULTI)
    read = archive_hits(out)
    assert max(read.values()) == 1  # no document read (and written) twice ...
    assert read == hit_multiset(snapshot_hits(spec))  # ... and none missing
    assert summary.total_documents == sum(read.values())


@pytest.mark.server
def test_create_3_2_is_what_the_3_2_1_tool_wrote(
    search: SearchClient, root: Path, tmp_path: Path
) -> None:
    spec = sized(root, Version.V3_2, 3000)
    fs_root = manager(search, spec)
    out = tmp_path / "snap32.zip"
    summary = run(CreateConfig(search.url, fs_root, output=out, progress=False))
    assert summary.version == Version.V3_2
    assert validate_archive(out) == []
    assert archive_hits(out) == hit_multiset(snapshot_hits(spec))
    assert archive_files(out) == dict(file_members(spec))
    with SnapshotReader(out) as snap:
        assert snap.metadata() == {"has_cloudify_events": True, "snapshot_version": "3.2"}
        assert snap.agents() == agents_json(spec)
        assert snap.read_json("manager.json") == {"MANAGEMENT_IP": manager_ip(spec)}
    with pytest.raises(StoreError, match="no snapshot store"):
        run(CreateConfig(search.url, fs_root, snapshot_id="s32", progress=False))


@pytest.mark.server
def test_create_into_the_store_records_snapshot_and_execution(
    search: SearchClient, root: Path
) -> None:
    spec = sized(root, Version.V3_4, 2000)
    fs_root = manager(search, spec)
    summary = run(CreateConfig(search.url, fs_root, snapshot_id="nightly-1", progress=False))
    path = fs_root / "snapshots" / "nightly-1" / "nightly-1.zip"
    assert summary.output == path.resolve()
    assert archive_hits(path) == hit_multiset(snapshot_hits(spec))  # own execution left out
    snapshot = search.get(STORAGE_INDEX, "snapshot", "nightly-1")
    assert snapshot is not None and (snapshot["status"], snapshot["error"]) == ("created", "")
    execution = search.get(STORAGE_INDEX, "execution", summary.execution_id or "")
    assert execution is not None
    assert (execution["workflow_id"], execution["status"], execution["is_system_workflow"]) == (
        "create_snapshot",
        "terminated",
        True,
    )
    assert execution["parameters"]["snapshot_id"] == "nightly-1"
    with pytest.raises(StoreError, match="already exists"):
        run(CreateConfig(search.url, fs_root, snapshot_id="nightly-1", progress=False))
    _loaded.clear()  # the server now holds more than the generated manager


# --------------------------------------------------------------------- server stopped mid-job
@functools.cache
def _second_port() -> int:
    """The main test server's port + 12 (9200 → 9212): runs against different main servers (a
    developer's and CI's) never share the second server this test stops and restarts."""
    from urllib.parse import urlsplit

    from tests.conftest import configured_url

    return (urlsplit(configured_url()).port or 9200) + 12


def _server(action: str) -> None:
    subprocess.run(
        [str(SEARCH_SERVER), action, "--port", str(_second_port())],
        check=True,
        capture_output=True,
        timeout=300,
    )


def _restart_later() -> None:
    time.sleep(20)
    _server("start")


@pytest.mark.server
def test_server_stopped_mid_job(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second real server is stopped from a hook while the documents are being read (once the
    first part of the read is done); it comes back ~25 s later (after the client's own retries
    of ~15 s gave up), as a manager's search server restarted by its supervisor would. The job
    fails, leaves no archive, and the snapshot's failed status is recorded when the server
    answers again (the failure recorder retries for `status_timeout` seconds)."""
    _server("start")
    url = f"http://127.0.0.1:{_second_port()}"
    try:
        spec = sized(root, Version.V3_3, 6000, seed=7)
        with SearchClient(url) as client:
            wipe(client)
            load_manager(spec, client, tmp_path / "fs")
        seen = {"parts": 0}
        restarted: list[threading.Thread] = []
        real_process = search_io._ReadPartFn.process

        def hook(self: Any, part: Any) -> Any:
            seen["parts"] += 1
            if seen["parts"] == 2 and not restarted:
                _server("stop")
                restarted.append(threading.Thread(target=_restart_later))
                restarted[0].start()
            return real_process(self, part)

        monkeypatch.setattr(search_io._ReadPartFn, "process", hook)
        from cli import app

        result = CliRunner().invoke(
            app, ["create", "--es", url, "--fs-root", str(tmp_path / "fs"), "--snapshot-id", "s1"]
        )
        assert restarted, "the hook never fired"
        restarted[0].join()
        assert result.exit_code == 1, result.output
        assert f"error: create failed: search server {url}" in result.output
        store = tmp_path / "fs" / "snapshots" / "s1"
        assert not (store / "s1.zip").exists()
        assert list(store.iterdir()) == []  # no staging, no partial archive
        with SearchClient(url) as client:
            snapshot = client.get(STORAGE_INDEX, "snapshot", "s1")
            assert snapshot is not None and snapshot["status"] == "failed"
            assert snapshot["error"].startswith(f"create failed: search server {url}")
            executions = [
                h["_source"]
                for h in client.scan(STORAGE_INDEX, ["execution"])
                if h["_source"]["parameters"].get("snapshot_id") == "s1"
            ]
            assert [(e["status"], e["error"]) for e in executions] == [
                ("failed", snapshot["error"])
            ]
    finally:
        _server("stop")


# ----------------------------------------------------------------------------------- CLI
def test_cli_create_help_has_every_option_and_an_example() -> None:
    from cli import app

    result = CliRunner().invoke(app, ["create", "--help"])
    assert result.exit_code == 0
    for option in (
        "--es",
        "--fs-root",
        "--output",
        "--snapshot-id",
        "--exclude-credentials",
        "--exclude-events",
        "--exclude-logs",
        "--source-version",
        "--force",
        "Example: cfysnap create",
    ):
        assert option in result.output


def test_cli_create_refuses_an_existing_output_before_touching_anything(tmp_path: Path) -> None:
    """An existing --output (say, last week's snapshot) is left as it was: refused before the
    server is even asked (here there is none), exit 1, one line."""
    from cli import app

    out = tmp_path / "previous.zip"
    out.write_bytes(b"last week's snapshot")
    (tmp_path / "fs").mkdir()
    result = CliRunner().invoke(
        app, ["create", "--es", "http://127.0.0.1:1", "--fs-root", str(tmp_path / "fs"), "-o", str(out)]
    )
    assert result.exit_code == 1
    assert result.output == f"error: create failed: {out} exists (use --force to replace it)\n"
    assert out.read_bytes() == b"last week's snapshot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fs", "previous.zip"]


@pytest.mark.server
def test_create_force_replaces_an_existing_output(
    search: SearchClient, root: Path, tmp_path: Path
) -> None:
    spec = sized(root, Version.V3_3, 2_000)
    fs_root = manager(search, spec)
    out = tmp_path / "snap.zip"
    out.write_bytes(b"old")
    run(CreateConfig(search.url, fs_root, output=out, progress=False, force=True))
    assert archive_hits(out) == hit_multiset(snapshot_hits(spec))
    assert [p.name for p in tmp_path.iterdir()] == ["snap.zip"]


# ------------------------------------------------------------------- the source version, read
@pytest.mark.server
@pytest.mark.parametrize(
    ("version", "facts"),
    [
        (Version.V3_2, ["an index named cloudify_events (3.2)",
                        "blueprint nodecellar has no main_file_name (3.2)",
                        "deployment nodecellar-dep1 has no scaling_groups (3.2, 3.3)",
                        "node nodecellar-dep1_vm has no min_number_of_instances (3.2, 3.3)"]),
        (Version.V3_3, ["daily logstash-* event indices (3.3, 3.4)",
                        "blueprint nodecellar has main_file_name (3.3, 3.4)",
                        "deployment nodecellar-dep1 has no scaling_groups (3.2, 3.3)",
                        "node nodecellar-dep1_vm has no min_number_of_instances (3.2, 3.3)",
                        "plugin documents (3.3, 3.4)", "snapshot documents (3.3, 3.4)"]),
        (Version.V3_4, ["daily logstash-* event indices (3.3, 3.4)",
                        "blueprint nodecellar has main_file_name (3.3, 3.4)",
                        "deployment nodecellar-dep1 has scaling_groups (3.4)",
                        "node nodecellar-dep1_vm has min_number_of_instances (3.4)",
                        "plugin documents (3.3, 3.4)", "snapshot documents (3.3, 3.4)",
                        "deployment_update documents (3.4)"]),
    ],
)
def test_the_version_is_read_from_facts_and_says_which(
    search: SearchClient, tmp_path: Path, version: Version, facts: list[str]
) -> None:
    spec = ManagerSpec(version=version, blueprints=1, deployments_per_blueprint=1,
                       keys_dir=str(tmp_path / "keys"))
    load_manager(spec, search, tmp_path / "fs")
    reading = read_version(search)
    assert (reading.version, reading.given) == (version, False)
    assert sorted(str(e) for e in reading.evidence) == sorted(facts)
    assert reading.describe() == f"source version {version.value}, read from: " + "; ".join(
        str(e) for e in reading.evidence)


@pytest.mark.server
def test_upload_then_create_on_a_3_2_manager_stays_3_2(search: SearchClient, tmp_path: Path) -> None:
    """The sequence that once flipped the version: create, upload into the manager, create.
    A 3.2 manager has no snapshot store, so the upload is refused and creates stay 3.2; a
    snapshot record that exists anyway (an older tool's) is conflicting evidence, named, and
    `--source-version` settles it."""
    spec = ManagerSpec(version=Version.V3_2, blueprints=1, deployments_per_blueprint=1,
                       keys_dir=str(tmp_path / "keys"))
    fs_root = tmp_path / "fs"
    load_manager(spec, search, fs_root)
    where = ["--es", search.url, "--fs-root", str(fs_root)]
    from cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["create", *where, "--output", str(tmp_path / "r1.zip")])
    assert first.exit_code == 0, first.output
    assert "source version 3.2, read from: an index named cloudify_events (3.2)" in first.output
    upload = runner.invoke(app, ["snapshots", "upload", str(tmp_path / "r1.zip"), "-s", "u1", *where])
    assert upload.exit_code == 1
    assert upload.output == (
        "error: snapshot u1: 3.2 managers have no snapshot store (it came with 3.3); "
        "use create --output\n")
    assert not (fs_root / "snapshots").exists() and search.get(STORAGE_INDEX, "snapshot", "u1") is None
    again = runner.invoke(app, ["create", *where, "--output", str(tmp_path / "r2.zip")])
    assert again.exit_code == 0, again.output
    with SnapshotReader(tmp_path / "r2.zip") as snap:
        assert snap.metadata()["snapshot_version"] == "3.2"

    search.bulk([{"_index": STORAGE_INDEX, "_type": "snapshot", "_id": "old",
                  "_source": {"id": "old", "status": "uploaded"}}], refresh=True)
    refused = runner.invoke(app, ["create", *where, "--output", str(tmp_path / "r3.zip")])
    assert refused.exit_code == 1 and not (tmp_path / "r3.zip").exists()
    assert refused.output.startswith(
        "error: cannot tell the manager's version: its data points at different versions: ")
    assert "blueprint nodecellar has no main_file_name (3.2)" in refused.output
    assert "snapshot documents (3.3, 3.4)" in refused.output
    assert refused.output.endswith("pass --source-version 3.2, 3.2.1, 3.3 or 3.4\n")
    given = runner.invoke(app, ["create", *where, "--output", str(tmp_path / "r3.zip"),
                                "--source-version", "3.2"])
    assert given.exit_code == 0, given.output
    assert ("source version 3.2, as given (--source-version); the data says otherwise: "
            "snapshot documents (3.3, 3.4)") in given.output


@pytest.mark.server
def test_a_3_2_1_manager_gets_the_3_2_1_tools_agents_through_convert_and_restore(
    search: SearchClient, tmp_path: Path
) -> None:
    spec = ManagerSpec(version=Version.V3_2, blueprints=1, deployments_per_blueprint=2,
                       keys_dir=str(tmp_path / "keys"))
    load_manager(spec, search, tmp_path / "fs")
    out = tmp_path / "321.zip"
    summary = run(CreateConfig(search.url, tmp_path / "fs", output=out, source_version="3.2.1",
                               progress=False))
    assert summary.source == "source version 3.2.1, as given (--source-version)"
    # what the 3.2.1 tool writes: the 3.2 tool's dicts with its own credentials and version
    expected = agents_json(spec)
    started = 0
    for nodes in expected.values():
        for instances in nodes.values():
            for agent in instances.values():
                if agent:
                    started += 1
                    assert (agent["broker_user"], agent["broker_pass"], agent["version"]) == (
                        "guest", "guest", "3.2")
                    agent.update(broker_user="cloudify", broker_pass="c10udify", version="3.2.1")
    assert started > 0
    with SnapshotReader(out) as snap:
        assert snap.agents() == expected
        assert snap.metadata() == {"has_cloudify_events": True, "snapshot_version": "3.2"}

    from pipelines import convert, restore, verify

    converted = tmp_path / "34.zip"
    convert.run(convert.ConvertConfig(out, converted, Version.V3_4, progress=False))
    with SnapshotReader(converted) as snap:
        agents = [a for nodes in snap.agents().values() for inst in nodes.values()
                  for a in inst.values() if a]
    assert len(agents) == started
    for agent in agents:
        assert agent["version"] == "3.2.1"
        assert {k: agent["broker_config"][k] for k in ("broker_user", "broker_pass", "broker_port")} == {
            "broker_user": "cloudify", "broker_pass": "c10udify", "broker_port": 5672}
    fresh_manager(search)
    config = restore.RestoreConfig(archive=out, target=search.url, fs_root=tmp_path / "target",
                                   credentials_dir=tmp_path / "creds", progress=False)
    assert restore.run(config).agents_merged == started
    search.refresh()
    runtime = [h["_source"]["runtime_properties"]["cloudify_agent"]
               for h in search.scan(STORAGE_INDEX, ["node_instance"])
               if "broker_config" in h["_source"]["runtime_properties"].get("cloudify_agent", {})]
    assert len(runtime) == started
    assert all(a["broker_config"]["broker_user"] == "cloudify" and a["version"] == "3.2.1"
               for a in runtime)
    assert verify.run(verify.VerifyConfig(archive=out, target=search.url, fs_root=tmp_path / "target",
                                          credentials_dir=tmp_path / "creds")).ok


def test_line_pages_travel_with_their_own_coder() -> None:
    """`ToSnapshotParts`' lines are `LinePage`s coded by `LinePageCoder`: the lines and counts
    come back as they were, and Beam's size samples read the lines' length instead of
    pickling them."""
    import apache_beam as beam

    from transforms.read_manager import ToSnapshotParts
    from transforms.shards import LinePage, LinePageCoder

    p = beam.Pipeline()
    parts = p | beam.Create([]) | ToSnapshotParts(["provider_context"])
    coder = beam.coders.registry.get_coder(parts.lines.element_type)
    assert isinstance(coder, LinePageCoder)
    page = LinePage(b'{"_index": "a"}\n{"_index": "b"}\n',
                    ((("cloudify_storage", "node"), 1), (("logstash-2015.12.01", "cloudify_log"), 1)))
    assert coder.decode(coder.encode(page)) == page
    assert coder.get_impl().estimate_size(page) == len(page.data) + 2 * 64


def test_a_page_as_a_plain_list_gives_the_same_lines_and_counts() -> None:
    """`ToSnapshotParts`' DoFn takes the read's `RawPage`s, whose counts it reuses, and plain
    lists of hits alike: the same lines and counts, excluded documents counted out."""
    import msgspec

    from core.search import RawHit, RawPage
    from transforms.read_manager import _SnapshotPartsFn
    from transforms.shards import LinePage

    hits = [
        RawHit("cloudify_storage", "blueprint", "bp", msgspec.Raw(b'{"id": "bp"}')),
        RawHit("logstash-2015.12.01", "cloudify_event", "e1", msgspec.Raw(b'{"a": 1}')),
        RawHit("cloudify_storage", "provider_context", "CONTEXT", msgspec.Raw(b"{}")),
    ]
    fn = _SnapshotPartsFn(frozenset({"provider_context"}), frozenset(), keys=False)
    for page in (RawPage(hits), list(hits), RawPage(hits[:2]), list(hits[:2])):
        lines = [out for out in fn.process(page) if isinstance(out, LinePage)]
        assert lines == [LinePage(
            b'{"_index": "cloudify_storage", "_type": "blueprint", "_id": "bp", "_score": 0.0, '
            b'"_source": {"id": "bp"}}\n'
            b'{"_index": "logstash-2015.12.01", "_type": "cloudify_event", "_id": "e1", '
            b'"_score": 0.0, "_source": {"a": 1}}\n',
            ((("cloudify_storage", "blueprint"), 1), (("logstash-2015.12.01", "cloudify_event"), 1)),
        )], type(page)


def test_to_snapshot_parts_takes_plain_lists_of_hits_in_a_pipeline() -> None:
    """A pipeline of its own may hand `ToSnapshotParts` plain lists of hits (not the read's
    `RawPage`s): the graph takes them and the lines come out the same."""
    import apache_beam as beam
    import msgspec
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from core.search import RawHit
    from transforms.read_manager import ToSnapshotParts
    from transforms.shards import LinePage

    page = [RawHit("logstash-2015.12.01", "cloudify_log", "l1", msgspec.Raw(b'{"m": 1}'))]
    with TestPipeline(runner="FnApiRunner") as p:
        parts = p | beam.Create([page], reshuffle=False).with_output_types(list[RawHit]) | ToSnapshotParts([])
        assert_that(parts.lines, equal_to([LinePage(
            b'{"_index": "logstash-2015.12.01", "_type": "cloudify_log", "_id": "l1", '
            b'"_score": 0.0, "_source": {"m": 1}}\n',
            ((("logstash-2015.12.01", "cloudify_log"), 1),),
        )]))
