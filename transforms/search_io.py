"""A Beam IO connector for search servers (Elasticsearch 1.x–9.x, OpenSearch), in the style of
Beam's own IO modules (`apache_beam/io/mongodbio.py`): `ReadFromSearch` and `WriteToSearch`.

    p | ReadFromSearch(SearchTarget(url), "cloudify_storage", parallelism=4) | ...
    reads | ReadAllFromSearch(SearchTarget(url), pages=True) | ...     (ReadPart elements)
    hits | WriteToSearch(SearchTarget(other_url), max_docs=2000)

The server's dialect (request forms of 1.x, 2.x, 5–6, 7–9, OpenSearch; typed or `<index>-<type>`
layout) comes from `core.search.SearchClient`, chosen from the server's version.

`ReadFromSearch` plans its parts on the workers, not when the graph is built: one element per
(index pattern, types) goes to a planning step that asks the server how to split the read
(`SearchClient.partitions`: sliced scroll on Elasticsearch ≥ 5 and OpenSearch, one part per
shard on 1.x/2.x), the parts are spread over workers (only those small descriptions are
shuffled), and each part is read with one scroll (`core.read_ahead.Scroll`, a thread of its
own). The parts of one read cover every document exactly once. Given `ahead=` (the token of a
`core.read_ahead.ReadAhead` started by the job in the process the pipeline runs in), the reads
take that read-ahead's plan, queue and running scrolls instead of starting those parts again.

Output elements are hits in the shape of a 3.x snapshot's es_data line,
`{"_index", "_type", "_id", "_score": 0.0, "_source"}`, with Cloudify's logical index and type
names whatever the server's layout. A Beam counter per "index/type" (namespace given by
`counter_namespace`) counts what was read, so a job can reconcile it with what it wrote.

`WriteToSearch` writes hits (or `(tag, hit)` pairs, `tagged=True`), one an element or a
`HitPage` of them an element (Beam's per-element cost paid a page at a time), with the bulk API:
- each hit is serialised once (`SearchClient.bulk_entry`): those bytes bound the batch and are
  the request body. A batch is bounded by `max_docs` documents AND `max_bytes` of request body
  (a single larger document goes alone);
- batches are sent by one sender thread, so the next batch is built while the server indexes
  the previous one; at most `in_flight` batches wait for the server, and `finish_bundle()`
  flushes the last partial batch and waits until every batch of the bundle is acknowledged (a
  bundle that did not fail has written, and checked, all its documents);
- every document keeps its `_id`, so a resent batch overwrites, never duplicates;
- only items (or requests) that failed with 429 or 5xx are resent, with exponential backoff;
  any other failed item fails the bundle with `BulkLoadError` naming the documents;
- each acknowledged batch is emitted as a `WrittenBatch` (its counts, the digest of its keys,
  the tags of its elements) after `on_batch(batch)`, a picklable callable run on the worker (a
  job's journal, its progress).
Memory: `in_flight` + 1 batches.
"""

from __future__ import annotations

import pickle
import queue
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any  # noqa: UP035 - Beam's type hints take typing's generics

import apache_beam as beam
import msgspec
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.utils.windowed_value import WindowedValue

from core import read_ahead
from core.digests import batch_digest
from core.errors import BulkLoadError
from core.options import spreads_work
from core.read_ahead import DONE, PAGES_PER_SCROLL, Pages, ReadPart, Scroll, plan_parts
from core.search import RawHit, RawPage, SearchTarget
from transforms._beam import in_global_window

__all__ = [
    "ReadFromSearch",
    "ReadAllFromSearch",
    "WriteToSearch",
    "WrittenBatch",
    "HitPage",
    "ReadPart",
    "READ_NAMESPACE",
    "WRITE_NAMESPACE",
]

WRITE_NAMESPACE = "cfysnap.write"
_JSON_DECODE = msgspec.json.decode

READ_NAMESPACE = "cfysnap.read"


class RawHitCoder(beam.coders.Coder):
    """`RawHit`s between stages and workers: msgpack of its four fields, the source's bytes as
    they are. Its size estimate reads only lengths: Beam samples the size of elements it passes
    on by encoding them, and a pickled page of hits cost a tenth of a whole create."""

    def encode(self, hit: RawHit) -> bytes:
        return _PACK((hit.index, hit.type, hit.id, bytes(hit.source)))

    def decode(self, data: bytes) -> RawHit:
        index, doc_type, doc_id, source = _UNPACK(data)
        return RawHit(index, doc_type, doc_id, msgspec.Raw(source))

    def is_deterministic(self) -> bool:
        return True

    def estimate_size(self, hit: RawHit) -> int:
        return 16 + len(hit.index) + len(hit.type or "") + len(hit.id) + len(hit.source)

    def to_type_hint(self) -> Any:
        return RawHit


class RawPageCoder(beam.coders.Coder):
    """`RawPage`s between stages and workers: msgpack of each hit's four fields. Beam samples
    the size of the pages it passes on, even between fused steps, and a page coded as a list
    asked each of its hits for its own estimate: a Python call a document, 0.2 s of a 100k
    create (cProfile). `RawPage.nbytes` sums the sources' lengths in one C-level loop."""

    def encode(self, page: RawPage) -> bytes:
        return _PACK([(hit.index, hit.type, hit.id, bytes(hit.source)) for hit in page])

    def decode(self, data: bytes) -> RawPage:
        return RawPage(
            RawHit(index, doc_type, doc_id, msgspec.Raw(source))
            for index, doc_type, doc_id, source in _UNPACK(data)
        )

    def is_deterministic(self) -> bool:
        return True

    def estimate_size(self, page: RawPage) -> int:
        return page.nbytes

    def to_type_hint(self) -> Any:
        return RawPage


_PACK, _UNPACK = msgspec.msgpack.encode, msgspec.msgpack.decode
beam.coders.registry.register_coder(RawHit, RawHitCoder)
beam.coders.registry.register_coder(RawPage, RawPageCoder)


class HitPage(list):  # type: ignore[type-arg]
    """Hits (or `(tag, hit)` pairs) that go to `WriteToSearch` as one element, in order: Beam's
    bookkeeping of each element it passes on (and its size samples) is paid a page at a time.
    `nbytes`: about how many bytes the page holds, as its maker knows it (what Beam samples)."""

    __slots__ = ("nbytes",)

    def __init__(self, items: Any = (), nbytes: int = 0) -> None:
        super().__init__(items)
        self.nbytes = nbytes


class HitPageCoder(beam.coders.Coder):
    """`HitPage`s between stages and workers: pickled (a hit's source may be a dict or JSON
    bytes, `msgspec.Raw`); its size is the page's own `nbytes`, not a pickling."""

    def encode(self, page: HitPage) -> bytes:
        return pickle.dumps((list(page), page.nbytes), protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> HitPage:
        items, nbytes = pickle.loads(data)  # noqa: S301 - Beam's own elements, between its stages
        return HitPage(items, nbytes)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, page: HitPage) -> int:
        return page.nbytes

    def to_type_hint(self) -> Any:
        return HitPage


beam.coders.registry.register_coder(HitPage, HitPageCoder)


class _PlanPartsFn(beam.DoFn):
    """A `ReadPart` for the whole read → the parts the server splits it into (or those a
    read-ahead in this process planned, `core.read_ahead`)."""

    def __init__(self, target: SearchTarget, parallelism: int, ahead: str | None = None) -> None:
        self._target, self._parallelism, self._ahead = target, parallelism, ahead

    def process(self, whole: ReadPart) -> Iterator[ReadPart]:
        planning = read_ahead.planning_key(self._target, self._parallelism)
        parts = read_ahead.planned(self._ahead, whole, planning)
        yield from parts if parts is not None else plan_parts(self._target, whole, self._parallelism)


class _ReadPartFn(beam.DoFn):
    """`ReadPart`s → their pages (`RawPage`s) or hits, `concurrency` scrolls at a time per
    worker, each page in memory once (at most 3 queued per running scroll)."""

    def __init__(
        self,
        target: SearchTarget,
        page_size: int,
        namespace: str,
        pages: bool,
        concurrency: int,
        page_bytes: int | None = None,
        ahead: str | None = None,
    ) -> None:
        self._target, self._page_size, self._namespace = target, page_size, namespace
        self._page_bytes = page_bytes
        self._pages, self._concurrency = pages, concurrency
        self._ahead = ahead

    def start_bundle(self) -> None:
        # a read-ahead's queue and scrolls, once, by the first bundle (with one worker, the
        # planning step's whole output is one bundle of this step)
        reading = read_ahead.reading_key(
            self._target, self._page_size, self._page_bytes, self._concurrency
        )
        adopted = read_ahead.adopt(self._ahead, reading)
        self._started: frozenset[Any] = frozenset()
        if adopted is not None:
            self._queue, self._running = adopted.pages, adopted.scrolls
            self._started = adopted.started
        else:
            self._running = []
            self._queue = Pages(PAGES_PER_SCROLL * self._concurrency)

    def process(self, part: ReadPart) -> Iterator[Any]:
        if part.key() not in self._started:  # else its pages come through the adopted queue
            scroll = Scroll(self._target, part, self._page_size, self._queue, self._page_bytes)
            scroll.start()
            self._running.append(scroll)
        while len(self._running) >= self._concurrency:
            yield from self._drain_some()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        while self._running:
            for out in self._drain_some():
                yield in_global_window(out)

    def teardown(self) -> None:
        """Scrolls a failed bundle left running (one that failed before it drained any, or
        while its output was being processed) are cancelled: each clears its context."""
        for scroll in getattr(self, "_running", ()):
            scroll.cancel()

    def _drain_some(self) -> Iterator[Any]:
        """Pages of the running scrolls, as they come, until one of them ends."""
        try:
            while True:
                try:  # a timeout: a wait that signals (Ctrl-C) can always interrupt
                    scroll, item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is DONE:
                    self._running.remove(scroll)
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from self._emit(item)
        except BaseException:
            for scroll in self._running:
                scroll.cancel()
            self._running.clear()
            raise

    def _emit(self, page: RawPage) -> Iterator[Any]:
        for (index, doc_type), n in page.counts().items():
            beam.metrics.Metrics.counter(self._namespace, f"{index}/{doc_type}").inc(n)
        if self._pages:
            yield page
            return
        for hit in page:
            yield {
                "_index": hit.index,
                "_type": hit.type,
                "_id": hit.id,
                "_score": 0.0,
                "_source": _JSON_DECODE(hit.source),
            }


class ReadAllFromSearch(beam.PTransform):
    """`ReadPart`s (each a whole read: a logical index or pattern, its types, a query) → every
    document of each, as es_data hits or (`pages=True`) as scroll pages (`RawPage`s): Beam's
    ReadAll pattern (`ReadAllFromText`), for reads known only at run time or several reads in
    one chain (no Flatten of the documents: on the in-process runner a Flatten of two reads
    encodes every page between stages).

    Each read is split by the server (`parallelism` slices, or its shards on 1.x/2.x), the parts
    spread over workers, each part read by one scroll, `concurrency` scrolls at a time per worker.
    """

    def __init__(
        self,
        target: SearchTarget | str,
        *,
        parallelism: int = 2,
        page_size: int = 1000,
        page_bytes: int | None = None,
        pages: bool = False,
        concurrency: int = 2,
        counter_namespace: str = READ_NAMESPACE,
        spread: bool | None = None,
        ahead: str | None = None,
    ) -> None:
        """`spread`: reshuffle the parts over workers; by default, as `core.options.spreads_work`
        says of the pipeline's options (with one worker the parts are read where they were
        planned, in the same stage). `ahead`: the token of a `core.read_ahead.ReadAhead` of
        these reads, started with these keywords in the process the pipeline runs in (its plan
        and its scrolls are adopted; without it in the process, the read is as without)."""
        super().__init__()
        if min(parallelism, page_size, concurrency, 1 if page_bytes is None else page_bytes) < 1:
            raise ValueError(
                "ReadFromSearch: parallelism, page_size, page_bytes and concurrency must be at "
                "least 1"
            )
        self._target = target if isinstance(target, SearchTarget) else SearchTarget(target)
        self._parallelism, self._page_size, self._page_bytes = parallelism, page_size, page_bytes
        self._pages_out, self._concurrency = pages, concurrency
        self._namespace, self._spread, self._ahead = counter_namespace, spread, ahead

    def expand(self, wholes: beam.PCollection[ReadPart]) -> beam.PCollection[Any]:
        read = _ReadPartFn(
            self._target, self._page_size, self._namespace, self._pages_out, self._concurrency,
            self._page_bytes, self._ahead,
        )
        plan = _PlanPartsFn(self._target, self._parallelism, self._ahead)
        parts = wholes | "PlanParts" >> beam.ParDo(plan)
        spread = self._spread
        if spread is None:
            spread = spreads_work(wholes.pipeline.options)
        if spread:
            parts = parts | "SpreadParts" >> beam.Reshuffle()
        return parts | "ReadPart" >> beam.ParDo(read).with_output_types(
            RawPage if self._pages_out else dict[str, Any]
        )

    def display_data(self) -> dict[str, Any]:
        return {
            "server": DisplayDataItem(str(self._target), label="Search server"),
            "parallelism": DisplayDataItem(self._parallelism, label="Parallelism"),
            "page_size": DisplayDataItem(self._page_size, label="Page size"),
            "page_bytes": DisplayDataItem(self._page_bytes or 0, label="Page bytes (0: by hits)"),
        }


class ReadFromSearch(beam.PTransform):
    """PBegin → every document of a logical index (or pattern, e.g. `logstash-*`) as es_data hits,
    or (`pages=True`) as scroll pages: `core.search.RawPage`s of `RawHit`s whose `_source` is
    the server's bytes, parsed by no one until a later step needs it.

    `doc_types`: only these types (None: all). `query`: a query in the server's own DSL (None:
    all documents). The other keywords are `ReadAllFromSearch`'s: `parallelism` (slices to ask a
    sliced-scroll server for; 1.x and 2.x are split by shard instead), `page_size` (hits per
    scroll page), `page_bytes` (fewer hits a page for larger documents, see
    `core.search.SearchClient.scan_pages`), `pages`, `concurrency` (scrolls read at once by each worker),
    `counter_namespace`.
    """

    def __init__(
        self,
        target: SearchTarget | str,
        index: str,
        doc_types: Sequence[str] | None = None,
        *,
        query: Any = None,
        **read: Any,
    ) -> None:
        super().__init__()
        self._whole = ReadPart(index, tuple(doc_types) if doc_types else None, None, query)
        self._read_all = ReadAllFromSearch(target, **read)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Any]:
        return pbegin | "WholeRead" >> beam.Create([self._whole]) | self._read_all

    def display_data(self) -> dict[str, Any]:
        return {
            **self._read_all.display_data(),
            "index": DisplayDataItem(self._whole.index, label="Index"),
            "doc_types": DisplayDataItem(",".join(self._whole.doc_types or ()), label="Types"),
        }


# ------------------------------------------------------------------------------------- write
@dataclass(frozen=True)
class WrittenBatch:
    """One bulk batch the server acknowledged, every item of it."""

    counts: tuple[tuple[str, int], ...]
    """Documents per "index/type"."""
    digest: str
    """`core.digests.batch_digest` of its (index, type, id) keys: the batch's identity."""
    nbytes: int
    """Size of the request body."""
    tags: tuple[Any, ...] = ()
    """The tags of its elements, in order (`WriteToSearch(tagged=True)`)."""

    @property
    def documents(self) -> int:
        return sum(n for _, n in self.counts)


class _WriteFn(beam.DoFn):
    def __init__(
        self,
        target: SearchTarget,
        max_docs: int,
        max_bytes: int,
        op_type: str,
        tagged: bool,
        on_batch: Callable[[WrittenBatch], None] | None,
        in_flight: int,
        namespace: str,
    ) -> None:
        self._target, self._max_docs, self._max_bytes = target, max_docs, max_bytes
        self._op_type, self._tagged, self._on_batch = op_type, tagged, on_batch
        self._in_flight = in_flight
        self._written = beam.metrics.Metrics.counter(namespace, "documents_written")
        self._batches = beam.metrics.Metrics.counter(namespace, "batches_written")

    def setup(self) -> None:
        self._client = self._target.connect()
        self._entry_of = self._client.entry_maker(self._op_type)
        # one sender thread: the next batch is parsed and serialised while the server indexes
        # the previous one (socket waits release the GIL)
        self._sender = ThreadPoolExecutor(max_workers=self._in_flight, thread_name_prefix="cfysnap-bulk")

    def start_bundle(self) -> None:
        self._tags: list[Any] = []
        self._entries: list[Any] = []
        self._size = 0
        self._pending: deque[Future[WrittenBatch]] = deque()

    def process(self, element: Any) -> Iterator[WrittenBatch]:
        # a HitPage (a hit is a dict, a tagged one a tuple); one loop for its items, the
        # per-document work inline (a restore's 100k documents pass here one by one)
        items = element if isinstance(element, list) else (element,)
        entry_of, tagged = self._entry_of, self._tagged
        max_docs, max_bytes = self._max_docs, self._max_bytes
        for item in items:
            tag, hit = item if tagged else (None, item)
            entry = entry_of(hit)  # serialised once
            if self._entries and (
                len(self._entries) >= max_docs or self._size + entry.size > max_bytes
            ):
                yield from self._submit()
            self._tags.append(tag)
            self._entries.append(entry)
            self._size += entry.size

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._entries:
            for batch in self._submit():
                yield in_global_window(batch)
        while self._pending:  # the bundle ends only when every batch is acknowledged
            yield in_global_window(self._acknowledged())

    def _submit(self) -> Iterator[WrittenBatch]:
        """Hand the current batch to the sender; yield batches already acknowledged. At most
        `in_flight` batches wait for the server, so memory stays a few batches."""
        entries, tags, nbytes = self._entries, self._tags, self._size
        self._entries, self._tags, self._size = [], [], 0
        while len(self._pending) >= self._in_flight:
            yield self._acknowledged()
        self._pending.append(self._sender.submit(self._send, entries, tags, nbytes))
        while self._pending and self._pending[0].done():
            yield self._acknowledged()

    def _acknowledged(self) -> WrittenBatch:
        """The oldest batch once the server acknowledged it (re-raises the sender's
        BulkLoadError); Beam counters are updated here, on the bundle's thread."""
        batch = self._pending.popleft().result()
        self._written.inc(batch.documents)
        self._batches.inc()
        return batch

    def _send(self, entries: list[Any], tags: list[Any], nbytes: int) -> WrittenBatch:
        """Runs on the sender thread: one bulk request, every item checked, then `on_batch`."""
        result = self._client.bulk_entries(entries)
        keys = [(e.index, e.doc_type, e.doc_id) for e in entries]
        if result.failed:
            raise BulkLoadError([item.as_tuple() for item in result.failed])
        if result.succeeded != len(entries):  # every item must be accounted for
            raise BulkLoadError([(i, t, d, 0, "not acknowledged") for i, t, d in keys])
        counts = Counter(f"{i}/{t}" for i, t, _ in keys)
        batch = WrittenBatch(
            tuple(sorted(counts.items())),
            batch_digest(keys),
            nbytes,
            tuple(tags) if self._tagged else (),
        )
        if self._on_batch is not None:
            self._on_batch(batch)
        return batch

    def teardown(self) -> None:
        sender = getattr(self, "_sender", None)
        if sender is not None:
            sender.shutdown(wait=True, cancel_futures=True)
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class WriteToSearch(beam.PTransform):
    """hits `{"_index", "_type", "_id", "_source"}` (or `(tag, hit)`, `tagged=True`; or `HitPage`s
    of either) →
    `WrittenBatch`es: every hit written with its `_id` (`op_type` "index" overwrites, "create"
    refuses an existing id), batches bounded by `max_docs` and `max_bytes`, every response item
    checked. See the module docstring for the contracts."""

    def __init__(
        self,
        target: SearchTarget | str,
        *,
        max_docs: int = 1000,
        max_bytes: int = 5_000_000,
        op_type: str = "index",
        tagged: bool = False,
        on_batch: Callable[[WrittenBatch], None] | None = None,
        in_flight: int = 1,
        counter_namespace: str = WRITE_NAMESPACE,
    ) -> None:
        super().__init__()
        if max_docs < 1 or max_bytes < 1 or in_flight < 1:
            raise ValueError("WriteToSearch: max_docs, max_bytes and in_flight must be positive")
        if op_type not in ("index", "create"):
            raise ValueError(f"WriteToSearch: op_type must be 'index' or 'create', not {op_type!r}")
        self._target = target if isinstance(target, SearchTarget) else SearchTarget(target)
        self._max_docs, self._max_bytes, self._op_type = max_docs, max_bytes, op_type
        self._fn = _WriteFn(
            self._target, max_docs, max_bytes, op_type, tagged, on_batch, in_flight,
            counter_namespace,
        )

    def expand(self, hits: beam.PCollection) -> beam.PCollection[WrittenBatch]:
        return hits | "BulkWrite" >> beam.ParDo(self._fn)

    def display_data(self) -> dict[str, Any]:
        return {
            "server": DisplayDataItem(str(self._target), label="Search server"),
            "max_docs": DisplayDataItem(self._max_docs, label="Documents per bulk request"),
            "max_bytes": DisplayDataItem(self._max_bytes, label="Bytes per bulk request"),
            "op_type": DisplayDataItem(self._op_type, label="Bulk action"),
        }
