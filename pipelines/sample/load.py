"""Load a generated manager into a real search server and file-server folder."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.errors import BulkLoadError
from pipelines.model import Hit
from pipelines.sample.generate import ManagerSpec, manager_hits, write_file_tree

__all__ = ["load_manager"]


def load_manager(spec: ManagerSpec, client: Any, fs_root: Path) -> dict[tuple[str, str], int]:
    """Make `client`'s server hold `spec`'s manager: `manager_hits(spec)` bulk-indexed (original
    ids, so loading twice overwrites rather than duplicates) and refreshed; the file server
    written under `fs_root` and agent keys at `spec.keys_dir`.

    `client` is a `pipelines.io.search.SearchClient` (anything with its `bulk_all`). Raises
    `BulkLoadError` if any document failed. Returns the number of docs sent per (index, type).
    Streams: memory is one bulk chunk.
    """
    counts: Counter[tuple[str, str]] = Counter()

    def counted() -> Iterator[Hit]:
        for hit in manager_hits(spec):
            counts[(hit["_index"], hit["_type"])] += 1
            yield hit

    result = client.bulk_all(counted(), refresh=True)
    if result.failed:
        raise BulkLoadError([item.as_tuple() if hasattr(item, "as_tuple") else tuple(item)
                             for item in result.failed])
    write_file_tree(spec, Path(fs_root), Path(spec.keys_dir))
    return dict(counts)
