"""What a manager's restore adds to every document of every snapshot (spec §6.1–§6.2).

A 3.3.x or 3.4.x restore runs one function, `_update_es_node`, on every es_data line of every
snapshot it accepts, whatever the snapshot's version: that function holds every column of the
§6.2 table its release knows. cfysnap ends every conversion and every restore into a `version`
with that version's whole table (`defaults_step(version)`), so that what it writes equals what
that manager's own restore would have made of the same input:

| column | deployment | Compute node | every node | node_instance | blueprint |
|---|---|---|---|---|---|
| 3.3 | `workflows.install_new_agents` | operation `…cloudify_agent.create_amqp` | | | `description` "", `main_file_name` "" |
| 3.3.1 | | operation `…cloudify_agent.validate_amqp` | | | |
| 3.4 | `scaling_groups` {}, `description` null | the `agent` plugin | `min_number_of_instances` 0, `max_number_of_instances` -1 | `scaling_groups` [] | |
| 3.4.0.2 | | | six plugin package fields null in `plugins`, `plugins_to_install` | | the same in `plan.*_plugins_to_install` |

A 3.3 target gets the 3.3 and 3.3.1 columns (what the last 3.3 release, 3.3.1, restores); a 3.4
target gets all four (3.4.2). A 3.2 manager had no snapshot restore: nothing.

Every function only adds what is missing (so applying a table twice changes nothing), never
mutates its input (changed dicts and lists are rebuilt level by level, unchanged sub-objects
shared) and returns the very same object when nothing changes. Not done offline (the 3.4 restore
does it against its own target): dropping `plugin` documents whose archive the target already
has, and installing the others.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from core.model import Doc, Hit, Version, is_compute_node

__all__ = [
    "COLUMNS",
    "columns_for",
    "update_document",
    "update_hit",
    "PLUGIN_PACKAGE_FIELDS",
]

PLUGIN_PACKAGE_FIELDS = (
    "package_name",
    "package_version",
    "supported_platform",
    "distribution",
    "distribution_version",
    "distribution_release",
)
_PLAN_PLUGIN_LISTS = ("deployment_plugins_to_install", "workflow_plugins_to_install")
_NODE_PLUGIN_LISTS = ("plugins", "plugins_to_install")

DocUpdate = Callable[[Doc], Doc]


def _with_missing(doc: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`doc` plus the keys of `defaults` it lacks; `doc` itself when it lacks none."""
    missing = {k: v for k, v in defaults.items() if k not in doc}
    return {**doc, **missing} if missing else doc


def _agent_operation(implementation: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Every operation the restore adds has this shape (§6.2)."""
    return {
        "inputs": inputs,
        "has_intrinsic_functions": False,
        "plugin": "agent",
        "retry_interval": None,
        "max_retries": None,
        "executor": "central_deployment_agent",
        "operation": implementation,
    }


def _with_operation(name: str, implementation: str, inputs: dict[str, Any]) -> DocUpdate:
    """A Compute node gets operation `name` if it lacks it (a fresh dict for every document:
    no two documents share a default)."""

    def update(doc: Doc) -> Doc:
        if not is_compute_node(doc):
            return doc
        operations = doc.get("operations")
        if operations is None:
            operations = {}
        elif not isinstance(operations, dict) or name in operations:
            return doc
        operation = _agent_operation(implementation, copy.deepcopy(inputs))
        return {**doc, "operations": {**operations, name: operation}}

    return update


# ---- 3.3 ---------------------------------------------------------------------------------------
def _install_new_agents(doc: Doc) -> Doc:
    workflows = doc.get("workflows")
    if workflows is None:
        workflows = {}
    elif not isinstance(workflows, dict) or "install_new_agents" in workflows:
        return doc
    workflow = {
        "operation": "cloudify.plugins.workflows.install_new_agents",
        "plugin": "default_workflows",
        "parameters": {
            "install_agent_timeout": {"default": 300},
            "node_ids": {"default": []},
            "node_instance_ids": {"default": []},
        },
    }
    return {**doc, "workflows": {**workflows, "install_new_agents": workflow}}


_create_amqp = _with_operation(
    "cloudify.interfaces.cloudify_agent.create_amqp",
    "cloudify_agent.operations.create_agent_amqp",
    {"install_agent_timeout": 300},
)


def _blueprint_fields(doc: Doc) -> Doc:
    return _with_missing(doc, {"description": "", "main_file_name": ""})


# ---- 3.3.1 -------------------------------------------------------------------------------------
_validate_amqp = _with_operation(
    "cloudify.interfaces.cloudify_agent.validate_amqp",
    "cloudify_agent.operations.validate_agent_amqp",
    {"validate_agent_timeout": 20},
)


# ---- 3.4 ---------------------------------------------------------------------------------------
def _deployment_scaling(doc: Doc) -> Doc:
    return _with_missing(doc, {"scaling_groups": {}, "description": None})


def _instance_scaling(doc: Doc) -> Doc:
    return _with_missing(doc, {"scaling_groups": []})


def _instance_bounds(doc: Doc) -> Doc:
    return _with_missing(doc, {"min_number_of_instances": 0, "max_number_of_instances": -1})


def _agent_plugin(doc: Doc) -> Doc:
    """A Compute node gets a plugin named `agent` if it has none; absent or null `plugins`
    becomes a list holding just that plugin."""
    plugins = doc.get("plugins")
    if not is_compute_node(doc) or not (plugins is None or isinstance(plugins, list)):
        return doc
    if plugins and any(isinstance(p, dict) and p.get("name") == "agent" for p in plugins):
        return doc
    agent = {
        "name": "agent",
        "source": None,
        "executor": "central_deployment_agent",
        "install": False,
        "install_arguments": None,
    }
    return {**doc, "plugins": [*(plugins or []), agent]}


# ---- 3.4.0.2 (CFY-5782) ------------------------------------------------------------------------
def _plugins_with_package_fields(plugins: object) -> object:
    """Each dict item with the six package fields; null (or any non-list) is returned as is."""
    if not isinstance(plugins, list):
        return plugins
    defaults = dict.fromkeys(PLUGIN_PACKAGE_FIELDS)
    new = [_with_missing(p, defaults) if isinstance(p, dict) else p for p in plugins]
    return plugins if all(a is b for a, b in zip(new, plugins, strict=True)) else new


def _with_package_fields(doc: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    new = doc
    for key in keys:
        if key in new:
            items = _plugins_with_package_fields(new[key])
            if items is not new[key]:
                new = {**new, key: items}
    return new


def _node_package_fields(doc: Doc) -> Doc:
    return _with_package_fields(doc, _NODE_PLUGIN_LISTS)


def _plan_package_fields(doc: Doc) -> Doc:
    plan = doc.get("plan")
    if not isinstance(plan, dict):
        return doc
    new_plan = _with_package_fields(plan, _PLAN_PLUGIN_LISTS)
    return doc if new_plan is plan else {**doc, "plan": new_plan}


# ---- the table ---------------------------------------------------------------------------------
COLUMNS: tuple[tuple[str, Version, dict[str, tuple[DocUpdate, ...]]], ...] = (
    (
        "3.3",
        Version.V3_3,
        {
            "deployment": (_install_new_agents,),
            "node": (_create_amqp,),
            "blueprint": (_blueprint_fields,),
        },
    ),
    ("3.3.1", Version.V3_3, {"node": (_validate_amqp,)}),
    (
        "3.4",
        Version.V3_4,
        {
            "deployment": (_deployment_scaling,),
            "node": (_instance_bounds, _agent_plugin),
            "node_instance": (_instance_scaling,),
        },
    ),
    (
        "3.4.0.2",
        Version.V3_4,
        {"node": (_node_package_fields,), "blueprint": (_plan_package_fields,)},
    ),
)
"""The §6.2 table, column by column, oldest first: (release, the version it belongs to, the
updates it adds per document type, in order)."""


def columns_for(version: Version) -> dict[str, tuple[DocUpdate, ...]]:
    """Per document type, every update of every column a `version` manager's restore applies."""
    updates: dict[str, tuple[DocUpdate, ...]] = {}
    for _release, belongs_to, column in COLUMNS:
        if belongs_to <= version:
            for doc_type, functions in column.items():
                updates[doc_type] = updates.get(doc_type, ()) + functions
    return updates


def update_document(doc_type: str, doc: Doc, updates: dict[str, tuple[DocUpdate, ...]]) -> Doc:
    for update in updates.get(doc_type, ()):
        doc = update(doc)
    return doc


def update_hit(hit: Hit, updates: dict[str, tuple[DocUpdate, ...]]) -> Hit:
    """One es_data line with `updates` (from `columns_for`) applied to its `_source`; the very
    same hit when nothing changed (events, executions, unknown types always)."""
    functions = updates.get(hit.get("_type"))  # type: ignore[arg-type]
    source = hit.get("_source")
    if not functions or not isinstance(source, dict):
        return hit
    new = source
    for update in functions:
        new = update(new)
    return hit if new is source else {**hit, "_source": new}
