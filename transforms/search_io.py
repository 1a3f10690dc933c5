"""A Beam IO connector for search servers (Elasticsearch 1.x–9.x, OpenSearch), in the style of
Beam's own IO modules (`apache_beam/io/mongodbio.py`).

    p | ReadFromSearch(SearchTarget(url), "cloudify_storage", parallelism=4) | ...

`ReadFromSearch` plans its parts on the workers, not when the graph is built: one element per
(index pattern, types) goes to a planning step that asks the server how to split the read
(`SearchClient.partitions`: sliced scroll on Elasticsearch ≥ 5 and OpenSearch, one part per
shard on 1.x/2.x), the parts are spread over workers (only those small descriptions are
shuffled), and each part is read with one scroll, the client opened in `setup()` and closed in
`teardown()`. The parts of one read cover every document exactly once.

Output elements are hits in the shape of a 3.x snapshot's es_data line,
`{"_index", "_type", "_id", "_score": 0.0, "_source"}`, with Cloudify's logical index and type
names whatever the server's layout. A Beam counter per "index/type" (namespace given by
`counter_namespace`) counts what was read, so a job can reconcile it with what it wrote.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.transforms.display import DisplayDataItem

from pipelines.io.search import Partition, SearchTarget
from pipelines.model import Hit

__all__ = ["ReadFromSearch", "ReadPart", "READ_NAMESPACE"]

READ_NAMESPACE = "cfysnap.read"


@dataclass(frozen=True)
class ReadPart:
    """One part of a read: a logical index (or pattern), its types (None: all), the query, and
    which part (None: the whole of it)."""

    index: str
    doc_types: tuple[str, ...] | None
    partition: Partition | None
    query: Any = None


class _PlanPartsFn(beam.DoFn):
    """A `ReadPart` for the whole read → the parts the server splits it into."""

    def __init__(self, target: SearchTarget, parallelism: int) -> None:
        self._target, self._parallelism = target, parallelism

    def process(self, whole: ReadPart) -> Iterator[ReadPart]:
        with self._target.connect() as client:
            partitions = client.partitions(whole.index, whole.doc_types, self._parallelism)
        if not partitions:
            yield whole
            return
        for partition in partitions:
            yield ReadPart(whole.index, whole.doc_types, partition, whole.query)


class _ReadPartFn(beam.DoFn):
    """A `ReadPart` → its hits, one scroll, one page in memory."""

    def __init__(self, target: SearchTarget, page_size: int, namespace: str) -> None:
        self._target, self._page_size, self._namespace = target, page_size, namespace

    def setup(self) -> None:
        self._client = self._target.connect()

    def process(self, part: ReadPart) -> Iterator[Hit]:
        counts: Counter[str] = Counter()
        for hit in self._client.scan(
            part.index,
            list(part.doc_types) if part.doc_types else None,
            query=part.query,
            partition=part.partition,
            page_size=self._page_size,
        ):
            index, doc_type = hit["_index"], hit["_type"]
            counts[f"{index}/{doc_type}"] += 1
            yield {
                "_index": index,
                "_type": doc_type,
                "_id": hit["_id"],
                "_score": 0.0,
                "_source": hit["_source"],
            }
        for key, n in counts.items():
            beam.metrics.Metrics.counter(self._namespace, key).inc(n)

    def teardown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class ReadFromSearch(beam.PTransform):
    """PBegin → every document of a logical index (or pattern, e.g. `logstash-*`) as es_data hits.

    `doc_types`: only these types (None: all). `query`: a query in the server's own DSL (None:
    all documents). `parallelism`: how many slices to ask a sliced-scroll server for (1.x and 2.x
    are split by shard instead). `page_size`: hits per scroll page.
    """

    def __init__(
        self,
        target: SearchTarget | str,
        index: str,
        doc_types: Sequence[str] | None = None,
        *,
        query: Any = None,
        parallelism: int = 2,
        page_size: int = 1000,
        counter_namespace: str = READ_NAMESPACE,
    ) -> None:
        super().__init__()
        if parallelism < 1 or page_size < 1:
            raise ValueError("ReadFromSearch: parallelism and page_size must be at least 1")
        self._target = target if isinstance(target, SearchTarget) else SearchTarget(target)
        self._whole = ReadPart(index, tuple(doc_types) if doc_types else None, None, query)
        self._parallelism, self._page_size = parallelism, page_size
        self._namespace = counter_namespace

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Hit]:
        return (
            pbegin
            | "WholeRead" >> beam.Create([self._whole])
            | "PlanParts" >> beam.ParDo(_PlanPartsFn(self._target, self._parallelism))
            | "SpreadParts" >> beam.Reshuffle()
            | "ReadPart" >> beam.ParDo(_ReadPartFn(self._target, self._page_size, self._namespace))
        )

    def display_data(self) -> dict[str, Any]:
        return {
            "server": DisplayDataItem(str(self._target), label="Search server"),
            "index": DisplayDataItem(self._whole.index, label="Index"),
            "doc_types": DisplayDataItem(",".join(self._whole.doc_types or ()), label="Types"),
            "parallelism": DisplayDataItem(self._parallelism, label="Parallelism"),
            "page_size": DisplayDataItem(self._page_size, label="Page size"),
        }
