"""3.3 -> 3.4: scaling fields, instance bounds, the agent plugin, plugin package fields.

What a 3.4.0.2+ manager's restore adds to a 3.3 snapshot (spec §6.2, §6.6), done offline:

- deployment: `scaling_groups` {} and `description` null where missing.
- node: `min_number_of_instances` 0 and `max_number_of_instances` -1 where missing; a node whose
  `type_hierarchy` contains `cloudify.nodes.Compute` and has no plugin named `agent` gets one in
  `plugins` (`source` null, `executor` "central_deployment_agent", `install` false,
  `install_arguments` null, the six package fields null); absent or null `plugins` on such a node
  becomes a list holding just that plugin.
- node: every dict item of `plugins` and `plugins_to_install` gets `package_name`,
  `package_version`, `supported_platform`, `distribution`, `distribution_version`,
  `distribution_release` null where missing (CFY-5782); a null list stays null.
- blueprint: the same six fields, null where missing, in every item of
  `plan.deployment_plugins_to_install` and `plan.workflow_plugins_to_install`.
- node_instance: `scaling_groups` [] where missing.
- metadata.json: `snapshot_version` "3.4.0"; `has_cloudify_events` unchanged.
- agents.json: unchanged (the 3.3.1 `broker_config` form is the 3.4 form).

Not done here (the 3.4 restore does it against the target): dropping `plugin` documents whose
archive the target already has, and installing the others.

Only missing things are added, so the step is idempotent. Unknown types and fields pass through.
Functions never mutate their input: changed dicts and lists are rebuilt level by level (unchanged
sub-objects are shared), and an unchanged document is returned as the very same object.
"""

from __future__ import annotations

from typing import Any

from pipelines.model import Doc, Hit, Version, is_compute_node, metadata_version

__all__ = ["SOURCE", "TARGET", "upgrade_hit", "upgrade_metadata", "upgrade_agents"]

SOURCE = Version.V3_3
TARGET = Version.V3_4

PLUGIN_PACKAGE_FIELDS = (
    "package_name",
    "package_version",
    "supported_platform",
    "distribution",
    "distribution_version",
    "distribution_release",
)
PLAN_PLUGIN_LISTS = ("deployment_plugins_to_install", "workflow_plugins_to_install")
NODE_PLUGIN_LISTS = ("plugins", "plugins_to_install")


def _with_missing(doc: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`doc` plus the keys of `defaults` it lacks; `doc` itself when it lacks none."""
    missing = {k: v for k, v in defaults.items() if k not in doc}
    return {**doc, **missing} if missing else doc


def _package_fields() -> dict[str, None]:
    return dict.fromkeys(PLUGIN_PACKAGE_FIELDS)


def _agent_plugin() -> dict[str, Any]:
    return {
        "name": "agent",
        "source": None,
        "executor": "central_deployment_agent",
        "install": False,
        "install_arguments": None,
        **_package_fields(),
    }


def _plugins_with_package_fields(plugins: object) -> object:
    """Each dict item with the six package fields; null (or any non-list) is returned as is."""
    if not isinstance(plugins, list):
        return plugins
    defaults = _package_fields()
    new = [_with_missing(p, defaults) if isinstance(p, dict) else p for p in plugins]
    return plugins if all(a is b for a, b in zip(new, plugins, strict=True)) else new


def _has_agent_plugin(plugins: list[Any]) -> bool:
    return any(isinstance(p, dict) and p.get("name") == "agent" for p in plugins)


def upgrade_deployment(doc: Doc) -> Doc:
    return _with_missing(doc, {"scaling_groups": {}, "description": None})


def upgrade_node_instance(doc: Doc) -> Doc:
    return _with_missing(doc, {"scaling_groups": []})


def upgrade_node(doc: Doc) -> Doc:
    new = _with_missing(doc, {"min_number_of_instances": 0, "max_number_of_instances": -1})
    plugins = new.get("plugins")
    if is_compute_node(new) and (plugins is None or isinstance(plugins, list)):
        if plugins is None or not _has_agent_plugin(plugins):
            new = {**new, "plugins": [*(plugins or []), _agent_plugin()]}
    for key in NODE_PLUGIN_LISTS:
        if key in new:
            items = _plugins_with_package_fields(new[key])
            if items is not new[key]:
                new = {**new, key: items}
    return new


def upgrade_blueprint(doc: Doc) -> Doc:
    plan = doc.get("plan")
    if not isinstance(plan, dict):
        return doc
    new_plan = plan
    for key in PLAN_PLUGIN_LISTS:
        if key in new_plan:
            items = _plugins_with_package_fields(new_plan[key])
            if items is not new_plan[key]:
                new_plan = {**new_plan, key: items}
    return doc if new_plan is plan else {**doc, "plan": new_plan}


_DOC_UPGRADES = {
    "blueprint": upgrade_blueprint,
    "deployment": upgrade_deployment,
    "node": upgrade_node,
    "node_instance": upgrade_node_instance,
}


def upgrade_hit(hit: Hit) -> Hit:
    """One es_data line in, one out: storage documents get the 3.4 defaults; anything else
    (events, executions, plugins, unknown types) is returned as is (the same object)."""
    upgrade = _DOC_UPGRADES.get(hit.get("_type"))  # type: ignore[arg-type]
    source = hit.get("_source")
    if upgrade is None or not isinstance(source, dict):
        return hit
    new_source = upgrade(source)
    return hit if new_source is source else {**hit, "_source": new_source}


def upgrade_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    version = metadata_version(TARGET)
    if meta.get("snapshot_version") == version:
        return meta
    return {**meta, "snapshot_version": version}


def upgrade_agents(agents: dict[str, Any]) -> dict[str, Any]:
    """Identity: a 3.3 agents.json (3.3.1 `broker_config` form) is already the 3.4 form."""
    return agents
