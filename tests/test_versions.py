"""The version-upgrade chain: step rules, golden pairs, chain validation, purity."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import CfysnapError, CorruptArchive, UnsupportedVersion
from core.model import (
    Hit,
    Version,
    daily_index,
    event_daily_index,
    event_day_of,
    hit_key,
    parse_version,
)
from transforms import versions
from transforms.versions import (
    STEPS,
    BrokenChain,
    DowngradeRefused,
    Step,
    build_chain,
    defaults_step,
    describe,
    path,
    plan,
    step_changes,
    step_from_module,
    upgrade_agents,
    upgrade_hit,
    upgrade_metadata,
)
from transforms.versions import v3_2_to_v3_3 as s32
from transforms.versions import v3_3_to_v3_4 as s33
from transforms.versions.defaults import COLUMNS

GOLDEN = Path(__file__).parent / "golden" / "versions"
GOLDEN_DIRS = sorted(p for p in GOLDEN.iterdir() if p.is_dir())

TO_33 = plan(Version.V3_2, Version.V3_3)
TO_34 = plan(Version.V3_3, Version.V3_4)
ALL = plan(Version.V3_2, Version.V3_4)

COMPUTE_H = ["cloudify.nodes.Root", "cloudify.nodes.Compute"]
SIX_NULL = {
    "package_name": None,
    "package_version": None,
    "supported_platform": None,
    "distribution": None,
    "distribution_version": None,
    "distribution_release": None,
}
AGENT_PLUGIN = {
    "name": "agent",
    "source": None,
    "executor": "central_deployment_agent",
    "install": False,
    "install_arguments": None,
    **SIX_NULL,
}


def hit(typ: str, source: dict[str, Any], index: str = "cloudify_storage", id_: str = "x") -> Hit:
    return {"_index": index, "_type": typ, "_id": id_, "_score": 0.0, "_source": source}


def read_jsonl(path: Path) -> list[Hit]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# --- the chain ---------------------------------------------------------------------------------


def test_chain_is_the_two_known_steps_oldest_first() -> None:
    assert [(s.source, s.target) for s in STEPS] == [
        (Version.V3_2, Version.V3_3),
        (Version.V3_3, Version.V3_4),
    ]
    assert STEPS[0].summary == s32.__doc__.strip().splitlines()[0]
    assert STEPS[0].changelog == s32.__doc__.strip()
    assert STEPS[1].upgrade_hit is s33.upgrade_hit


def test_plan_ends_with_the_targets_restore_defaults() -> None:
    """Every plan into 3.3 or 3.4 ends with that manager's whole §6.2 table, even from itself:
    a 3.4.2 (3.3.1) restore applies it to every snapshot, whatever its version."""
    d33, d34 = defaults_step(Version.V3_3), defaults_step(Version.V3_4)
    assert d33 is not None and d34 is not None and defaults_step(Version.V3_2) is None
    assert (d34.source, d34.target, d34.defaults, d34.name) == (
        Version.V3_4, Version.V3_4, True, "3.4 restore defaults")
    assert plan(Version.V3_2, Version.V3_4) == [*STEPS, d34]
    assert plan("3.2", "3.3") == [STEPS[0], d33]
    assert plan("3.3", "3.4.2") == [STEPS[1], d34]
    assert plan(Version.V3_4, Version.V3_4) == [d34]
    assert plan("3.3", "3.3") == [d33]
    assert plan("3.2", "3.2") == []
    assert path(plan("3.2", "3.4")) == "3.2 -> 3.3 -> 3.4 (+ 3.4 restore defaults)"
    assert path(plan("3.4", "3.4")) == "3.4 restore defaults"
    assert [release for release, _, _ in COLUMNS] == ["3.3", "3.3.1", "3.4", "3.4.0.2"]


def test_plan_refuses_downgrade_and_unknown_versions() -> None:
    with pytest.raises(DowngradeRefused) as err:
        plan(Version.V3_4, Version.V3_2)
    assert (err.value.source, err.value.target) == ("3.4", "3.2")
    assert isinstance(err.value, CfysnapError) and isinstance(err.value, ValueError)
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)
    with pytest.raises(UnsupportedVersion):
        plan("3.1", "3.4")


def test_describe_is_printable() -> None:
    text = describe(ALL)
    assert text.splitlines()[0] == "3 steps: 3.2 -> 3.3 -> 3.4 (+ 3.4 restore defaults)"
    assert "1. " + STEPS[0].summary in text
    assert "2. " + STEPS[1].summary in text
    assert "3. 3.4 restore defaults: the §6.2 table (columns 3.3, 3.3.1, 3.4, 3.4.0.2)" in text
    assert "install_new_agents" in text and "scaling_groups" in text
    assert describe([]) == "No version steps: the archive is already at the target version."
    assert describe(ALL, changelogs=False).splitlines() == [
        "3 steps: 3.2 -> 3.3 -> 3.4 (+ 3.4 restore defaults)",
        "1. " + STEPS[0].summary,
        "2. " + STEPS[1].summary,
        "3. 3.4 restore defaults: the §6.2 table (columns 3.3, 3.3.1, 3.4, 3.4.0.2) that a 3.4 "
        "manager's restore applies to every snapshot, whatever its version.",
    ]


def test_step_changes() -> None:
    deployment = hit("deployment", {"id": "d", "workflows": {}})
    assert step_changes(deployment, ALL) == [False, False, True]
    execution = hit("execution", {"id": "e"})
    assert step_changes(execution, ALL) == [True, False, False]
    instance = hit("node_instance", {"id": "i"})
    assert step_changes(instance, ALL) == [False, False, True]
    event = hit("cloudify_event", {"@timestamp": "2015-12-01T10:11:12.345Z"}, "cloudify_events")
    assert step_changes(event, ALL) == [True, False, False]
    assert step_changes(hit("widget", {"a": 1}), ALL) == [False, False, False]


def _step(source: Version, target: Version) -> Step:
    return Step(source, target, "s", "s", lambda h: h, lambda m: m, lambda a: a)


def _module(source: Version, target: Version, doc: str = "A step.") -> SimpleNamespace:
    return SimpleNamespace(
        __name__=f"fake_{source.value}_{target.value}",
        __doc__=doc,
        SOURCE=source,
        TARGET=target,
        upgrade_hit=lambda h: h,
        upgrade_metadata=lambda m: m,
        upgrade_agents=lambda a: a,
    )


V2, V3, V4 = Version.V3_2, Version.V3_3, Version.V3_4


def test_build_chain_accepts_modules_in_any_order() -> None:
    chain = build_chain([_module(V3, V4), _module(V2, V3, "First line.\n\nMore.")])
    assert [(s.source, s.target) for s in chain] == [(V2, V3), (V3, V4)]
    assert chain[0].summary == "First line."


@pytest.mark.parametrize(
    ("steps", "kind"),
    [
        ([_step(V2, V3)], "gap"),  # nothing reaches 3.4
        ([_step(V3, V4)], "gap"),  # nothing leaves 3.2
        ([_step(V2, V4)], "gap"),  # skips 3.3
        ([_step(V2, V3), _step(V3, V4), _step(V2, V3)], "duplicate"),
        ([_step(V2, V3), _step(V3, V4), _step(V2, V4)], "duplicate"),
        ([_step(V2, V3), _step(V3, V2)], "cycle"),
        ([_step(V2, V3), _step(V3, V3)], "cycle"),
        ([_step(V3, V2), _step(V2, V4)], "backward"),
        ([_step(V2, V3), _step(V3, V4), _step(V4, V2)], "cycle"),
        ([], "gap"),
    ],
)
def test_build_chain_rejects(steps: list[Step], kind: str) -> None:
    with pytest.raises(BrokenChain) as err:
        build_chain(steps)
    assert err.value.kind == kind
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)


def test_build_chain_rejects_modules_that_are_not_steps() -> None:
    no_doc = _module(V2, V3, doc="")
    with pytest.raises(BrokenChain, match="docstring") as err:
        build_chain([no_doc, _module(V3, V4)])
    assert err.value.kind == "invalid"
    no_target = _module(V2, V3)
    del no_target.TARGET
    with pytest.raises(BrokenChain, match="TARGET"):
        build_chain([no_target, _module(V3, V4)])
    str_versions = _module(V2, V3)
    str_versions.SOURCE = "3.2"
    with pytest.raises(BrokenChain, match="Version members"):
        build_chain([str_versions, _module(V3, V4)])


def test_every_step_module_declares_its_versions() -> None:
    for module in (s32, s33):
        assert isinstance(module.SOURCE, Version) and isinstance(module.TARGET, Version)
        assert (module.__doc__ or "").startswith(
            f"{module.SOURCE.value} -> {module.TARGET.value}: "
        )
    assert versions.STEPS is STEPS


# --- 3.2 -> 3.3 rules --------------------------------------------------------------------------

CREATE_AMQP = {
    "inputs": {"install_agent_timeout": 300},
    "has_intrinsic_functions": False,
    "plugin": "agent",
    "retry_interval": None,
    "max_retries": None,
    "executor": "central_deployment_agent",
    "operation": "cloudify_agent.operations.create_agent_amqp",
}
VALIDATE_AMQP = {
    "inputs": {"validate_agent_timeout": 20},
    "has_intrinsic_functions": False,
    "plugin": "agent",
    "retry_interval": None,
    "max_retries": None,
    "executor": "central_deployment_agent",
    "operation": "cloudify_agent.operations.validate_agent_amqp",
}
INSTALL_NEW_AGENTS = {
    "operation": "cloudify.plugins.workflows.install_new_agents",
    "plugin": "default_workflows",
    "parameters": {
        "install_agent_timeout": {"default": 300},
        "node_ids": {"default": []},
        "node_instance_ids": {"default": []},
    },
}


BLUEPRINT_33 = {"description": None, "main_file_name": "blueprint.yaml"}


def test_32_blueprint_gets_description_and_main_file_name() -> None:
    out = upgrade_hit(hit("blueprint", {"id": "b", "plan": {}}), TO_33)
    assert out == hit("blueprint", {"id": "b", "plan": {}, "description": "", "main_file_name": ""})
    kept = hit("blueprint", {"id": "b", "description": None, "main_file_name": "x.yaml"})
    assert upgrade_hit(kept, TO_33) is kept


def test_32_deployment_gets_install_new_agents() -> None:
    install = {"operation": "cloudify.plugins.workflows.install", "plugin": "default_workflows"}
    out = upgrade_hit(hit("deployment", {"id": "d", "workflows": {"install": install}}), TO_33)
    assert out == hit(
        "deployment",
        {"id": "d", "workflows": {"install": install, "install_new_agents": INSTALL_NEW_AGENTS}},
    )
    missing = upgrade_hit(hit("deployment", {"id": "d"}), TO_33)
    assert missing["_source"] == {
        "id": "d",
        "workflows": {"install_new_agents": INSTALL_NEW_AGENTS},
    }
    null = upgrade_hit(hit("deployment", {"id": "d", "workflows": None}), TO_33)
    assert null["_source"] == {"id": "d", "workflows": {"install_new_agents": INSTALL_NEW_AGENTS}}
    custom = hit("deployment", {"id": "d", "workflows": {"install_new_agents": {"plugin": "me"}}})
    assert upgrade_hit(custom, TO_33) is custom


def test_32_compute_node_gets_agent_operations() -> None:
    create = {"operation": "nova.create", "plugin": "openstack"}
    node = hit(
        "node",
        {"id": "vm", "type_hierarchy": COMPUTE_H, "operations": {"lifecycle.create": create}},
    )
    assert upgrade_hit(node, TO_33)["_source"] == {
        "id": "vm",
        "type_hierarchy": COMPUTE_H,
        "operations": {
            "lifecycle.create": create,
            "cloudify.interfaces.cloudify_agent.create_amqp": CREATE_AMQP,
            "cloudify.interfaces.cloudify_agent.validate_amqp": VALIDATE_AMQP,
        },
    }
    mine = {"operation": "my.op"}
    half = hit(
        "node",
        {
            "id": "vm",
            "type_hierarchy": COMPUTE_H,
            "operations": {"cloudify.interfaces.cloudify_agent.create_amqp": mine},
        },
    )
    assert upgrade_hit(half, TO_33)["_source"]["operations"] == {
        "cloudify.interfaces.cloudify_agent.create_amqp": mine,
        "cloudify.interfaces.cloudify_agent.validate_amqp": VALIDATE_AMQP,
    }
    app = hit("node", {"id": "app", "type_hierarchy": ["cloudify.nodes.Root"], "operations": {}})
    assert upgrade_hit(app, TO_33) is app


def test_32_execution_gets_is_system_workflow_false() -> None:
    out = upgrade_hit(hit("execution", {"id": "e", "workflow_id": "install"}), TO_33)
    assert out == hit(
        "execution", {"id": "e", "workflow_id": "install", "is_system_workflow": False}
    )
    system = hit("execution", {"id": "e", "is_system_workflow": True})
    assert upgrade_hit(system, TO_33) is system


@pytest.mark.parametrize(
    ("source", "index"),
    [
        ({"@timestamp": "2015-12-01T10:11:12.345Z"}, "logstash-2015.12.01"),
        ({"@timestamp": "2015-12-31T23:59:59.999Z"}, "logstash-2015.12.31"),
        ({"@timestamp": "2015-12-01T10:11:12.345+00:00"}, "logstash-2015.12.01"),
        ({"timestamp": "2015-12-01 10:11:12.345+0000"}, "logstash-2015.12.01"),
        # local time ahead of UTC: the UTC day is the day before
        ({"timestamp": "2016-01-01 01:30:00.000+0200"}, "logstash-2015.12.31"),
        # local time behind UTC: the UTC day is the day after
        ({"timestamp": "2015-12-01 22:00:00.000-0300"}, "logstash-2015.12.02"),
        # @timestamp wins over timestamp
        (
            {"@timestamp": "2015-12-02T00:00:01.000Z", "timestamp": "2015-12-01 10:00:00.000+0000"},
            "logstash-2015.12.02",
        ),
        # an unparseable @timestamp falls back to timestamp
        (
            {"@timestamp": "yesterday", "timestamp": "2015-12-05 10:00:00.000+0000"},
            "logstash-2015.12.05",
        ),
    ],
)
def test_32_events_move_to_the_daily_index_of_their_own_time(
    source: dict[str, Any], index: str
) -> None:
    event = hit("cloudify_event", {"type": "cloudify_event", **source}, "cloudify_events", "ev1")
    out = upgrade_hit(event, TO_33)
    assert out == {**event, "_index": index}
    assert out["_source"] is event["_source"]  # events are not copied


@pytest.mark.parametrize(
    "source",
    [
        {},
        {"@timestamp": None, "timestamp": None},
        {"@timestamp": "garbage", "timestamp": "also garbage"},
        {"timestamp": "2015-12-01 10:11:12.345"},  # no zone: the UTC day is unknowable
        {"@timestamp": 1449000000000},
    ],
)
def test_32_event_without_usable_time_is_a_typed_error(source: dict[str, Any]) -> None:
    event = hit("cloudify_log", source, "cloudify_events", "AbC")
    with pytest.raises(CorruptArchive) as err:
        upgrade_hit(event, TO_33)
    assert (err.value.member, err.value.line) == ("es_data", None)
    assert err.value.reason == "event cloudify_log/AbC has no parseable @timestamp or timestamp"


_TIMES = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=30),
    st.builds(
        "{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}:{:02d}{}{}".format,
        st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.sampled_from("T t"),
        st.integers(0, 25), st.integers(0, 61), st.integers(0, 61),
        st.sampled_from(["", ".1", ".345", ".9999999"]),
        st.sampled_from(["Z", "z", "", "+00:00", "+0200", "-03:00", "ZZ"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(_TIMES, _TIMES)
def test_an_events_daily_index_found_fast_is_the_index_of_its_day(at: object, ts: object) -> None:
    day = event_day_of(at, ts)
    assert event_daily_index(at, ts) == (None if day is None else daily_index(day))


def test_an_impossible_date_in_logstash_form_falls_back_to_timestamp() -> None:
    assert event_daily_index("2015-02-30T10:00:00.000Z", "2015-03-01 10:00:00+0000") == (
        "logstash-2015.03.01"
    )
    assert event_daily_index("2015-02-30T10:00:00.000Z", None) is None


def test_32_events_already_in_logstash_are_unchanged() -> None:
    event = hit("cloudify_event", {"timestamp": "junk"}, "logstash-2015.11.30", "e")
    assert upgrade_hit(event, TO_33) is event


def test_32_metadata() -> None:
    meta = {"has_cloudify_events": True, "snapshot_version": "3.2"}
    assert upgrade_metadata(meta, TO_33) == {
        "has_cloudify_events": False,
        "snapshot_version": "3.3",
    }
    extra = {"has_cloudify_events": True, "snapshot_version": "3.2", "x": [1]}
    assert upgrade_metadata(extra, TO_33) == {
        "has_cloudify_events": False,
        "snapshot_version": "3.3",
        "x": [1],
    }


FLAT_SSL = {
    "name": "vm_1",
    "queue": "vm_1",
    "version": "3.2.1",
    "manager_ip": "10.0.0.5",
    "broker_ip": "10.0.0.5",
    "broker_user": "cloudify",
    "broker_pass": "c10udify",
    "broker_ssl_enabled": True,
    "broker_ssl_cert": "PEM",
}


def test_32_agents_flat_keys_move_into_broker_config() -> None:
    agents = {"dep": {"vm": {"vm_1": FLAT_SSL, "vm_2": {**FLAT_SSL, "broker_ssl_enabled": False}}}}
    out = upgrade_agents(agents, TO_33)
    assert out["dep"]["vm"]["vm_1"] == {
        "name": "vm_1",
        "queue": "vm_1",
        "version": "3.2.1",
        "manager_ip": "10.0.0.5",
        "broker_config": {
            "broker_ip": "10.0.0.5",
            "broker_user": "cloudify",
            "broker_pass": "c10udify",
            "broker_ssl_enabled": True,
            "broker_ssl_cert": "PEM",
            "broker_port": 5671,
        },
    }
    assert out["dep"]["vm"]["vm_2"]["broker_config"]["broker_port"] == 5672
    assert out["dep"]["vm"]["vm_2"]["version"] == "3.2.1"


@pytest.mark.parametrize(("flag", "port"), [("true", 5671), ("False", 5672), ("", 5672)])
def test_32_agents_ssl_flag_as_string(flag: str, port: int) -> None:
    agents = {"d": {"n": {"i": {**FLAT_SSL, "broker_ssl_enabled": flag}}}}
    assert upgrade_agents(agents, TO_33)["d"]["n"]["i"]["broker_config"]["broker_port"] == port


def test_32_agents_empty_and_converted_entries_are_unchanged() -> None:
    converted = {"version": "3.3", "broker_config": {"broker_ip": "1.2.3.4", "broker_port": 5672}}
    no_broker = {"name": "vm_3", "version": "3.2"}
    agents = {"dep1": {"vm": {"vm_1": {}, "vm_2": converted, "vm_3": no_broker}}, "dep2": {}}
    assert upgrade_agents(agents, TO_33) is agents
    assert upgrade_agents({}, TO_33) == {}


# --- 3.3 -> 3.4 rules --------------------------------------------------------------------------


def test_33_deployment_gets_scaling_groups_and_description() -> None:
    out = upgrade_hit(hit("deployment", {"id": "d", "workflows": {}}), TO_34)
    assert out["_source"] == {
        "id": "d",
        "workflows": {"install_new_agents": INSTALL_NEW_AGENTS},  # the 3.3 column, too
        "scaling_groups": {},
        "description": None,
    }
    kept = hit("deployment", {"id": "d", "scaling_groups": {"g": {}}, "description": "text",
                              "workflows": {"install_new_agents": {"plugin": "mine"}}})
    assert upgrade_hit(kept, TO_34) is kept


def test_33_node_gets_instance_bounds() -> None:
    out = upgrade_hit(hit("node", {"id": "app"}), TO_34)
    assert out["_source"] == {
        "id": "app",
        "min_number_of_instances": 0,
        "max_number_of_instances": -1,
    }
    kept = hit("node", {"id": "app", "min_number_of_instances": 2, "max_number_of_instances": 5})
    assert upgrade_hit(kept, TO_34) is kept


def test_33_compute_node_gets_the_agent_plugin() -> None:
    openstack = {"name": "openstack", "source": "x", "install": True}
    node = {
        "id": "vm",
        "type_hierarchy": COMPUTE_H,
        "plugins": [openstack],
        "plugins_to_install": None,
    }
    out = upgrade_hit(hit("node", node), TO_34)
    assert out["_source"] == {
        "id": "vm",
        "type_hierarchy": COMPUTE_H,
        "plugins": [{**openstack, **SIX_NULL}, AGENT_PLUGIN],
        "plugins_to_install": None,
        "min_number_of_instances": 0,
        "max_number_of_instances": -1,
        "operations": {  # the 3.3 and 3.3.1 columns, too
            "cloudify.interfaces.cloudify_agent.create_amqp": CREATE_AMQP,
            "cloudify.interfaces.cloudify_agent.validate_amqp": VALIDATE_AMQP,
        },
    }
    absent: dict[str, Any] = {"id": "vm", "type_hierarchy": COMPUTE_H}
    for src in (absent, {**absent, "plugins": None}):
        assert upgrade_hit(hit("node", src), TO_34)["_source"]["plugins"] == [AGENT_PLUGIN]
    own = {"name": "agent", "executor": "host_agent"}
    has_agent = {"id": "vm", "type_hierarchy": COMPUTE_H, "plugins": [own]}
    assert upgrade_hit(hit("node", has_agent), TO_34)["_source"]["plugins"] == [{**own, **SIX_NULL}]


def test_33_non_compute_node_gets_no_agent_plugin() -> None:
    out = upgrade_hit(hit("node", {"id": "app", "type_hierarchy": ["x"], "plugins": []}), TO_34)
    assert out["_source"]["plugins"] == []
    absent = upgrade_hit(hit("node", {"id": "app", "type_hierarchy": ["x"]}), TO_34)
    assert "plugins" not in absent["_source"]


def test_33_node_plugin_lists_get_package_fields_null_stays_null() -> None:
    partial = {"name": "s", "package_name": "cloudify-script-plugin", "distribution": "centos"}
    node = {
        "id": "app",
        "min_number_of_instances": 0,
        "max_number_of_instances": -1,
        "plugins": None,
        "plugins_to_install": [partial, "not-a-dict"],
    }
    out = upgrade_hit(hit("node", node), TO_34)
    assert out["_source"] == {
        **node,
        "plugins_to_install": [{**SIX_NULL, **partial}, "not-a-dict"],
    }


def test_33_blueprint_plan_plugin_lists_get_package_fields() -> None:
    plan_ = {
        "nodes": [],
        "deployment_plugins_to_install": [{"name": "a"}],
        "workflow_plugins_to_install": [{"name": "b", "supported_platform": "any"}],
    }
    out = upgrade_hit(hit("blueprint", {"id": "b", "plan": plan_}), TO_34)
    assert out["_source"] == {
        "id": "b",
        "description": "",  # the 3.3 column, too
        "main_file_name": "",
        "plan": {
            "nodes": [],
            "deployment_plugins_to_install": [{"name": "a", **SIX_NULL}],
            "workflow_plugins_to_install": [{**SIX_NULL, "name": "b", "supported_platform": "any"}],
        },
    }
    no_lists = hit("blueprint", {"id": "b", "plan": {"nodes": []}, **BLUEPRINT_33})
    assert upgrade_hit(no_lists, TO_34) is no_lists
    null_lists = hit(
        "blueprint", {"id": "b", "plan": {"deployment_plugins_to_install": None}, **BLUEPRINT_33}
    )
    assert upgrade_hit(null_lists, TO_34) is null_lists


def test_33_node_instance_gets_scaling_groups() -> None:
    out = upgrade_hit(hit("node_instance", {"id": "i"}), TO_34)
    assert out == hit("node_instance", {"id": "i", "scaling_groups": []})


def test_33_metadata_and_agents() -> None:
    meta = {"has_cloudify_events": True, "snapshot_version": "3.3"}
    assert upgrade_metadata(meta, TO_34) == {
        "has_cloudify_events": True,
        "snapshot_version": "3.4.0",
    }
    agents = {"d": {"n": {"i": {"version": "3.3", "broker_config": {}}, "j": {}}}}
    assert upgrade_agents(agents, TO_34) is agents


def test_33_leaves_other_types_alone() -> None:
    for h in (
        hit("execution", {"id": "e"}),
        hit("plugin", {"id": "p", "archive_name": "a.wgn"}),
        hit("cloudify_event", {"x": 1}, "logstash-2016.01.01"),
        hit("cloudify_event", {}, "cloudify_events"),  # a 3.3 step never renames events
    ):
        assert upgrade_hit(h, TO_34) is h


# --- golden pairs ------------------------------------------------------------------------------


def _golden_plan(folder: Path) -> list[Step]:
    source = read_json(folder / "metadata_input.json")["snapshot_version"]
    target = read_json(folder / "metadata_expected.json")["snapshot_version"]
    return plan(parse_version(source), parse_version(target))


@pytest.mark.parametrize("folder", GOLDEN_DIRS, ids=[p.name for p in GOLDEN_DIRS])
def test_golden_es_data(folder: Path) -> None:
    steps = _golden_plan(folder)
    assert steps, "a golden pair must cross at least one step"
    out = {
        hit_key(h): h for h in (upgrade_hit(h, steps) for h in read_jsonl(folder / "input.jsonl"))
    }
    expected = {hit_key(h): h for h in read_jsonl(folder / "expected.jsonl")}
    assert sorted(out) == sorted(expected)
    for key, doc in expected.items():
        assert out[key] == doc, key


@pytest.mark.parametrize("folder", GOLDEN_DIRS, ids=[p.name for p in GOLDEN_DIRS])
def test_golden_agents_and_metadata(folder: Path) -> None:
    steps = _golden_plan(folder)
    agents = read_json(folder / "agents_input.json")
    assert upgrade_agents(agents, steps) == read_json(folder / "agents_expected.json")
    meta = read_json(folder / "metadata_input.json")
    assert upgrade_metadata(meta, steps) == read_json(folder / "metadata_expected.json")


def test_golden_pairs_cover_every_step_and_the_whole_chain() -> None:
    assert {p.name for p in GOLDEN_DIRS} >= {"v3_2_to_v3_3", "v3_3_to_v3_4", "v3_2_to_v3_4"}


# --- properties over the golden inputs ---------------------------------------------------------


def _golden_archives() -> list[tuple[str, list[Hit], dict[str, Any], dict[str, Any]]]:
    return [
        (
            f.name,
            read_jsonl(f / "input.jsonl"),
            read_json(f / "agents_input.json"),
            read_json(f / "metadata_input.json"),
        )
        for f in GOLDEN_DIRS
    ]


@pytest.mark.parametrize("name", [p.name for p in GOLDEN_DIRS])
def test_inputs_are_never_mutated(name: str) -> None:
    folder = GOLDEN / name
    steps = _golden_plan(folder)
    hits = read_jsonl(folder / "input.jsonl")
    agents = read_json(folder / "agents_input.json")
    meta = read_json(folder / "metadata_input.json")
    before = copy.deepcopy((hits, agents, meta))
    outs = [upgrade_hit(h, steps) for h in hits]
    for h in hits:
        step_changes(h, steps)
    upgrade_agents(agents, steps)
    upgrade_metadata(meta, steps)
    assert (hits, agents, meta) == before
    # and the outputs share no mutable default with each other
    outs[0]["_source"]["mutated"] = True
    assert all("mutated" not in h["_source"] for h in hits)


def test_outputs_share_no_defaults_between_documents() -> None:
    a = upgrade_hit(hit("node", {"id": "a", "type_hierarchy": COMPUTE_H}), ALL)
    b = upgrade_hit(hit("node", {"id": "b", "type_hierarchy": COMPUTE_H}), ALL)
    a["_source"]["plugins"][0]["name"] = "changed"
    a["_source"]["operations"]["cloudify.interfaces.cloudify_agent.create_amqp"]["inputs"][
        "install_agent_timeout"
    ] = 1
    assert b["_source"]["plugins"][0]["name"] == "agent"
    assert (
        b["_source"]["operations"]["cloudify.interfaces.cloudify_agent.create_amqp"] == CREATE_AMQP
    )


@pytest.mark.parametrize("name", [p.name for p in GOLDEN_DIRS])
def test_idempotent_at_the_target(name: str) -> None:
    folder = GOLDEN / name
    steps = _golden_plan(folder)
    hits = read_jsonl(folder / "input.jsonl")
    once = [upgrade_hit(h, steps) for h in hits]
    assert [upgrade_hit(h, steps) for h in once] == once
    for h in once:  # the same object: nothing is rebuilt when nothing changes
        assert upgrade_hit(h, steps) is h
    agents = upgrade_agents(read_json(folder / "agents_input.json"), steps)
    assert upgrade_agents(agents, steps) is agents
    meta = upgrade_metadata(read_json(folder / "metadata_input.json"), steps)
    assert upgrade_metadata(meta, steps) == meta
    assert all(step.upgrade_metadata(meta) is meta for step in steps[-1:])


def test_two_steps_equal_the_whole_chain() -> None:
    for name, hits, agents, meta in _golden_archives():
        if read_json(GOLDEN / name / "metadata_input.json")["snapshot_version"] != "3.2":
            continue
        for h in hits:
            assert upgrade_hit(h, ALL) == upgrade_hit(upgrade_hit(h, TO_33), TO_34)
        assert upgrade_agents(agents, ALL) == upgrade_agents(upgrade_agents(agents, TO_33), TO_34)
        assert upgrade_metadata(meta, ALL) == upgrade_metadata(upgrade_metadata(meta, TO_33), TO_34)


def test_unknown_types_and_fields_pass_through() -> None:
    widget = hit("widget", {"nested": {"a": [1, 2]}})
    assert upgrade_hit(widget, ALL) is widget
    no_source = {"_index": "cloudify_storage", "_type": "deployment", "_id": "d"}
    assert upgrade_hit(no_source, ALL) is no_source
    extra = {"id": "d", "workflows": {}, "future_field": {"deep": [{"x": 1}]}}
    out = upgrade_hit(hit("deployment", extra, id_="d"), ALL)
    assert out["_source"]["future_field"] == {"deep": [{"x": 1}]}
    assert out["_source"]["future_field"] is extra["future_field"]  # shared, not copied
    assert out["_id"] == "d" and out["_score"] == 0.0
    weird = hit("deployment", {"id": "d", "workflows": "not-a-dict"})
    assert upgrade_hit(weird, TO_33) is weird


# --- property: every plan's output is the target's whole §6.2 table, and a fixed point ----------
# The rules below are spelled out here, independently of transforms/versions/defaults.py: what a
# document must hold once a `target` manager's restore has run over it.
AGENT_OPS = {
    "cloudify.interfaces.cloudify_agent.create_amqp": Version.V3_3,
    "cloudify.interfaces.cloudify_agent.validate_amqp": Version.V3_3,
}


def table_gaps(doc_type: str, doc: dict[str, Any], target: Version) -> list[str]:
    """What `doc` still lacks of the §6.2 table of `target` (empty: complete)."""
    if target < Version.V3_3:
        return []
    gaps = []
    v34 = target >= Version.V3_4
    compute = "cloudify.nodes.Compute" in (doc.get("type_hierarchy") or [])
    if doc_type == "deployment":
        workflows = doc.get("workflows")
        if isinstance(workflows, dict) or workflows is None:
            if "install_new_agents" not in (workflows or {}):
                gaps.append("workflows.install_new_agents")
        if v34:
            gaps += [k for k in ("scaling_groups", "description") if k not in doc]
    elif doc_type == "blueprint":
        gaps += [k for k in ("description", "main_file_name") if k not in doc]
        plan_ = doc.get("plan")
        if v34 and isinstance(plan_, dict):
            for key in ("deployment_plugins_to_install", "workflow_plugins_to_install"):
                for item in plan_.get(key) or []:
                    if isinstance(item, dict):
                        gaps += [f"plan.{key}.{f}" for f in SIX_NULL if f not in item]
    elif doc_type == "node":
        operations = doc.get("operations")
        if compute and (isinstance(operations, dict) or operations is None):
            gaps += [op for op in AGENT_OPS if op not in (operations or {})]
        if v34:
            gaps += [k for k in ("min_number_of_instances", "max_number_of_instances")
                     if k not in doc]
            plugins = doc.get("plugins")
            if compute and (plugins is None or isinstance(plugins, list)):
                if not any(isinstance(p, dict) and p.get("name") == "agent" for p in plugins or []):
                    gaps.append("plugins[agent]")
            for key in ("plugins", "plugins_to_install"):
                items = doc.get(key)
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict):
                        gaps += [f"{key}.{f}" for f in SIX_NULL if f not in item]
    elif doc_type == "node_instance" and v34 and "scaling_groups" not in doc:
        gaps.append("scaling_groups")
    return gaps


_ids = st.text("abcdefgh-_0123456789", min_size=1, max_size=8)
_plugin = st.fixed_dictionaries(
    {"name": st.sampled_from(["agent", "openstack", "script"])},
    optional={f: st.none() | _ids for f in SIX_NULL},
)
_plugins = st.none() | st.lists(_plugin | st.just("not-a-dict"), max_size=3)
_operations = st.none() | st.dictionaries(
    st.sampled_from([*AGENT_OPS, "cloudify.interfaces.lifecycle.create"]),
    st.fixed_dictionaries({"operation": _ids}),
    max_size=3,
)
_hierarchy = st.sampled_from(
    [["cloudify.nodes.Root"], ["cloudify.nodes.Root", "cloudify.nodes.Compute"]]
)


def _maybe(**fields: Any) -> Any:
    return st.fixed_dictionaries({"id": _ids}, optional=fields)


_documents = st.one_of(
    st.tuples(st.just("blueprint"), _maybe(
        description=st.none() | _ids, main_file_name=_ids,
        plan=st.fixed_dictionaries({}, optional={
            "deployment_plugins_to_install": _plugins, "workflow_plugins_to_install": _plugins}),
    )),
    st.tuples(st.just("deployment"), _maybe(
        workflows=st.none() | st.dictionaries(
            st.sampled_from(["install", "install_new_agents"]), st.fixed_dictionaries({})),
        scaling_groups=st.fixed_dictionaries({}), description=st.none() | _ids,
    )),
    st.tuples(st.just("node"), _maybe(
        type_hierarchy=_hierarchy, operations=_operations, plugins=_plugins,
        plugins_to_install=_plugins, min_number_of_instances=st.integers(0, 3),
        max_number_of_instances=st.integers(-1, 3),
    )),
    st.tuples(st.just("node_instance"), _maybe(scaling_groups=st.lists(_ids, max_size=2))),
    st.tuples(st.just("execution"), _maybe(is_system_workflow=st.booleans())),
    st.tuples(st.just("plugin"), _maybe(archive_name=_ids)),
)


@settings(max_examples=300, deadline=None)
@given(
    docs=st.lists(_documents, max_size=12),
    versions=st.sampled_from([(V2, V3), (V2, V4), (V3, V3), (V3, V4), (V4, V4)]),
)
def test_any_input_comes_out_complete_for_its_target_and_a_fixed_point(
    docs: list[tuple[str, dict[str, Any]]], versions: tuple[Version, Version]
) -> None:
    source, target = versions
    steps = plan(source, target)
    hits = [hit(t, d, id_=f"{t}-{n}") for n, (t, d) in enumerate(docs)]
    out = [upgrade_hit(h, steps) for h in hits]
    for h in out:
        assert table_gaps(h["_type"], h["_source"], target) == [], h
    table = defaults_step(target)
    assert table is not None
    assert [table.upgrade_hit(h) for h in out] == out  # the whole table changes nothing more
    assert all(upgrade_hit(h, steps) is h for h in out)  # and the plan is a fixed point
    for before, after in zip(hits, out, strict=True):  # only ever adds
        for key, value in before["_source"].items():
            if key not in ("workflows", "operations", "plugins", "plugins_to_install", "plan"):
                assert after["_source"][key] == value


# --- touches: which hits a step can change at all ---------------------------------------------
INDICES = ("cloudify_storage", "cloudify_events", "logstash-2015.12.01")
TYPES = ("blueprint", "deployment", "node", "node_instance", "execution", "deployment_modification",
         "plugin", "provider_context", "snapshot", "cloudify_event", "cloudify_log", "widget")
EVERY_STEP = [*STEPS, defaults_step(Version.V3_3), defaults_step(Version.V3_4)]


def test_each_step_says_which_hits_it_can_change() -> None:
    touched_by = {
        step.name: {(i, t) for i in INDICES for t in TYPES if step.touches(i, t)}
        for step in EVERY_STEP
    }
    assert touched_by == {
        "3.2 -> 3.3": {("cloudify_events", t) for t in TYPES} | {(i, "execution") for i in INDICES},
        "3.3 -> 3.4": set(),
        "3.3 restore defaults": {(i, t) for i in INDICES for t in ("blueprint", "deployment", "node")},
        "3.4 restore defaults": {
            (i, t) for i in INDICES for t in ("blueprint", "deployment", "node", "node_instance")
        },
    }
    assert versions.touched(ALL, "logstash-2015.12.01", "cloudify_event") is False
    assert versions.touched(ALL, "cloudify_events", "cloudify_event") is True
    assert versions.touched(TO_34, "cloudify_storage", "execution") is False


def _hits_of_every_kind() -> list[Hit]:
    """The golden inputs, two generated snapshots, and hits of every (index, type) above with
    sources that would make a step act (missing fields, event times, compute hierarchies)."""
    from pipelines.sample.generate import ManagerSpec, snapshot_hits

    hits = [h for _, golden, _, _ in _golden_archives() for h in golden]
    for version in (Version.V3_2, Version.V3_3):
        hits += list(snapshot_hits(ManagerSpec(version=version, events=20, logs=20)))
    sources = [{}, {"id": "x", "type_hierarchy": COMPUTE_H, "plugins": [{"name": "p"}]},
               {"@timestamp": "2015-12-01T10:11:12.345Z", "workflows": {}}]
    hits += [hit(t, s, i) for i in INDICES for t in TYPES for s in sources]
    return hits


def test_a_step_returns_every_hit_it_does_not_touch_as_the_very_same_object() -> None:
    """`touches` is a promise jobs rely on to send a hit's source on unread: checked here
    against every step and hits of every kind, and the promise is not vacuous."""
    def acts_on(step: Step, h: Hit) -> bool:
        try:
            return step.upgrade_hit(h) is not h
        except CorruptArchive:  # an event it must place and cannot: it acts on it too
            return True

    hits = _hits_of_every_kind()
    for step in EVERY_STEP:
        untouched = [h for h in hits if not step.touches(h["_index"], h["_type"])]
        assert not any(acts_on(step, h) for h in untouched), step.name
        assert len(untouched) > 100, step.name
        changed = [h for h in hits if acts_on(step, h)]
        assert changed or step.name == "3.3 -> 3.4", step.name
        assert all(step.touches(h["_index"], h["_type"]) for h in changed), step.name


def test_a_step_module_without_touches_touches_everything_and_a_bad_one_is_refused() -> None:
    step = step_from_module(_module(V2, V3))
    assert step.touches("logstash-2015.12.01", "cloudify_log") is True
    with pytest.raises(BrokenChain) as err:
        step_from_module(SimpleNamespace(**vars(_module(V2, V3)), touches="no"))
    assert err.value.kind == "invalid" and "touches must be callable" in str(err.value)


# --- moves: the hits a step changes in their index alone ----------------------------------------
def test_only_the_32_step_declares_a_move_and_it_is_the_events_daily_index() -> None:
    moves = {step.name: step.move for step in EVERY_STEP}
    move = moves.pop("3.2 -> 3.3")
    assert set(moves.values()) == {None}
    assert move is not None and move.fields == ("@timestamp", "timestamp")
    assert {(i, t) for i in INDICES for t in TYPES if move.applies(i, t)} == {
        ("cloudify_events", t) for t in TYPES
    }
    assert move.index("2015-12-01T23:59:59Z", None) == "logstash-2015.12.01"
    assert move.index(None, "2015-12-01 23:30:00.000-0200") == "logstash-2015.12.02"
    assert move.index(None, "2015-12-01 10:00:00") is None  # a zone-less local time


def test_a_step_that_moves_a_hit_changes_its_index_alone_as_its_move_says() -> None:
    """`IndexMove` is a promise a job relies on to read an event's time fields alone: checked
    here against hits of every kind, and not vacuously."""
    hits = _hits_of_every_kind() + [
        hit(t, s, "cloudify_events")
        for t in ("cloudify_event", "cloudify_log")
        for s in ({"@timestamp": "2015-12-01T10:00:00Z", "timestamp": "2016-01-01 00:00:00+0000"},
                  {"@timestamp": "not a time", "timestamp": "2016-01-01 00:00:00+0000"},
                  {"timestamp": "2016-01-01 00:00:00"}, {"@timestamp": ["x"]})
    ]
    checked = 0
    for step in EVERY_STEP:
        if step.move is None:
            continue
        for h in hits:
            if not step.move.applies(h["_index"], h["_type"]):
                continue
            assert step.touches(h["_index"], h["_type"]), step.name
            values = [h["_source"].get(name) for name in step.move.fields]
            index = step.move.index(*values)
            if index is None:
                with pytest.raises(CorruptArchive):
                    step.upgrade_hit(h)
            else:
                after = step.upgrade_hit(h)
                assert list(after) == list(h) and after["_index"] == index
                assert all(after[k] is v for k, v in h.items() if k != "_index")
            checked += 1
    assert checked > 40


def test_a_step_module_declaring_part_of_a_move_is_refused() -> None:
    parts = {"moves_index": lambda i, t: True, "MOVE_FIELDS": ("t",), "moved_index": lambda t: "x"}
    step = step_from_module(SimpleNamespace(**vars(_module(V2, V3)), **parts))
    assert step.move is not None and step.move.fields == ("t",) and step.move.index(1) == "x"
    partial = {k: v for k, v in parts.items() if k != "moved_index"}
    with pytest.raises(BrokenChain) as err:
        step_from_module(SimpleNamespace(**vars(_module(V2, V3)), **partial))
    assert err.value.kind == "invalid" and "without moved_index" in str(err.value)
    for bad in ({"MOVE_FIELDS": "t"}, {"MOVE_FIELDS": ()}, {"MOVE_FIELDS": ("t", "t")},
                {"MOVE_FIELDS": ("",)}, {"moves_index": "events"}):
        with pytest.raises(BrokenChain) as err:
            step_from_module(SimpleNamespace(**vars(_module(V2, V3)), **{**parts, **bad}))
        assert err.value.kind == "invalid" and "distinct non-empty names" in str(err.value), bad
    with pytest.raises(BrokenChain) as err:
        step_from_module(SimpleNamespace(**vars(_module(V2, V3)), **{**parts, "MOVE_FIELDS": ("t", "u")}))
    assert err.value.kind == "invalid" and "one argument per MOVE_FIELDS name" in str(err.value)


@pytest.mark.parametrize("source", [{"timestamp": "0001-01-01 00:00:00.000+0100"},
                                    {"@timestamp": "9999-12-31T23:00:00-01:00"}])
def test_an_event_whose_utc_day_is_outside_the_calendar_cannot_be_placed(source: dict[str, Any]) -> None:
    """Its UTC day would be in year 0 or 10000: refused as an event with no usable time (with
    its document named), not an OverflowError from the middle of a job."""
    assert s32.moved_index(source.get("@timestamp"), source.get("timestamp")) is None
    with pytest.raises(CorruptArchive, match="has no parseable @timestamp or timestamp"):
        s32.upgrade_hit(hit("cloudify_event", source, "cloudify_events"))
