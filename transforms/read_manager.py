"""Read a live manager's state as PCollections: its documents, its file tree, its agent keys.

    sources ──ReadAllFromSearch (parts planned by the server: slices, or shards on 1.x)──▶ pages
    pages ──ToSnapshotParts──▶ lines: es_data lines of the documents a snapshot keeps (§4)
                             facts: (deployment id, agent fact) for agents.json (§3)
                             keys: ArchiveMember("snapshot-credentials/<dep>_<node>/agent_key")
    folders ──ListFileTree──▶ ArchiveMember(name, source=path) for every file (§1)

Only part descriptions and paths are shuffled; documents flow fused from the scroll into the next
steps. Search-server clients live in `setup()`/`teardown()`. Counters (namespace `cfysnap.read`,
`cfysnap.dropped`, one per "index/type") let the job reconcile what it read with what it wrote.
"""

from __future__ import annotations

import operator
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import msgspec

from core.archive import CREDENTIALS_PREFIX, es_data_page, unsafe_member_reason
from core.errors import JobFailed, UnsafePath
from core.model import STORAGE_INDEX, Hit, credentials_dir_name, is_compute_node
from core.read_ahead import whole_reads
from core.search import RawHit, RawPage, SearchTarget
from transforms._beam import Values
from transforms.agents import page_agent_facts
from transforms.search_io import READ_NAMESPACE, ReadAllFromSearch
from transforms.shards import ArchiveMember, LinePage

__all__ = [
    "Source",
    "ReadManagerDocuments",
    "ToSnapshotParts",
    "SnapshotParts",
    "node_hits",
    "is_excluded",
    "ListFileTree",
    "list_file_tree",
    "agent_key_member",
    "READ_NAMESPACE",
    "DROPPED_NAMESPACE",
]

DROPPED_NAMESPACE = "cfysnap.dropped"
_JSON_DECODE = msgspec.json.decode


Source = tuple[str, tuple[str, ...] | None]
"""(logical index or pattern, types to read or None for all)."""


_INDEX = operator.attrgetter("index")


class ReadManagerDocuments(beam.PTransform):
    """PBegin → every document of `sources` (logical index or pattern, types or None) as
    es_data hits `{"_index","_type","_id","_score": 0.0,"_source"}`, or (`pages=True`) as scroll
    pages of `RawHit`s: the sources' reads in one `ReadAllFromSearch` chain, each split by the
    server (`parallelism` slices, or its shards on 1.x/2.x). Reads are counted per "index/type"
    (`cfysnap.read`)."""

    def __init__(self, target: SearchTarget, sources: Sequence[Source], **read: Any) -> None:
        """`read`: `ReadAllFromSearch`'s keywords (`parallelism`, `page_size`, `pages`, …)."""
        super().__init__()
        self._reads = whole_reads(sources)
        self._read_all = ReadAllFromSearch(target, counter_namespace=READ_NAMESPACE, **read)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Any]:
        # no Reshuffle of these few descriptions (Create's default for more than one): it was
        # two more stages; ReadAllFromSearch spreads the planned parts itself where it pays
        sources = Values(self._reads)
        return pbegin | "Sources" >> sources | "ReadAll" >> self._read_all


# ------------------------------------------------------------------------------- exclusions
def is_excluded(hit: Hit, types: frozenset[str], storage_ids: frozenset[str]) -> bool:
    """§4: storage docs of an excluded type, or whose `_id` is the running create's execution."""
    if hit["_index"] != STORAGE_INDEX:
        return False
    return hit["_type"] in types or hit["_id"] in storage_ids


@dataclass(frozen=True)
class SnapshotParts:
    """What `ToSnapshotParts` makes of the scroll pages: es_data `lines` (`LinePage`s), agent
    `facts` (a page's (deployment id, encoded fact) pairs as one list, for `BuildAgentsJson`:
    one element a page, not one a fact) and agent `keys`
    (credentials `ArchiveMember`s; empty unless asked for)."""

    lines: beam.PCollection
    facts: beam.PCollection
    keys: beam.PCollection


class _SnapshotPartsFn(beam.DoFn):
    """One pass over a page: its lines, its agent facts, its agent keys (tagged outputs)."""

    def __init__(self, types: frozenset[str], storage_ids: frozenset[str], keys: bool) -> None:
        self._types, self._ids, self._keys = types, storage_ids, keys

    def process(self, page: RawPage | list[RawHit]) -> Iterator[Any]:
        types, ids = self._types, self._ids
        kept: list[RawHit] = page
        dropped: list[RawHit] = []
        # only storage documents are ever left out or give facts and keys: a page of events
        # and logs goes through without a loop over its hits
        storage = STORAGE_INDEX in map(_INDEX, page)
        if storage:
            kept = []
            for hit in page:
                excluded = hit.index == STORAGE_INDEX and (hit.type in types or hit.id in ids)
                (dropped if excluded else kept).append(hit)
            if not dropped:
                kept = page
        for key, n in Counter(f"{hit.index}/{hit.type}" for hit in dropped).items():
            beam.metrics.Metrics.counter(DROPPED_NAMESPACE, key).inc(n)
        if kept:
            # a page's own counts (the read counted with them) unless some of it was left out
            # (or it came as a plain list of hits)
            if isinstance(page, RawPage) and kept is page:
                counts = page.counts()
            else:
                counts = RawPage(kept).counts()
            lines = sorted(((index, str(doc_type)), n) for (index, doc_type), n in counts.items())
            yield LinePage(es_data_page(kept), tuple(lines))
        if not storage:
            return
        facts = list(page_agent_facts(page))
        if facts:
            yield beam.pvalue.TaggedOutput("facts", facts)
        if self._keys:
            for node in node_hits(page):
                member = agent_key_member(node)
                if member is not None:
                    yield beam.pvalue.TaggedOutput("keys", member)


class ToSnapshotParts(beam.PTransform):
    """scroll pages → `SnapshotParts`: es_data lines minus storage docs of `types` and storage
    docs whose `_id` is in `storage_ids` (§4); agent facts of deployments, nodes and instances
    (§3); with `keys`, the credentials member of every Compute node naming an agent key (§1,
    §6.4).

    A source goes into its line as the server sent it, never parsed; only node and instance
    sources are decoded, for their facts and keys. Every dropped document is counted
    (`cfysnap.dropped`, "index/type"), never silently lost.
    """

    def __init__(
        self, types: Sequence[str], storage_ids: Sequence[str] = (), *, keys: bool = True
    ) -> None:
        super().__init__()
        self._types, self._ids, self._keys = frozenset(types), frozenset(storage_ids), keys

    def expand(self, pages: beam.PCollection[RawPage | list[RawHit]]) -> SnapshotParts:
        parts = pages | "PageToParts" >> beam.ParDo(
            _SnapshotPartsFn(self._types, self._ids, self._keys)
        ).with_output_types(LinePage).with_outputs("facts", "keys", main="lines")
        return SnapshotParts(parts.lines, parts.facts, parts.keys)


# ------------------------------------------------------------------------------- file tree
def list_file_tree(fs_root: str, folder: str) -> Iterator[ArchiveMember]:
    """Every file under `<fs_root>/<folder>` as a member named `<folder>/<relative path>`.

    A missing folder yields nothing (the manager skipped it too). Symbolic links to files inside
    `fs_root` are copied as files; links leading outside `fs_root`, and links to directories,
    raise `UnsafePath` (nothing outside the file server goes into an archive by accident).
    """
    root = Path(fs_root).resolve()
    base = root / folder
    if not base.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                rel = (here / name).relative_to(root).as_posix()
                raise UnsafePath(rel, "symbolic link to a directory in the file server")
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if root not in target.parents:
                    raise UnsafePath(rel, "symbolic link leads outside the file-server root")
                path = target
            if not path.is_file():
                continue  # sockets, fifos: not files a snapshot can carry
            yield ArchiveMember(rel, source=str(path))


class ListFileTree(beam.PTransform):
    """PBegin → `ArchiveMember`s of the file-server `folders` under `fs_root` (one walk each)."""

    def __init__(self, fs_root: str, folders: Sequence[str]) -> None:
        super().__init__()
        self._root, self._folders = str(fs_root), list(folders)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[ArchiveMember]:
        root = self._root
        return (
            pbegin
            | "FileServerFolders" >> Values(self._folders)
            | "WalkFolder" >> beam.FlatMap(lambda folder: list_file_tree(root, folder))
        )


# -------------------------------------------------------------------------------- agent keys
def agent_key_member(hit: Hit) -> ArchiveMember | None:
    """The credentials member of a Compute node hit with `properties.cloudify_agent.key`.

    `~` in the key path is expanded (as the manager did). Raises `JobFailed` when the key file
    cannot be read: the manager's create failed the same way. Messages name the node and the
    path, never the key's content.
    """
    if hit["_index"] != STORAGE_INDEX or hit["_type"] != "node":
        return None
    node = hit["_source"]
    if not is_compute_node(node):
        return None
    agent = (node.get("properties") or {}).get("cloudify_agent")
    key = agent.get("key") if isinstance(agent, dict) else None
    if not isinstance(key, str) or not key:
        return None
    dir_name = credentials_dir_name(str(node.get("deployment_id")), str(node.get("id")))
    name = f"{CREDENTIALS_PREFIX}{dir_name}/agent_key"
    reason = unsafe_member_reason(name)
    if reason:
        raise UnsafePath(name, reason)
    path = os.path.expanduser(key)
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise JobFailed("create", f"agent key of node {dir_name} is not a readable file: {path}")
    return ArchiveMember(name, source=path)


def node_hits(page: list[RawHit]) -> Iterator[Hit]:
    """The node documents of a scroll page, parsed (the only ones a key can be named in)."""
    for hit in page:
        if hit.type == "node" and hit.index == STORAGE_INDEX:
            yield {"_index": hit.index, "_type": "node", "_id": hit.id,
                   "_source": _JSON_DECODE(hit.source)}
