"""`BulkLoad`: write numbered hits to the search server in batches, every item checked.

Element shapes: in `(line, hit)` — the hit's es_data line number and a logical hit
`{"_index", "_type", "_id", "_source"}`; out `LoadedBatch` — one per acknowledged batch.

Contracts (STYLE principle 7):
- the client is made in `setup()` and closed in `teardown()`;
- each hit is serialised once (`SearchClient.bulk_entry`): those bytes bound the batch and are
  the request body. A batch is bounded by `max_docs` documents AND `max_bytes` of request body
  (a single larger document goes alone);
- batches are sent by one sender thread, so the next batch is built while the server indexes
  the previous one; at most `in_flight` batches wait for the server, and `finish_bundle()`
  flushes the last partial batch and waits until every batch of the bundle is acknowledged
  (a bundle that did not fail has written, checked and journaled all its documents);
- every document keeps its `_id` (action `index`), so a resent batch overwrites, never duplicates;
- the client resends only items (or requests) that failed with 429 or 5xx, with exponential
  backoff; any other failed item fails the bundle with `BulkLoadError` naming the documents;
- after a batch is fully acknowledged it is appended to the `Journal` (if given), then emitted.
Memory: `in_flight` + 1 batches.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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

__all__ = ["BulkLoad", "LoadedBatch", "NumberedHit", "line_ranges", "batch_digest", "key_digest"]

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
    return key_digest([(h["_index"], h["_type"], h["_id"]) for h in hits])


def key_digest(keys: list[tuple[str, str, str]]) -> str:
    """`batch_digest` from (index, type, id) keys."""
    joined = sorted(f"{i}\x00{t}\x00{d}" for i, t, d in keys)
    return hashlib.sha256("\x01".join(joined).encode()).hexdigest()


class _BulkLoadFn(beam.DoFn):
    def __init__(
        self,
        client_factory: Any,
        max_docs: int,
        max_bytes: int,
        journal: Journal | None,
        in_flight: int,
    ) -> None:
        self._factory = client_factory
        self._max_docs, self._max_bytes = max_docs, max_bytes
        self._journal = journal
        self._in_flight = in_flight
        self._loaded = beam.metrics.Metrics.counter("cfysnap", "documents_loaded")
        self._batches = beam.metrics.Metrics.counter("cfysnap", "batches_loaded")

    def setup(self) -> None:
        self._client = self._factory()
        # one sender thread: the next batch is parsed and serialised while the server indexes
        # the previous one (socket waits release the GIL)
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cfysnap-bulk")

    def start_bundle(self) -> None:
        self._lines: list[int] = []
        self._entries: list[Any] = []
        self._size = 0
        self._pending: deque[Future[LoadedBatch]] = deque()

    def process(self, element: NumberedHit) -> Iterator[LoadedBatch]:
        line, hit = element
        entry = self._client.bulk_entry(hit)  # serialised once: size bound and request body
        if self._entries and (
            len(self._entries) >= self._max_docs or self._size + entry.size > self._max_bytes
        ):
            yield from self._submit()
        self._lines.append(line)
        self._entries.append(entry)
        self._size += entry.size

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._entries:
            for batch in self._submit():
                yield WindowedValue(batch, MIN_TIMESTAMP, (GlobalWindow(),))
        while self._pending:  # the bundle ends only when every batch is acknowledged
            yield WindowedValue(self._acknowledged(), MIN_TIMESTAMP, (GlobalWindow(),))

    def _submit(self) -> Iterator[LoadedBatch]:
        """Hand the current batch to the sender; yield batches already acknowledged. At most
        `in_flight` batches wait for the server, so memory stays a few batches."""
        entries, lines, nbytes = self._entries, self._lines, self._size
        self._entries, self._lines, self._size = [], [], 0
        while len(self._pending) >= self._in_flight:
            yield self._acknowledged()
        self._pending.append(self._sender.submit(self._send, entries, lines, nbytes))
        while self._pending and self._pending[0].done():
            yield self._acknowledged()

    def _acknowledged(self) -> LoadedBatch:
        """The oldest batch once the server acknowledged it (re-raises the sender's
        BulkLoadError); Beam counters are updated here, on the bundle's thread."""
        batch = self._pending.popleft().result()
        self._loaded.inc(batch.documents)
        self._batches.inc()
        return batch

    def _send(self, entries: list[Any], lines: list[int], nbytes: int) -> LoadedBatch:
        """Runs on the sender thread: one bulk request, every item checked, then journaled."""
        result = self._client.bulk_entries(entries)
        keys = [(e.index, e.doc_type, e.doc_id) for e in entries]
        if result.failed:
            raise BulkLoadError([item.as_tuple() for item in result.failed])
        if result.succeeded != len(entries):  # every item must be accounted for
            raise BulkLoadError([(i, t, d, 0, "not acknowledged") for i, t, d in keys])
        counts = Counter(f"{i}/{t}" for i, t, _ in keys)
        batch = LoadedBatch(line_ranges(lines), tuple(sorted(counts.items())), key_digest(keys), nbytes)
        if self._journal is not None:
            self._journal.append(
                {
                    "event": "batch",
                    "digest": batch.digest,
                    "lines": [list(r) for r in batch.lines],
                    "counts": dict(batch.counts),
                }
            )
        progress.report(len(entries), nbytes)
        return batch

    def teardown(self) -> None:
        sender = getattr(self, "_sender", None)
        if sender is not None:
            sender.shutdown(wait=True, cancel_futures=True)
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
        max_docs: int = 2000,
        max_bytes: int = 8_000_000,
        journal: Journal | None = None,
        in_flight: int = 1,
    ) -> None:
        super().__init__()
        if max_docs < 1 or max_bytes < 1 or in_flight < 1:
            raise ValueError("BulkLoad: max_docs, max_bytes and in_flight must be positive")
        self._fn = _BulkLoadFn(client_factory, max_docs, max_bytes, journal, in_flight)

    def expand(self, hits: beam.PCollection[NumberedHit]) -> beam.PCollection[LoadedBatch]:
        return hits | "BulkIndex" >> beam.ParDo(self._fn)
