"""Load a generated manager into a real search server and file-server folder, in the shape a real
manager's bootstrap gives its search server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from core.model import (
    EVENTS_INDEX,
    INDEX_SETTINGS,
    STORAGE_INDEX,
    Hit,
    Version,
    storage_mappings,
)
from core.search import SearchSession
from pipelines.sample.generate import ManagerSpec, manager_hits, provider_context, write_file_tree

__all__ = ["install_manager", "load_manager", "load_empty_manager"]


def install_manager(client: SearchSession, version: Version) -> None:
    """Give the server the indices a `version` manager's bootstrap creates, if it lacks them.

    Typed servers (Elasticsearch ≤ 6, as on every 3.x manager): `cloudify_storage` with the
    manager's settings and mapping types (`model.storage_mappings`), and for 3.2, whose events
    went to `cloudify_events`, that index with the same settings and no mapping (spec §4).
    Daily `logstash-*` indices are created by the first event written to them, as logstash does.
    Typeless servers (the `<index>-<type>` layout of Elasticsearch ≥ 7) need nothing up front:
    each physical index is created with its first document.
    An index that exists is kept as it is.
    """
    from core.search import Layout

    if client.layout is not Layout.TYPED:
        return
    indices = {STORAGE_INDEX: {"settings": INDEX_SETTINGS, "mappings": storage_mappings(version)}}
    if version == Version.V3_2:
        indices[EVENTS_INDEX] = {"settings": INDEX_SETTINGS}
    for name, body in indices.items():
        status, _ = client.request("HEAD", f"/{name}", ok=(404,))
        if status == 404:
            client.request("PUT", f"/{name}", body)
    client.request("GET", "/_cluster/health", params={"wait_for_status": "yellow", "timeout": "60s"})


def _load(client: SearchSession, hits: Iterator[Hit]) -> dict[tuple[str, str], int]:
    counts: Counter[tuple[str, str]] = Counter()

    def counted() -> Iterator[Hit]:
        for hit in hits:
            counts[(hit["_index"], hit["_type"])] += 1
            yield hit

    client.bulk_all(counted(), refresh=True).raise_on_failure()
    return dict(counts)


def load_manager(spec: ManagerSpec, client: SearchSession, fs_root: Path) -> dict[tuple[str, str], int]:
    """Make `client`'s server hold `spec`'s manager: its indices (`install_manager`), then
    `manager_hits(spec)` bulk-indexed (original ids, so loading twice overwrites rather than
    duplicates) and refreshed; the file server written under `fs_root` and agent keys at
    `spec.keys_dir`.

    `client` is a `core.search.SearchClient`. Raises `BulkLoadError` if any document
    failed. Returns the number of docs sent per (index, type). Streams: memory is one bulk chunk.
    """
    install_manager(client, spec.version)
    counts = _load(client, manager_hits(spec))
    write_file_tree(spec, Path(fs_root), Path(spec.keys_dir))
    return counts


def load_empty_manager(
    version: Version, client: SearchSession, fs_root: Path | None = None, *, seed: int = 0
) -> dict[tuple[str, str], int]:
    """A freshly bootstrapped `version` manager: its indices and its provider context, nothing
    else; the file-server root (if given) exists. The target of a restore."""
    install_manager(client, version)
    spec = ManagerSpec(version=version, seed=seed)
    context = {"_index": STORAGE_INDEX, "_type": "provider_context", "_id": "CONTEXT",
               "_source": provider_context(spec)}
    counts = _load(client, iter([context]))
    if fs_root is not None:
        Path(fs_root).mkdir(parents=True, exist_ok=True)
    return counts
