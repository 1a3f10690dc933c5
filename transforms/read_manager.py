"""Read a live manager's state as PCollections: its documents, its file tree, its agent keys.

    ReadFromSearch per source (parts planned by the server: slices, or shards on 1.x) ──▶ hits
    hits ──DropExcluded──▶ the hits a snapshot keeps (§4)
    folders ──ListFileTree──▶ ArchiveMember(name, source=path) for every file (§1)
    hits ──CollectAgentKeys──▶ ArchiveMember("snapshot-credentials/<dep>_<node>/agent_key", ...)

Only part descriptions and paths are shuffled; documents flow fused from the scroll into the next
steps. Search-server clients live in `setup()`/`teardown()`. Counters (namespace `cfysnap.read`,
`cfysnap.dropped`, one per "index/type") let the job reconcile what it read with what it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import apache_beam as beam

from core.archive import CREDENTIALS_PREFIX, unsafe_member_reason
from core.errors import JobFailed, UnsafePath
from core.model import STORAGE_INDEX, Hit, credentials_dir_name, is_compute_node
from core.search import SearchTarget
from transforms.search_io import READ_NAMESPACE, ReadFromSearch
from transforms.shards import ArchiveMember

__all__ = [
    "Source",
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

DROPPED_NAMESPACE = "cfysnap.dropped"


Source = tuple[str, tuple[str, ...] | None]
"""(logical index or pattern, types to read or None for all)."""


def _count_key(hit: Hit) -> str:
    return f"{hit['_index']}/{hit['_type']}"


class ReadManagerDocuments(beam.PTransform):
    """PBegin → every document of `sources` (logical index or pattern, types or None) as
    es_data hits `{"_index","_type","_id","_score": 0.0,"_source"}`: one `ReadFromSearch` per
    source, split by the server (`parallelism` slices, or its shards on 1.x/2.x), flattened.
    Reads are counted per "index/type" (`cfysnap.read`)."""

    def __init__(
        self,
        target: SearchTarget,
        sources: Sequence[Source],
        *,
        parallelism: int,
        page_size: int = 1000,
    ) -> None:
        super().__init__()
        self._target, self._sources = target, list(sources)
        self._parallelism, self._page_size = parallelism, page_size

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Hit]:
        reads = [
            pbegin
            | f"Read {index}" >> ReadFromSearch(
                self._target,
                index,
                types,
                parallelism=self._parallelism,
                page_size=self._page_size,
                counter_namespace=READ_NAMESPACE,
            )
            for index, types in self._sources
        ]
        return reads | "AllDocuments" >> beam.Flatten()


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
