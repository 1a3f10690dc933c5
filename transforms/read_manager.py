"""Read a live manager's state as PCollections: its documents, its file tree, its agent keys.

    ScrollUnits ──Reshuffle──▶ ScrollSlice (one slice of a sliced scroll per element) ──▶ hits
    hits ──DropExcluded──▶ the hits a snapshot keeps (§4)
    folders ──ListFileTree──▶ ArchiveMember(name, source=path) for every file (§1)
    hits ──CollectAgentKeys──▶ ArchiveMember("snapshot-credentials/<dep>_<node>/agent_key", ...)

Only slice numbers and paths are shuffled; documents flow fused from the scroll into the next
steps. Search-server clients live in `setup()`/`teardown()`. Counters (namespace `cfysnap.read`,
`cfysnap.dropped`, one per "index/type") let the job reconcile what it read with what it wrote.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam

from pipelines.errors import JobFailed, UnsafePath
from pipelines.io.archive import CREDENTIALS_PREFIX, unsafe_member_reason
from pipelines.model import STORAGE_INDEX, Hit, credentials_dir_name, is_compute_node
from transforms.shards import ArchiveMember

__all__ = [
    "ScrollUnit",
    "Source",
    "scroll_units",
    "ReadManagerDocuments",
    "DropExcluded",
    "is_excluded",
    "ListFileTree",
    "list_file_tree",
    "CollectAgentKeys",
    "agent_key_member",
    "READ_NAMESPACE",
    "DROPPED_NAMESPACE",
]

READ_NAMESPACE = "cfysnap.read"
DROPPED_NAMESPACE = "cfysnap.dropped"


@dataclass(frozen=True)
class ScrollUnit:
    """One slice of a sliced scroll over a logical index (or pattern)."""

    index: str
    doc_types: tuple[str, ...] | None
    """Only these types (None: every type of the index)."""
    slice_id: int
    max_slices: int


Source = tuple[str, tuple[str, ...] | None]
"""(logical index or pattern, types to read or None for all)."""


def scroll_units(sources: Sequence[Source], slices: int) -> list[ScrollUnit]:
    """`slices` units per source: together they cover every document exactly once."""
    if slices < 1:
        raise ValueError("slices must be at least 1")
    return [ScrollUnit(index, types, s, slices) for index, types in sources for s in range(slices)]


def _count_key(hit: Hit) -> str:
    return f"{hit['_index']}/{hit['_type']}"


class _ScrollSliceFn(beam.DoFn):
    """ScrollUnit → logical hits `{"_index","_type","_id","_score","_source"}` (es_data shape)."""

    def __init__(self, url: str, layout: Any, page_size: int) -> None:
        self._url, self._layout, self._page_size = url, layout, page_size

    def setup(self) -> None:
        from pipelines.io.search import SearchClient

        self._client = SearchClient(self._url, layout=self._layout)

    def process(self, unit: ScrollUnit) -> Iterator[Hit]:
        counts: Counter[str] = Counter()
        slicing = unit.max_slices > 1
        for hit in self._client.scan(
            unit.index,
            list(unit.doc_types) if unit.doc_types else None,
            slice_id=unit.slice_id if slicing else None,
            max_slices=unit.max_slices if slicing else None,
            page_size=self._page_size,
        ):
            counts[_count_key(hit)] += 1
            yield {
                "_index": hit["_index"],
                "_type": hit["_type"],
                "_id": hit["_id"],
                "_score": 0.0,
                "_source": hit["_source"],
            }
        for key, n in counts.items():
            beam.metrics.Metrics.counter(READ_NAMESPACE, key).inc(n)

    def teardown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class ReadManagerDocuments(beam.PTransform):
    """PBegin → every document of `sources` (logical index or pattern, types or None) as
    es_data hits.

    Sliced scroll: `slices` slices per source, spread over workers (only the slice numbers are
    shuffled). Each hit carries `_score` 0.0 like the scan helper's hits in 3.x snapshots.
    """

    def __init__(
        self,
        url: str,
        sources: Sequence[Source],
        *,
        slices: int,
        layout: Any = None,
        page_size: int = 1000,
    ) -> None:
        super().__init__()
        self._units = scroll_units(sources, slices)
        self._url, self._layout, self._page_size = url, layout, page_size

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Hit]:
        return (
            pbegin
            | "ScrollUnits" >> beam.Create(self._units)
            | "SpreadSlices" >> beam.Reshuffle()
            | "ScrollSlice" >> beam.ParDo(_ScrollSliceFn(self._url, self._layout, self._page_size))
        )


# ------------------------------------------------------------------------------- exclusions
def is_excluded(hit: Hit, types: frozenset[str], storage_ids: frozenset[str]) -> bool:
    """§4: storage docs of an excluded type, or whose `_id` is the running create's execution."""
    if hit["_index"] != STORAGE_INDEX:
        return False
    return hit["_type"] in types or hit["_id"] in storage_ids


class _DropExcludedFn(beam.DoFn):
    def __init__(self, types: frozenset[str], storage_ids: frozenset[str]) -> None:
        self._types, self._ids = types, storage_ids

    def process(self, hit: Hit) -> Iterator[Hit]:
        if is_excluded(hit, self._types, self._ids):
            beam.metrics.Metrics.counter(DROPPED_NAMESPACE, _count_key(hit)).inc()
            return
        yield hit


class DropExcluded(beam.PTransform):
    """hits → hits minus storage docs of `types` and storage docs whose `_id` is in `storage_ids`.

    Every dropped hit is counted (`cfysnap.dropped`, "index/type"), never silently lost.
    """

    def __init__(self, types: Sequence[str], storage_ids: Sequence[str] = ()) -> None:
        super().__init__()
        self._types, self._ids = frozenset(types), frozenset(storage_ids)

    def expand(self, hits: beam.PCollection[Hit]) -> beam.PCollection[Hit]:
        return hits | "DropExcludedDocs" >> beam.ParDo(_DropExcludedFn(self._types, self._ids))


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
            | "FileServerFolders" >> beam.Create(self._folders)
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


class CollectAgentKeys(beam.PTransform):
    """hits → one credentials `ArchiveMember` per Compute node that names an agent key (§1, §6.4)."""

    def expand(self, hits: beam.PCollection[Hit]) -> beam.PCollection[ArchiveMember]:
        return hits | "AgentKeyOfComputeNode" >> beam.FlatMap(
            lambda hit: [m] if (m := agent_key_member(hit)) is not None else []
        )
