"""`BulkLoad`: write numbered hits to the search server in batches, every item checked.

Element shapes: in `(line, hit)` — the hit's es_data line number and a logical hit
`{"_index", "_type", "_id", "_source"}`; out `LoadedBatch` — one per acknowledged batch.

Contracts (STYLE principle 7):
- the client is made in `setup()` and closed in `teardown()`;
- a batch is bounded by `max_docs` documents AND `max_bytes` of JSON source (a single larger
  document goes alone), and the last partial batch of a bundle is flushed in `finish_bundle()`;
- every document keeps its `_id` (action `index`), so a resent batch overwrites, never duplicates;
- the client resends only items (or requests) that failed with 429 or 5xx, with exponential
  backoff; any other failed item fails the bundle with `BulkLoadError` naming the documents;
- after a batch is fully acknowledged it is appended to the `Journal` (if given), then emitted.
Memory: one batch.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import progress
from pipelines.errors import BulkLoadError
from pipelines.journal import Journal
from pipelines.model import Hit

__all__ = ["BulkLoad", "LoadedBatch", "NumberedHit", "line_ranges", "batch_digest"]

NumberedHit = tuple[int, Hit]


@dataclass(frozen=True)
class LoadedBatch:
    """One acknowledged bulk batch: its es_data line ranges, counts per "index/type", digest."""

    lines: tuple[tuple[int, int], ...]
    counts: tuple[tuple[str, int], ...]
    digest: str
    nbytes: int

    @property
    def documents(self) -> int:
        return sum(n for _, n in self.counts)


def line_ranges(lines: list[int]) -> tuple[tuple[int, int], ...]:
    """Sorted line numbers as merged `(first, last)` ranges."""
    ranges: list[tuple[int, int]] = []
    for line in sorted(lines):
        if ranges and line <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], line))
        else:
            ranges.append((line, line))
    return tuple(ranges)


def batch_digest(hits: list[Hit]) -> str:
    """sha256 of the batch's sorted target keys: the batch's identity in the journal."""
    keys = sorted(f"{h['_index']}\x00{h['_type']}\x00{h['_id']}" for h in hits)
    return hashlib.sha256("\x01".join(keys).encode()).hexdigest()


class _BulkLoadFn(beam.DoFn):
    def __init__(
        self,
        client_factory: Any,
        max_docs: int,
        max_bytes: int,
        journal: Journal | None,
    ) -> None:
        self._factory = client_factory
        self._max_docs, self._max_bytes = max_docs, max_bytes
        self._journal = journal
        self._loaded = beam.metrics.Metrics.counter("cfysnap", "documents_loaded")
        self._batches = beam.metrics.Metrics.counter("cfysnap", "batches_loaded")

    def setup(self) -> None:
        self._client = self._factory()

    def start_bundle(self) -> None:
        self._lines: list[int] = []
        self._hits: list[Hit] = []
        self._size = 0

    def process(self, element: NumberedHit) -> Iterator[LoadedBatch]:
        line, hit = element
        size = len(json.dumps(hit["_source"]))
        if self._hits and (
            len(self._hits) >= self._max_docs or self._size + size > self._max_bytes
        ):
            yield self._flush()
        self._lines.append(line)
        self._hits.append(hit)
        self._size += size

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._hits:
            yield WindowedValue(self._flush(), MIN_TIMESTAMP, (GlobalWindow(),))

    def _flush(self) -> LoadedBatch:
        hits, lines, nbytes = self._hits, self._lines, self._size
        self._hits, self._lines, self._size = [], [], 0
        result = self._client.bulk(hits)
        if result.failed:
            raise BulkLoadError([item.as_tuple() for item in result.failed])
        if result.succeeded != len(hits):  # every item must be accounted for
            raise BulkLoadError(
                [(h["_index"], h["_type"], h["_id"], 0, "not acknowledged") for h in hits]
            )
        counts = Counter(f"{h['_index']}/{h['_type']}" for h in hits)
        batch = LoadedBatch(
            line_ranges(lines), tuple(sorted(counts.items())), batch_digest(hits), nbytes
        )
        if self._journal is not None:
            self._journal.append(
                {
                    "event": "batch",
                    "digest": batch.digest,
                    "lines": [list(r) for r in batch.lines],
                    "counts": dict(batch.counts),
                }
            )
        self._loaded.inc(len(hits))
        self._batches.inc()
        progress.report(len(hits), nbytes)
        return batch

    def teardown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class BulkLoad(beam.PTransform):
    """`(line, hit)` → `LoadedBatch`: bulk-index every hit with its `_id`, batches bounded by
    `max_docs` and `max_bytes`, every response item checked, each batch journaled.

    `client_factory` is a picklable zero-argument callable returning a `SearchClient` (called
    in `setup()` on each worker)."""

    def __init__(
        self,
        client_factory: Any,
        *,
        max_docs: int = 1000,
        max_bytes: int = 5_000_000,
        journal: Journal | None = None,
    ) -> None:
        super().__init__()
        if max_docs < 1 or max_bytes < 1:
            raise ValueError("BulkLoad: max_docs and max_bytes must be positive")
        self._fn = _BulkLoadFn(client_factory, max_docs, max_bytes, journal)

    def expand(self, hits: beam.PCollection[NumberedHit]) -> beam.PCollection[LoadedBatch]:
        return hits | "BulkIndex" >> beam.ParDo(self._fn)
