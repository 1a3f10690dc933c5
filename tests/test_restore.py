"""Restore and verify (issue 5): pure document changes, the journal, BulkLoad, and whole restores
against the real search server (fresh, refused, re-restored after deletes, killed and resumed)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.archive import AGENTS, ES_DATA, EsDataLine, SnapshotReader, SnapshotWriter
from core.errors import CorruptArchive, RestoreRefused
from core.journal import Journal, line_ranges, merge_ranges
from core.model import FILE_FOLDERS, Hit, Version, _parse_utc_day, event_day
from core.search import Layout, SearchClient
from pipelines import restore, verify
from pipelines.sample.archive import write_sample_archive
from pipelines.sample.generate import ManagerSpec
from pipelines.sample.load import load_manager
from tests.conftest import wipe
from transforms.agent_index import AgentIndex
from transforms.restore import Batching
from transforms.restore_docs import (
    merge_agent,
    restore_hit,
    restore_line_as_is,
    rewrite_key_path,
    route_event,
)
from transforms.versions import plan, upgrade_hit

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- pure functions
def event(index: str, stamp: str | None = "2015-12-01T23:59:59.900Z", id_: str = "e1") -> Hit:
    source: dict[str, Any] = {"type": "cloudify_event", "timestamp": "2015-12-02 01:59:59.900+0200"}
    if stamp is not None:
        source["@timestamp"] = stamp
    return {"_index": index, "_type": "cloudify_event", "_id": id_, "_source": source}


def test_events_go_to_the_day_of_their_own_timestamp_whatever_their_index() -> None:
    for index in ("cloudify_events", "logstash-2016.07.04", "logstash-2015.12.01"):
        assert route_event(event(index))["_index"] == "logstash-2015.12.01"
    # no @timestamp: `timestamp` converted to UTC (01:59+02:00 is 23:59 UTC the day before)
    assert route_event(event("cloudify_events", None))["_index"] == "logstash-2015.12.01"
    storage = {"_index": "cloudify_storage", "_type": "node", "_id": "n", "_source": {}}
    assert route_event(storage) is storage


def test_an_event_without_a_usable_time_is_a_corrupt_archive() -> None:
    hit = event("cloudify_events", None)
    hit["_source"]["timestamp"] = "yesterday"
    with pytest.raises(CorruptArchive, match="cloudify_event/e1"):
        route_event(hit)


@settings(max_examples=2000, deadline=None)
@given(
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,8})?Z?", fullmatch=True)
    | st.text(max_size=30)
)
def test_the_fast_day_of_a_logstash_timestamp_is_the_day_iso_parsing_gives(value: str) -> None:
    # event_day's fast path for "…Z" strings must agree with the general parse everywhere:
    # invalid dates and times (Feb 30, 24:00, :60), long fractions, other forms and junk
    assert event_day({"@timestamp": value}) == _parse_utc_day(value, naive_is_utc=True)


def test_key_path_rewrite_keeps_the_rest_and_never_mutates() -> None:
    node = {"id": "vm", "properties": {"cloudify_agent": {"key": "/old", "user": "centos"}, "x": 1}}
    before = copy.deepcopy(node)
    new = rewrite_key_path(node, "/creds/dep_vm/agent_key")
    assert new == {
        "id": "vm",
        "properties": {"cloudify_agent": {"key": "/creds/dep_vm/agent_key", "user": "centos"}, "x": 1},
    }
    assert node == before
    assert rewrite_key_path({"id": "vm"}, "/k") == {"id": "vm", "properties": {"cloudify_agent": {"key": "/k"}}}


def instance(runtime: dict[str, Any]) -> dict[str, Any]:
    return {"id": "vm_1", "deployment_id": "dep", "runtime_properties": runtime}


def test_agent_merge_flat_keys_become_broker_config_with_an_integer_port() -> None:
    runtime = {"ip": "10.0.0.9", "agent_status": {"valid": True},
               "cloudify_agent": {"name": "vm_1", "manager_ip": "10.0.0.5", "queue": "q"}}
    agent = {"version": "3.3", "broker_user": "u", "broker_pass": "p", "broker_ip": "",
             "broker_ssl_enabled": True, "broker_ssl_cert": "PEM", "queue": "vm_1"}
    doc = instance(runtime)
    before = copy.deepcopy(doc)
    merged = merge_agent(doc, agent)
    assert merged["runtime_properties"] == {
        "ip": "10.0.0.9",
        "cloudify_agent": {
            "name": "vm_1", "manager_ip": "10.0.0.5", "queue": "vm_1", "version": "3.3",
            "broker_config": {"broker_user": "u", "broker_pass": "p", "broker_ip": "10.0.0.5",
                              "broker_ssl_enabled": True, "broker_ssl_cert": "PEM",
                              "broker_port": 5671},
        },
    }
    assert doc == before
    no_ssl = merge_agent(instance({}), {"broker_ip": "1.2.3.4", "broker_ssl_enabled": False})
    assert no_ssl["runtime_properties"]["cloudify_agent"] == {
        "broker_config": {"broker_ip": "1.2.3.4", "broker_ssl_enabled": False, "broker_port": 5672}
    }


def test_agent_merge_keeps_an_existing_broker_config_whole_and_empty_entries_change_nothing() -> None:
    broker = {"broker_ip": "10.1.1.1", "broker_port": 5672, "broker_user": "a"}
    merged = merge_agent(instance({"cloudify_agent": {"broker_config": {"old": 1}, "x": 1}}),
                         {"broker_config": broker, "version": "3.4.0"})
    assert merged["runtime_properties"]["cloudify_agent"] == {
        "broker_config": broker, "x": 1, "version": "3.4.0"}
    doc = instance({"agent_status": {}})
    assert merge_agent(doc, {}) is doc


def test_the_agent_index_skips_a_broken_deployment_with_a_warning_without_secrets(
    tmp_path: Path,
) -> None:
    agents = {
        "good": {"vm": {"vm_1": {"broker_pass": "s3cret-pass", "broker_ip": "x"}, "vm_2": {}}},
        "bad": {"vm": {"vm_3": {"broker_pass": "s3cret-pass"}, "vm_4": "garbage"}},
        "worse": ["s3cret-pass"],
        "again": {"vm": {"vm_2": {"broker_ip": "y"}}},  # an id twice: the last entry, as json
    }
    found, warnings = AgentIndex.build(agents.items(), tmp_path / "agents.sqlite")
    assert dict(found.items()) == {
        "vm_1": ("good", {"broker_pass": "s3cret-pass", "broker_ip": "x"}),
        "vm_2": ("again", {"broker_ip": "y"}),
    }
    assert "vm_3" not in found and found.get("vm_4") is None and len(found) == 2
    # the check's question of a node instance: the deployment of a non-empty entry
    assert [found.agent_deployment(i) for i in ("vm_1", "vm_2", "vm_3", "vm_4")] == [
        "good", "again", None, None]
    empty, _ = AgentIndex.build([("quiet", {"vm": {"vm_5": {}}})], tmp_path / "empty.sqlite")
    assert empty.get("vm_5") == ("quiet", {}) and empty.agent_deployment("vm_5") is None
    assert [str(w) for w in warnings] == [
        "agents.json: deployment bad: instance vm_4 is a str, not an object",
        "agents.json: deployment worse: is a list, not an object of nodes",
    ]
    assert stat.S_IMODE((tmp_path / "agents.sqlite").stat().st_mode) == 0o600
    # pickled into a worker, it is its path: it opens its own read-only connection
    copy = pickle.loads(pickle.dumps(found))
    assert copy.path == found.path and copy["vm_1"] == found["vm_1"]
    staged = found.stage(str(tmp_path / "staging"))
    assert staged.path == str(tmp_path / "staging" / "agents.sqlite") and staged["vm_2"][0] == "again"


def test_restore_hit_applies_changes_only_where_they_belong() -> None:
    agents = {"vm_1": ("dep", {"broker_config": {"broker_ip": "b"}})}
    keys = {"dep_vm": "/k/dep_vm/agent_key"}
    node = {"_index": "cloudify_storage", "_type": "node", "_id": "dep_vm", "_source": {"id": "vm"}}
    assert restore_hit(node, key_paths=keys, agents=agents)["_source"] == {
        "id": "vm", "properties": {"cloudify_agent": {"key": "/k/dep_vm/agent_key"}}}
    other_dep = {"_index": "cloudify_storage", "_type": "node_instance", "_id": "vm_1",
                 "_source": {"id": "vm_1", "deployment_id": "other"}}
    assert restore_hit(other_dep, key_paths=keys, agents=agents) is other_dep


def test_a_node_or_instance_goes_as_archived_only_where_restore_hit_leaves_it() -> None:
    """`restore_line_as_is` gives back (with the archive's bytes) only lines whose source
    `restore_hit` leaves as it is, and every instance that is so; a node with a key path it
    leaves to the caller, whose key only the source shows."""
    agents = {"vm_1": ("dep", {"broker_config": {"broker_ip": "b"}}), "db_1": ("dep", {}),
              "lb_1": ("other", {"broker_config": {"broker_ip": "b"}})}
    keys = {"dep_vm": "/k/dep_vm/agent_key", "dep_lb": "/k/dep_lb/agent_key"}

    def line(doc_type: str, doc_id: str, **source: Any) -> EsDataLine:
        raw = json.dumps({"id": doc_id, "deployment_id": "dep", **source}).encode()
        return EsDataLine("cloudify_storage", doc_type, doc_id, msgspec.Raw(raw))

    for parts, kept, changed in [
        (line("node", "dep_vm"), False, True),  # its key path is rewritten
        (line("node", "dep_lb", properties={"cloudify_agent": {"key": "/k/dep_lb/agent_key"}}),
         False, False),  # already that key path: only its source tells
        (line("node", "dep_db"), True, False),  # no key of its own in the archive
        (line("node_instance", "vm_1"), False, True),  # its agent is merged
        (line("node_instance", "db_1"), True, False),  # an empty entry changes nothing
        (line("node_instance", "lb_1"), True, False),  # an entry of another deployment's
        (line("node_instance", "web_1"), True, False),  # no entry
        (line("execution", "vm_1"), True, False),  # not read at all
    ]:
        got = restore_line_as_is(parts, key_paths=keys, agents=agents)
        hit = parts.hit()
        assert (restore_hit(hit, key_paths=keys, agents=agents) is not hit) is changed, parts
        assert got == ({**hit, "_source": parts.source} if kept else None), parts
        if kept:
            assert got is not None and got["_source"] is parts.source  # the bytes, not a copy


def test_a_changed_source_goes_as_msgspec_encodes_it_or_as_a_dict_it_cannot() -> None:
    """The long way sends a changed source as msgspec's bytes (the same values); one holding a
    string msgspec cannot encode (a key path from an undecodable directory name: a lone
    surrogate) stays a dict, which the bulk writer dumps with json.dumps as before."""
    from transforms.restore import _restored_in_full

    line = json.dumps({"_index": "cloudify_storage", "_type": "node", "_id": "dep_vm",
                       "_source": {"id": "vm", "name": "é"}}).encode()
    for key, raw in [("/k/dep_vm/agent_key", True), ("/k/\udcff/agent_key", False)]:
        hit = _restored_in_full(line, 1, [], {"dep_vm": key}, {})
        expected = {"id": "vm", "name": "é", "properties": {"cloudify_agent": {"key": key}}}
        if raw:
            assert isinstance(hit["_source"], msgspec.Raw)
            assert bytes(hit["_source"]) == msgspec.json.encode(expected)
            assert json.loads(bytes(hit["_source"])) == expected
        else:
            assert hit["_source"] == expected
            assert json.loads(json.dumps(hit["_source"])) == expected


# --------------------------------------------------------------------------------- journal
def test_journal_replays_events_ignores_torn_files_and_merges_line_ranges(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j" / "restore-abc")
    journal.start({"archive_sha256": "abc"})
    journal.append({"event": "checked"})
    journal.append({"event": "file", "path": "blueprints/a", "action": "copied"})
    journal.append({"event": "key", "name": "dep_vm"})
    for digest, lines in (("d1", [[1, 10]]), ("d2", [[11, 20], [25, 30]]), ("d1", [[1, 10]])):
        journal.append({"event": "batch", "digest": digest, "lines": lines,
                        "counts": {"cloudify_storage/node": len(lines)}})
    events = tmp_path / "j" / "restore-abc" / "events"
    (events / "000004-finished.json.1a2b3c4d.tmp").write_bytes(b'{"event": "fini')  # killed
    (events / "000005-finished.json").write_bytes(b'{"event": "fini')  # cannot be: unreadable
    assert sorted(p.name for p in events.iterdir())[:4] == [
        "000000-started.json", "000001-checked.json", "000002-file.json", "000003-key.json"]
    assert sorted(p.name for p in (events.parent / "batches").iterdir()) == ["d1.json", "d2.json"]
    state = journal.replay()
    assert state.started is not None and state.started["archive_sha256"] == "abc"
    assert state.checked and not state.finished
    assert state.files == {"blueprints/a": "copied"} and state.keys == {"dep_vm"}
    assert state.loaded_lines() == [(1, 20), (25, 30)]
    assert state.loaded_counts() == {"cloudify_storage/node": 3}
    for path in (events / "000001-checked.json", events.parent):  # keys and broker hosts
        assert stat.S_IMODE(path.stat().st_mode) == (0o600 if path.is_file() else 0o700)
    assert merge_ranges([(5, 5), (3, 4), (9, 10), (1, 1), (4, 6)]) == [(1, 1), (3, 6), (9, 10)]
    assert line_ranges(range(7, 2007)) == [(7, 2006)]
    assert line_ranges([9, 3, 4, 5, 12, 10, 4]) == [(3, 5), (9, 10), (12, 12)]
    assert line_ranges([3, 3, 5]) == [(3, 3), (5, 5)]  # as many lines as the span, not one run
    assert line_ranges([]) == []
    resumed = Journal(journal.path)  # a second run appends after what is there
    resumed.append({"event": "finished"})
    assert resumed.replay().finished


# ---------------------------------------------------------------------------- whole restores
def sample(tmp_path: Path, version: Version = Version.V3_3, **sizes: int) -> Path:
    spec = ManagerSpec(version=version, **{"events": 30, "logs": 30, **sizes})
    path = tmp_path / f"snap-{version.value}.zip"
    write_sample_archive(spec, path)
    return path


def config(tmp_path: Path, archive: Path, url: str, **kw: Any) -> restore.RestoreConfig:
    batching = Batching(batch_docs=kw.pop("batch_docs", 25))
    return restore.RestoreConfig(archive=archive, target=url, fs_root=tmp_path / "fs",
                                 credentials_dir=tmp_path / "creds", progress=False,
                                 batching=batching, **kw)


def verify_config(tmp_path: Path, archive: Path, url: str, **kw: Any) -> verify.VerifyConfig:
    return verify.VerifyConfig(archive=archive, target=url, fs_root=tmp_path / "fs",
                               credentials_dir=tmp_path / "creds", **kw)


def target_state(target: SearchClient, tmp_path: Path) -> dict[str, Any]:
    """Everything a restore could change: documents (with sources), files, keys, journals."""
    target.refresh()
    docs = {}
    for (index, doc_type), _ in target.logical_indices("*").items():
        for hit in target.scan(index, [doc_type]):
            docs[(index, doc_type, hit["_id"])] = json.dumps(hit["_source"], sort_keys=True)
    files = {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*"))
             if p.is_file() and p.suffix != ".zip"}
    return {"docs": docs, "files": files}


def type_counts(target: SearchClient) -> dict[tuple[str, str], int]:
    """Documents per (index, type) on the target, but for the fresh manager's own provider
    context (which a restore never touches)."""
    target.refresh()
    return {k: v for k, v in target.logical_indices("*").items()
            if v and k != ("cloudify_storage", "provider_context")}


def storage_mapping_and_settings(target: SearchClient) -> tuple[dict[str, Any], dict[str, Any]]:
    _, mapping = target.request("GET", "/cloudify_storage/_mapping")
    _, settings = target.request("GET", "/cloudify_storage/_settings")
    return mapping["cloudify_storage"]["mappings"], settings["cloudify_storage"]["settings"]


def assert_manager_mapping_kept(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Every mapping type the manager had is still there, every setting of it (`_id.path`, the
    not-indexed objects, every field it mapped) exactly as it was. What may be added is only
    what Elasticsearch maps by itself as documents arrive (dynamic fields and types)."""
    for doc_type, mapping in before.items():
        assert doc_type in after, doc_type
        for key, value in mapping.items():
            if key == "properties":
                for field, field_mapping in value.items():
                    assert after[doc_type]["properties"][field] == field_mapping, (doc_type, field)
            else:
                assert after[doc_type][key] == value, (doc_type, key)


def expected_documents(archive: Path, creds: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """What the target must hold, computed here from the archive with the upgrade chain and the
    restore rules spelled out (not through restore_hit)."""
    with SnapshotReader(archive) as snap:
        steps = plan(snap.version, Version.V3_4)
        agents = {}
        for dep, nodes in snap.agents().items():
            for instances in nodes.values():
                for iid, entry in instances.items():
                    agents[iid] = (dep, entry)
        out = {}
        for _, hit in snap.iter_hits():
            up = upgrade_hit(hit, steps)
            source = copy.deepcopy(up["_source"])
            index = up["_index"]
            if up["_type"] in ("cloudify_event", "cloudify_log"):
                day = datetime.fromisoformat(source["@timestamp"]).astimezone(UTC)
                index = f"logstash-{day:%Y.%m.%d}"
            if up["_type"] == "node" and snap.has(f"snapshot-credentials/{up['_id']}/agent_key"):
                source["properties"]["cloudify_agent"]["key"] = str(creds / up["_id"] / "agent_key")
            if up["_type"] == "node_instance" and up["_id"] in agents:
                dep, entry = agents[up["_id"]]
                assert "broker_config" in entry and entry["broker_config"]["broker_ip"]
                runtime = source["runtime_properties"]
                runtime["cloudify_agent"] = {**runtime.get("cloudify_agent", {}), **entry}
                runtime.pop("agent_status", None)
            out[(index, up["_type"], up["_id"])] = source
    return out


@pytest.mark.server
@pytest.mark.es8
def test_restore_a_3_3_archive_refusals_and_a_second_restore_after_deletes(
    target: SearchClient, tmp_path: Path
) -> None:
    archive = sample(tmp_path)
    creds = tmp_path / "creds"
    typed = target.layout is Layout.TYPED
    if typed:
        mapping_before, settings_before = storage_mapping_and_settings(target)
    context_before = target.get("cloudify_storage", "provider_context", "CONTEXT")
    summary = restore.run(config(tmp_path, archive, target.url))
    assert summary.loaded == summary.expected and summary.documents == 122
    if typed:  # the manager's own mappings and settings, as they were
        mapping_after, settings_after = storage_mapping_and_settings(target)
        assert_manager_mapping_kept(mapping_before, mapping_after)
        assert settings_after == settings_before
    assert target.get("cloudify_storage", "provider_context", "CONTEXT") == context_before
    assert summary.agents_merged == 8 and not summary.agent_warnings

    # every document equals the archive's after the upgrade, with key paths and agent data
    expected = expected_documents(archive, creds.absolute())
    target.refresh()
    actual = {}
    for (index, doc_type) in type_counts(target):
        for hit in target.scan(index, [doc_type]):
            actual[(index, doc_type, hit["_id"])] = hit["_source"]
    assert actual == expected

    # files and keys exact; keys 0600 in 0700 folders
    with SnapshotReader(archive) as snap:
        members = [n for n in snap.file_names() if n.split("/")[0] in FILE_FOLDERS]
        assert members
        for name in members:
            with snap.open(name) as f:
                assert (tmp_path / "fs" / name).read_bytes() == f.read(), name
        keys = [n for n in snap.file_names() if n.startswith("snapshot-credentials/")]
        assert len(keys) == 4
        for name in keys:
            key_file = creds / name.removeprefix("snapshot-credentials/")
            with snap.open(name) as f:
                assert key_file.read_bytes() == f.read()
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    report = verify.run(verify_config(tmp_path, archive, target.url))
    assert report.ok, report.render()
    assert (report.documents, report.files, report.keys) == (122, len(members), 4)

    # again without --force: dirty; with --force: clashing ids, all named; nothing changes
    before = target_state(target, tmp_path)
    with pytest.raises(RestoreRefused, match="not empty"):
        restore.run(config(tmp_path, archive, target.url))
    with pytest.raises(RestoreRefused) as clash:
        restore.run(config(tmp_path, archive, target.url, force=True))
    assert clash.value.ids == [
        "blueprint hello-world", "blueprint nodecellar", "deployment hello-world-dep1",
        "deployment hello-world-dep2", "deployment nodecellar-dep1", "deployment nodecellar-dep2"]
    assert "deployment nodecellar-dep1" in str(clash.value)
    assert target_state(target, tmp_path) == before

    # the documented 3.x case: delete every blueprint and deployment, restore again: no duplicates
    counts = type_counts(target)
    target.delete_by_query("cloudify_storage", "blueprint")
    target.delete_by_query("cloudify_storage", "deployment")
    assert type_counts(target)[("cloudify_storage", "node")] == 12
    restore.run(config(tmp_path, archive, target.url, force=True))
    assert type_counts(target) == counts
    assert verify.run(verify_config(tmp_path, archive, target.url)).ok


@pytest.mark.server
def test_a_3_2_archive_is_upgraded_on_the_fly_and_duplicated_events_land_once(
    target: SearchClient, tmp_path: Path
) -> None:
    source = sample(tmp_path, Version.V3_2)
    # the same event twice under two indices (`cloudify_events` and its own logstash day)
    archive = tmp_path / "dup.zip"
    with SnapshotReader(source) as snap, SnapshotWriter(archive) as out:
        hits = [h for _, h in snap.iter_hits()]
        first_event = next(h for h in hits if h["_type"] == "cloudify_event")
        day = first_event["_source"]["@timestamp"][:10].replace("-", ".")
        out.write_hits([*hits, {**first_event, "_index": f"logstash-{day}"}])
        for name in snap.file_names():
            if name not in (ES_DATA, "manifest.json"):
                with snap.open(name) as f:
                    out.write_stream(name, f)
    summary = restore.run(config(tmp_path, archive, target.url))
    assert summary.steps == ["3.2 -> 3.3", "3.3 -> 3.4", "3.4 restore defaults"]
    counts = type_counts(target)
    assert not any(index == "cloudify_events" for index, _ in counts)
    assert sum(n for (_, t), n in counts.items() if t == "cloudify_event") == 30
    assert sum(n for (_, t), n in counts.items() if t == "cloudify_log") == 30
    # 3.2 agents are flat: merged with integer broker_port; not-started instances ({}) untouched
    instances = {h["_id"]: h["_source"] for h in target.scan("cloudify_storage", ["node_instance"])}
    agents = [i["runtime_properties"]["cloudify_agent"] for i in instances.values()
              if "broker_config" in i["runtime_properties"].get("cloudify_agent", {})]
    assert agents and all(a["broker_config"]["broker_port"] == 5672 for a in agents)
    assert verify.run(verify_config(tmp_path, archive, target.url)).ok


@pytest.mark.server
def test_refusals_before_any_write_newer_archive_and_broken_agents_warn(
    target: SearchClient, tmp_path: Path
) -> None:
    archive34 = sample(tmp_path, Version.V3_4)
    with pytest.raises(RestoreRefused, match="newer than the target version 3.3"):
        restore.run(config(tmp_path, archive34, target.url, target_version=Version.V3_3))
    assert not (tmp_path / "fs").exists() and not type_counts(target)

    dry = restore.run(config(tmp_path, archive34, target.url, dry_run=True))
    assert dry.dry_run and sum(dry.expected.values()) == dry.documents > 0
    assert len(dry.keys) == 4 and dry.files_copied
    assert not (tmp_path / "fs").exists() and not (tmp_path / "creds").exists()
    assert not type_counts(target)

    # a deployment whose agents.json entry is broken: a counted warning, not a failed restore
    broken = tmp_path / "broken.zip"
    with SnapshotReader(archive34) as snap, SnapshotWriter(broken) as out:
        agents = snap.agents()
        victim = sorted(agents)[0]
        agents[victim] = {"vm": "not an object"}
        for name in snap.file_names():
            if name == AGENTS:
                out.write_json(AGENTS, agents)
            elif name != "manifest.json":
                with snap.open(name) as f:
                    out.write_stream(name, f)
    summary = restore.run(config(tmp_path, broken, target.url))
    assert len(summary.agent_warnings) == 1 and victim in summary.agent_warnings[0]
    assert summary.loaded == summary.expected


@pytest.mark.server
@pytest.mark.server
def test_a_target_whose_data_rules_out_the_target_version_is_refused_unless_forced(
    target: SearchClient, tmp_path: Path
) -> None:
    """A 3.2 manager (cloudify_events, 3.2 documents) as the target of a 3.4 restore: refused before
    anything is written, naming the facts; --force restores anyway (here: up to the clash check)."""
    if target.layout is not Layout.TYPED:
        pytest.skip("a 3.2 manager's layout is the typed one")
    spec = ManagerSpec(version=Version.V3_2, events=4, logs=4, keys_dir=str(tmp_path / "keys"))
    wipe(target)
    load_manager(spec, target, tmp_path / "manager")
    archive = sample(tmp_path)
    before = target_state(target, tmp_path)
    with pytest.raises(RestoreRefused) as refused:
        restore.run(config(tmp_path, archive, target.url))
    assert str(refused.value).startswith(
        "restore refused: the target does not look like a 3.4 manager (--target-version); nothing "
        "was changed (use --force to restore anyway): an index named cloudify_events (3.2), "
        "blueprint ")
    assert target_state(target, tmp_path) == before
    with pytest.raises(RestoreRefused, match="already exist on the target"):
        restore.run(config(tmp_path, archive, target.url, force=True))
    assert target_state(target, tmp_path) == before


def test_clashes_compare_like_with_like(target: SearchClient, tmp_path: Path) -> None:
    archive = sample(tmp_path)
    with SnapshotReader(archive) as snap:
        instance_id = next(h["_id"] for _, h in snap.iter_hits() if h["_type"] == "node_instance")
    # a deployment whose id equals a restored node instance id: 3.x called it a conflict
    target.bulk([{"_index": "cloudify_storage", "_type": "deployment", "_id": instance_id,
                  "_source": {"id": instance_id, "scaling_groups": {}}}], refresh=True)  # a 3.4 one
    restore.run(config(tmp_path, archive, target.url))
    report = verify.run(verify_config(tmp_path, archive, target.url))
    assert not report.ok
    assert report.kinds == Counter({"extra document": 1, "count": 1})
    assert f"cloudify_storage/deployment/{instance_id}: on the target" in report.render()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.server
@pytest.mark.parametrize("kill_at", ["file:2", "batch:3", "key:2"], ids=["early", "mid-bulk", "keys"])
def test_a_killed_restore_resumes_to_exactly_the_same_end(
    target: SearchClient, tmp_path: Path, kill_at: str
) -> None:
    archive = sample(tmp_path)
    args = ["restore", str(archive), "--es", target.url, "--fs-root", str(tmp_path / "fs"),
            "--credentials-dir", str(tmp_path / "creds"), "--batch-docs", "10"]
    killed = cli(*args, env={"CFYSNAP_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    refused = cli(*args)
    assert refused.returncode == 1 and "--resume" in refused.stderr
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    checked = cli("verify", str(archive), "--es", target.url, "--fs-root", str(tmp_path / "fs"),
                  "--credentials-dir", str(tmp_path / "creds"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sum(type_counts(target).values()) == 122  # no duplicates
    journal = next((tmp_path / "fs" / ".cfysnap").glob("restore-*"))
    state = Journal(journal).replay()
    assert state.finished and sum(state.loaded_counts().values()) == 122


@pytest.mark.server
def test_a_file_that_cannot_be_written_fails_the_restore_and_resume_finishes_it(
    target: SearchClient, tmp_path: Path
) -> None:
    """A file that cannot be written fails the restore with one line naming it and what was
    done (the files come first: no document yet), and --resume, once the cause is gone, writes
    what is missing."""
    archive = sample(tmp_path)
    fs = tmp_path / "fs"
    fs.mkdir()
    (fs / "blueprints").write_text("a file where the blueprints folder goes\n")
    args = ["restore", str(archive), "--es", target.url, "--fs-root", str(fs),
            "--credentials-dir", str(tmp_path / "creds"), "--batch-docs", "10"]
    failed = cli(*args)
    assert failed.returncode == 1
    [message] = failed.stderr.strip().splitlines()
    journal = next((fs / ".cfysnap").glob("restore-*"))
    assert message.startswith("error: restore failed: ")
    assert message.endswith(f"; finish it with --resume (done before failing: documents=0, "
                            f"journal={journal})")
    assert f"Not a directory: '{fs / 'blueprints'}/.cfysnap-partial-" in message
    state = Journal(journal).replay()
    assert state.checked and not state.finished and not state.files and not state.batches

    (fs / "blueprints").unlink()
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "122 documents this run" in resumed.stdout
    checked = cli("verify", str(archive), "--es", target.url, "--fs-root", str(fs),
                  "--credentials-dir", str(tmp_path / "creds"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sum(type_counts(target).values()) == 122


# ----------------------------------------------------------------- fidelity to the manager's restore
LEGACY = Path(__file__).parent / "golden" / "versions" / "v3_3_legacy_to_v3_4"
VALIDATE_AMQP_OP = "cloudify.interfaces.cloudify_agent.validate_amqp"


def golden_archive(folder: Path, path: Path) -> Path:
    """A snapshot archive of a per-document golden pair's input (metadata, es_data, agents)."""
    with SnapshotWriter(path) as out:
        out.write_json("metadata.json", json.loads((folder / "metadata_input.json").read_text()))
        out.write_hits([json.loads(line) for line in (folder / "input.jsonl").read_text().splitlines()])
        out.write_json(AGENTS, json.loads((folder / "agents_input.json").read_text()))
    return path


@pytest.mark.server
def test_a_3_3_archive_lacking_the_3_3_additions_restores_at_3_4_as_3_4_2_would(
    target: SearchClient, tmp_path: Path
) -> None:
    """The golden pair's expected documents are the §6.2 table applied by hand; on the target
    each is that, plus the restore's own agents.json merge for the one started instance."""
    archive = golden_archive(LEGACY, tmp_path / "legacy.zip")
    restore.run(config(tmp_path, archive, target.url))
    expected = {h["_id"]: h["_source"] for h in
                map(json.loads, (LEGACY / "expected.jsonl").read_text().splitlines())}
    agent = json.loads((LEGACY / "agents_input.json").read_text())["old-dep"]["vm"]["vm_x1"]
    expected["vm_x1"] = {**expected["vm_x1"], "runtime_properties": {"cloudify_agent": agent}}
    target.refresh()
    actual = {h["_id"]: h["_source"] for h in target.scan("cloudify_storage")
              if h["_type"] != "provider_context"}
    assert actual == expected
    assert verify.run(verify_config(tmp_path, archive, target.url)).ok


@pytest.mark.server
def test_a_3_3_archive_restored_at_3_3_gets_the_3_3_1_column(target: SearchClient, tmp_path: Path) -> None:
    """One step down: a 3.3.1 restore adds `validate_amqp` to the Compute nodes of a 3.3
    snapshot made on 3.3.0, which had none."""
    with SnapshotReader(golden_archive(LEGACY, tmp_path / "legacy.zip")) as snap:
        hits = [h for _, h in snap.iter_hits()]
    archive = tmp_path / "33.zip"
    with SnapshotWriter(archive) as out:
        out.write_json("metadata.json", {"has_cloudify_events": False, "snapshot_version": "3.3"})
        out.write_hits(hits)
        out.write_json(AGENTS, {})
    summary = restore.run(config(tmp_path, archive, target.url, target_version=Version.V3_3))
    assert summary.steps == ["3.3 restore defaults"]
    target.refresh()
    nodes = {h["_id"]: h["_source"] for h in target.scan("cloudify_storage", ["node"])}
    assert sorted(n for n, doc in nodes.items() if VALIDATE_AMQP_OP in doc["operations"]) == [
        "old-dep_vm", "old-dep_vm330"]  # the Compute nodes, not the app
    assert "min_number_of_instances" not in nodes["old-dep_vm"]  # no 3.4 column at 3.3
    deployment = target.get("cloudify_storage", "deployment", "old-dep")
    assert deployment is not None and "install_new_agents" in deployment["workflows"]
    assert "scaling_groups" not in deployment


# ------------------------------------------------------------ the load's short way, the split
@pytest.mark.parametrize(("version", "target_version"), [
    (Version.V3_2, Version.V3_4), (Version.V3_3, Version.V3_3), (Version.V3_3, Version.V3_4),
])
def test_hits_passed_on_unread_are_the_hits_a_full_parse_would_write(
    tmp_path: Path, version: Version, target_version: Version
) -> None:
    """`RestoreDocuments` decodes only the keys of a hit no step touches and whose source the
    restore does not read (events and logs, executions at 3.3+, ...), and sends its source on as
    the archive's bytes: every hit equals `expected_hit` of the fully parsed line, and the lines
    taken the short way are exactly the untouched ones."""
    from core.archive import parse_hit
    from transforms.restore import RestoreDocuments
    from transforms.restore_docs import restore_reads_source
    from transforms.restore_plan import restore_context
    from transforms.search_io import HitPage
    from transforms.shards import Shard
    from transforms.versions import touched

    archive = sample(tmp_path, version, events=40, logs=40)
    shard = tmp_path / "shard.jsonl"
    with SnapshotReader(archive) as snap:
        ctx = restore_context(snap, target_version, tmp_path / "creds", tmp_path)
        lines = [line for _, line in snap.iter_lines()]
    shard.write_bytes(b"\n" + b"".join(line + b"\n" for line in lines))  # a blank line first
    fn = RestoreDocuments(ctx)._fn
    fn.setup()
    pages = list(fn.process(Shard(str(shard), 0)))
    assert [type(p) for p in pages] == [HitPage]  # one page: fewer lines than a page holds
    assert pages[0].nbytes == sum(len(line) + 1 for line in lines)
    out = [item for page in pages for item in page]
    assert [n for n, _ in out] == list(range(1, len(lines) + 1))
    steps = plan(version, target_version)
    short = kept = changed = 0
    for (_, written), line in zip(out, lines, strict=True):
        read = parse_hit(line)
        expected = ctx.expected_hit(read)
        unread = not touched(steps, read["_index"], read["_type"]) and not restore_reads_source(
            read["_index"], read["_type"])
        if unread:
            short += 1
            assert isinstance(written["_source"], msgspec.Raw)
            assert bytes(written["_source"]) == json.dumps(read["_source"]).encode()  # as archived
        elif read["_type"] in ("node", "node_instance"):
            # read (a key path, an agent): sent as archived when the restore leaves it as it
            # is, else as msgspec encodes the restored source (never a dict to dump again)
            assert isinstance(written["_source"], msgspec.Raw)
            if expected["_source"] is read["_source"]:
                kept += 1
                assert bytes(written["_source"]) == json.dumps(read["_source"]).encode()
            else:
                changed += 1
                assert bytes(written["_source"]) == msgspec.json.encode(expected["_source"])
        source = written["_source"]
        decoded = msgspec.json.decode(source) if isinstance(source, msgspec.Raw) else source
        assert {**written, "_source": decoded} == {k: expected[k] for k in written}
        assert sorted(written) == ["_id", "_index", "_source", "_type"]  # what a bulk item sends
    # 3.3: every event and log at least; 3.2: events move index in 3.2 -> 3.3 (read in full)
    assert short >= (80 if version is Version.V3_3 else 1)
    # nodes and instances the restore changes (a key path, an agent; the upgrade's defaults), and
    # at 3.3 -> 3.3 the instances it leaves as they are (no agent), which went as archived
    # without a whole decode (the third way)
    assert changed
    if target_version is version:
        assert kept and fn._ways[("cloudify_storage", "node_instance")] == fn._AS_IS


def test_the_split_cuts_shards_at_exact_line_counts_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 7 bytes, shards of 3 lines: blank lines count as lines, a shard's first_line is
    its first line's number in es_data, and the last line (without its newline) gets one."""
    import zipfile

    from transforms import shards

    monkeypatch.setattr(shards, "_COPY", 7)
    lines = [b'{"a": 1}', b"", b'{"b": 22}', b'{"c": 333}', b"", b"", b'{"d": 4444}', b'{"e": 5}']
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(ES_DATA, b"\n".join(lines))  # no newline after the last line
    staging = tmp_path / "staging"
    staging.mkdir()
    got = [(s.first_line, Path(s.path).read_bytes())
           for s in shards._SplitEsData(str(staging), 3).process(str(archive))]
    assert got == [
        (1, b'{"a": 1}\n\n{"b": 22}\n'),
        (4, b'{"c": 333}\n\n\n'),
        (7, b'{"d": 4444}\n{"e": 5}\n'),
    ]
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(ES_DATA, b"\n".join(lines[:6]) + b"\n")  # ends exactly at a shard's end
    for old in staging.iterdir():
        old.unlink()
    got = [(s.first_line, Path(s.path).read_bytes())
           for s in shards._SplitEsData(str(staging), 3).process(str(archive))]
    assert got == [(1, b'{"a": 1}\n\n{"b": 22}\n'), (4, b'{"c": 333}\n\n\n')]
    assert sorted(p.name for p in staging.iterdir()) == ["in-000000.jsonl", "in-000001.jsonl"]


@pytest.mark.server
def test_the_command_line_refuses_a_bad_line_and_changes_nothing(
    target: SearchClient, tmp_path: Path
) -> None:
    """Through the command line: the bad line's number
    and reason, exit 1, and the target exactly as it was."""
    good = sample(tmp_path)
    with SnapshotReader(good) as snap:
        lines = [line for _, line in snap.iter_lines()]
    lines[6] = b'{"_index": "cloudify_storage", "_type": "node", "_id": "n", "_source": {'
    bad = tmp_path / "bad.zip"
    with SnapshotReader(good) as snap, SnapshotWriter(bad) as out:
        for name in snap.file_names():
            if name not in (ES_DATA, "manifest.json"):
                with snap.open(name) as f:
                    out.write_stream(name, f)
        out.write_bytes(ES_DATA, b"\n".join(lines) + b"\n")
    before = target_state(target, tmp_path)
    refused = cli("restore", str(bad), "--es", target.url, "--fs-root", str(tmp_path / "fs"),
                  "--credentials-dir", str(tmp_path / "creds"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "es_data:7: not valid JSON" in refused.stderr
    assert target_state(target, tmp_path) == before
    assert not (tmp_path / "fs").exists() and not (tmp_path / "creds").exists()


@pytest.mark.parametrize("block", [7, 64], ids=["line-spans-blocks", "line-inside-a-block"])
def test_the_split_refuses_a_line_longer_than_the_cap_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """A line that never ends is refused with its number, not staged (convert reads each staged
    line whole while its validation runs alongside)."""
    import zipfile

    from transforms import shards

    monkeypatch.setattr(shards, "_COPY", block)
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(ES_DATA, b'{"a": 1}\n{"b": 2}\n' + b"x" * 30 + b'\n{"c": 3}\n')
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(CorruptArchive) as err:
        list(shards._SplitEsData(str(staging), 100, max_line=12).process(str(archive)))
    assert (err.value.member, err.value.line) == (ES_DATA, 3)
    assert "line longer than" in err.value.reason
    # exactly at the cap (11 bytes and its newline) is a line like any other
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(ES_DATA, b'{"a": 1}\n' + b"y" * 11 + b"\n")
    got = [Path(s.path).read_bytes()
           for s in shards._SplitEsData(str(staging), 100, max_line=12).process(str(archive))]
    assert got == [b'{"a": 1}\n' + b"y" * 11 + b"\n"]


def test_an_event_without_a_time_on_the_short_way_names_its_line(tmp_path: Path) -> None:
    """The short way (keys and two time fields decoded) refuses an event it cannot place with
    its es_data line number, as the full parse does; the last line needs no newline."""
    from transforms.restore import RestoreDocuments
    from transforms.restore_plan import restore_context
    from transforms.shards import Shard

    archive = sample(tmp_path)
    with SnapshotReader(archive) as snap:
        ctx = restore_context(snap, Version.V3_3, tmp_path / "creds", tmp_path)
    good = b'{"_index": "logstash-2015.12.01", "_type": "cloudify_log", "_id": "l1", "_source": {"@timestamp": "2015-12-01T10:00:00.000Z"}}'
    bad = b'{"_index": "logstash-2015.12.01", "_type": "cloudify_event", "_id": "e9", "_source": {"timestamp": "soon"}}'
    shard = tmp_path / "shard.jsonl"
    shard.write_bytes(good + b"\n" + good.replace(b"l1", b"l2") + b"\n" + bad)
    fn = RestoreDocuments(ctx)._fn
    fn.setup()
    with pytest.raises(CorruptArchive) as err:
        list(fn.process(Shard(str(shard), 41)))
    assert (err.value.member, err.value.line) == (ES_DATA, 43)
    assert err.value.reason == "event cloudify_event/e9 has no parseable @timestamp or timestamp"
    shard.write_bytes(good)  # no newline at the end
    [[(line, hit)]] = list(fn.process(Shard(str(shard), 7)))
    assert (line, hit["_index"], hit["_id"], bytes(hit["_source"])) == (
        7, "logstash-2015.12.01", "l1", b'{"@timestamp": "2015-12-01T10:00:00.000Z"}')
