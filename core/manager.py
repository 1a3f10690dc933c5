"""What a live manager is: its version, read from its data with the evidence, its events index,
its provider context (spec §2, §4, §5).

A 3.x manager does not store its own version. It is read from facts of its data, each of which
is only possible on some versions:

| fact | versions |
|---|---|
| an index named `cloudify_events` (3.2's bootstrap creates it; 3.3+ write to `logstash-*`) | 3.2 |
| daily `logstash-*` event indices | 3.3, 3.4 |
| a blueprint without / with `main_file_name` (a 3.3 model field) | 3.2 / 3.3, 3.4 |
| a deployment without / with `scaling_groups` (3.4) | 3.2, 3.3 / 3.4 |
| a node without / with `min_number_of_instances` (3.4) | 3.2, 3.3 / 3.4 |
| `plugin` documents (the 3.3 plugin catalogue) | 3.3, 3.4 |
| `snapshot` documents (the 3.3 snapshot store) | 3.3, 3.4 |
| `deployment_update` documents | 3.4 |

The version is the one every fact allows. Where facts allow several, the **oldest** is taken:
reading a newer manager as older only runs idempotent upgrade steps over data that already has
what they add, while reading an older one as newer would skip steps and lose their changes (a
3.2 blueprint restored without `description`). Where no version fits every fact, or no fact is
found, nothing is guessed: `ManagerVersionUnknown` names the facts and asks for
`--source-version`. A version given by the operator is taken as given; facts that disagree with
it are reported, never silently overruled.

`release`: the 3.2.1 snapshots tool writes agents.json differently from 3.2's (`cloudify`/
`c10udify` and version "3.2.1" instead of `guest`/`guest` and "3.2"), and nothing in the data
tells 3.2.1 from 3.2: `--source-version 3.2.1` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import ManagerVersionUnknown
from core.model import (
    EVENTS_INDEX,
    LOGSTASH_PREFIX,
    STORAGE_INDEX,
    Doc,
    Version,
    metadata_version,
    parse_version,
)

if TYPE_CHECKING:  # only annotations: a command that reads no server never imports the client
    from core.search import SearchSession

__all__ = [
    "Evidence",
    "VersionReading",
    "ManagerFacts",
    "RELEASES",
    "parse_release",
    "read_version",
    "inspect_manager",
]

V32, V33, V34 = Version.V3_2, Version.V3_3, Version.V3_4

RELEASES = ("3.2", "3.2.1", "3.3", "3.4")
"""What `--source-version` takes: the versions, and 3.2.1 (the 3.2.1 snapshots tool's agents)."""


def parse_release(text: str) -> tuple[Version, str]:
    """"3.2.1" → (3.2, "3.2.1"); "3.3" → (3.3, "3.3"). Raises UnsupportedVersion."""
    version = parse_version(text, "--source-version")
    release = "3.2.1" if text.strip() == "3.2.1" else version.value
    return version, release


@dataclass(frozen=True)
class Evidence:
    """One fact of the manager's data and the versions it allows."""

    fact: str
    versions: tuple[Version, ...]

    def __str__(self) -> str:
        return f"{self.fact} ({', '.join(v.value for v in self.versions)})"


@dataclass(frozen=True)
class VersionReading:
    """The version and what it was read from (`given`: the operator's `--source-version`)."""

    version: Version
    release: str
    evidence: tuple[Evidence, ...]
    given: bool = False

    def describe(self) -> str:
        """One line: "source version 3.2, read from: …" or "… as given (--source-version)"."""
        facts = "; ".join(str(e) for e in self.evidence)
        if self.given:
            disagree = [str(e) for e in self.evidence if self.version not in e.versions]
            text = f"source version {self.release}, as given (--source-version)"
            return text + (f"; the data says otherwise: {'; '.join(disagree)}" if disagree else "")
        return f"source version {self.release}, read from: {facts}"


@dataclass(frozen=True)
class ManagerFacts:
    """What a job needs to know about a live manager before reading it."""

    reading: VersionReading
    has_cloudify_events: bool
    """The server has an index named exactly `cloudify_events` (§2)."""
    provider_context: Doc | None = field(default=None, repr=False)

    @property
    def version(self) -> Version:
        return self.reading.version

    @property
    def release(self) -> str:
        return self.reading.release

    @property
    def events_index(self) -> str:
        """`cloudify_events` if it exists, else `logstash-*` (§4)."""
        return EVENTS_INDEX if self.has_cloudify_events else f"{LOGSTASH_PREFIX}*"

    @property
    def metadata(self) -> dict[str, Any]:
        # the 3.2 tool always wrote true, and "3.2" even on 3.2.1 (§2)
        has_events = True if self.version == V32 else self.has_cloudify_events
        return {"has_cloudify_events": has_events, "snapshot_version": metadata_version(self.version)}


def _first(client: SearchSession, doc_type: str) -> tuple[str, Doc] | None:
    scan = client.scan(STORAGE_INDEX, [doc_type], page_size=1)
    try:
        hit = next(scan, None)
    finally:
        scan.close()  # clears the scroll
    return None if hit is None else (hit["_id"], hit["_source"])


def _field_evidence(
    client: SearchSession, doc_type: str, name: str, without: Sequence[Version], with_: Sequence[Version]
) -> Evidence | None:
    first = _first(client, doc_type)
    if first is None:
        return None
    doc_id, doc = first
    if name in doc:
        return Evidence(f"{doc_type} {doc_id} has {name}", tuple(with_))
    return Evidence(f"{doc_type} {doc_id} has no {name}", tuple(without))


def collect_evidence(client: SearchSession) -> list[Evidence]:
    """Every fact of the table in the module docstring that the manager's data shows."""
    evidence: list[Evidence] = []
    if client.index_exists(EVENTS_INDEX):
        evidence.append(Evidence(f"an index named {EVENTS_INDEX}", (V32,)))
    if client.index_exists(f"{LOGSTASH_PREFIX}*"):
        evidence.append(Evidence(f"daily {LOGSTASH_PREFIX}* event indices", (V33, V34)))
    types = {t for (_, t), n in client.logical_indices(STORAGE_INDEX).items() if n > 0}
    for doc_type, name, without, with_ in (
        ("blueprint", "main_file_name", (V32,), (V33, V34)),
        ("deployment", "scaling_groups", (V32, V33), (V34,)),
        ("node", "min_number_of_instances", (V32, V33), (V34,)),
    ):
        if doc_type in types:
            found = _field_evidence(client, doc_type, name, without, with_)
            if found is not None:
                evidence.append(found)
    for doc_type, versions in (
        ("plugin", (V33, V34)),
        ("snapshot", (V33, V34)),
        ("deployment_update", (V34,)),
    ):
        if doc_type in types:
            evidence.append(Evidence(f"{doc_type} documents", versions))
    return evidence


def read_version(client: SearchSession, given: str | None = None) -> VersionReading:
    """The manager's version (see the module docstring). `given`: the operator's
    `--source-version` ("3.2", "3.2.1", "3.3", "3.4"), taken as given. Raises
    `ManagerVersionUnknown` when the facts fit no single version, or there are none."""
    evidence = tuple(collect_evidence(client))
    if given is not None:
        version, release = parse_release(given)
        return VersionReading(version, release, evidence, given=True)
    if not evidence:
        raise ManagerVersionUnknown("nothing in its data tells its version", [])
    fits = [v for v in Version if all(v in e.versions for e in evidence)]
    if not fits:
        raise ManagerVersionUnknown(
            "its data points at different versions", [str(e) for e in evidence]
        )
    return VersionReading(fits[0], fits[0].value, evidence)


def inspect_manager(client: SearchSession, given: str | None = None) -> ManagerFacts:
    """Version (with its evidence), events index and provider context of the manager."""
    return ManagerFacts(
        reading=read_version(client, given),
        has_cloudify_events=client.index_exists(EVENTS_INDEX),
        provider_context=client.get(STORAGE_INDEX, "provider_context", "CONTEXT"),
    )
