"""Snapshot documents as an analytics dataset: Parquet files partitioned by type and day.

    hits ──ToExportRows──▶ (partition, row) ──WriteParquetParts──▶ PartFile ──CommitDataset──▶
        <dataset>/type=<type>/day=<YYYY-MM-DD|none>/part-NNNNN.parquet (hive style)

A row holds typed columns for the fields analysts query (`timestamp` as timestamp[ms, UTC],
`event_type`, `level`, `deployment_id`, `execution_id`, `workflow_id`, `node_id`, `message`,
`_index`, `_id`) and `doc`: the whole `_source` as JSON text, so nothing is lost. `type` and `day`
are the hive partition columns (in the paths, not in the files).

Memory is bounded per worker: `WriteParquetParts` keeps column buffers per partition and writes a
row group when a partition reaches `rows_per_group` rows, or (flushing the fullest partition) when
all buffers together reach `max_buffered_rows`; at most `max_open_files` part files are open per
bundle (the least recently used is closed and a later row of its partition opens a new part).
Nothing is shuffled but the small `PartFile` records (principle 12). Part files are written to a
staging folder; only the parts of committed bundles are moved into the dataset by
`CommitDataset`, so a retried bundle leaves no duplicate rows.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.windowed_value import WindowedValue

from core import progress
from core.errors import UnsafePath
from core.model import EVENT_TYPES, Hit
from transforms._beam import RunOnce, in_global_window

__all__ = [
    "KeepTypes",
    "EXPORT_SCHEMA",
    "COLUMNS",
    "NO_DAY",
    "ROWS_PER_GROUP",
    "COUNTER_NAMESPACE",
    "Partition",
    "PartFile",
    "parse_timestamp",
    "export_row",
    "partition_path",
    "ToExportRows",
    "WriteParquetParts",
    "CommitDataset",
    "commit_dataset",
]

ROWS_PER_GROUP = 50_000
NO_DAY = "none"
COUNTER_NAMESPACE = "cfysnap.export"

EXPORT_SCHEMA = pa.schema(
    [
        pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("event_type", pa.string()),
        pa.field("level", pa.string()),
        pa.field("deployment_id", pa.string()),
        pa.field("execution_id", pa.string()),
        pa.field("workflow_id", pa.string()),
        pa.field("node_id", pa.string()),
        pa.field("message", pa.string()),
        pa.field("_index", pa.string()),
        pa.field("_id", pa.string()),
        pa.field("doc", pa.string()),
    ]
)
COLUMNS = tuple(EXPORT_SCHEMA.names)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_EVENT_TIME_FIELDS = ("@timestamp", "timestamp")
_OTHER_TIME_FIELDS = ("created_at",)
_CONTEXT_FIELDS = ("deployment_id", "execution_id", "workflow_id", "node_id")
_SAFE_TYPE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

Partition = tuple[str, str]
"""(type, day): day is the UTC date `YYYY-MM-DD`, or `none` when the document has no time."""

Row = tuple[Any, ...]
"""Values in `COLUMNS` order; `timestamp` as int milliseconds since the epoch (UTC) or None."""


@dataclass(frozen=True)
class PartFile:
    """One staged Parquet file: its partition, path, rows and size in bytes."""

    partition: Partition
    path: str
    rows: int
    nbytes: int


# ------------------------------------------------------------------------------ pure: rows
def parse_timestamp(value: Any) -> int | None:
    """Milliseconds since the epoch (UTC) of a Cloudify time string, or None.

    Accepts `@timestamp` ("2015-12-01T10:11:12.345Z"), `timestamp` ("2015-12-01 10:11:12.345+0000")
    and `created_at` ("2015-12-01 10:11:12.123456", the manager's naive clock, taken as UTC).
    Sub-millisecond digits are truncated.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def _day(ms: int | None) -> str:
    if ms is None:
        return NO_DAY
    return (_EPOCH + ms * _MS).date().isoformat()


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def export_row(hit: Hit) -> tuple[Partition, Row]:
    """(partition, row) of one es_data hit (pure).

    `timestamp`: the first parseable of `@timestamp`, `timestamp` (events and logs) or `created_at`
    (other types); the partition's day is its UTC date, else `none`. The id columns come from
    `context` (events, logs) or the document's own top-level field; `message` is `message.text`
    (or `message` itself when it is a string). A non-string value of a text column is JSON.
    Raises UnsafePath for a type name that cannot be a partition folder.
    """
    doc_type, source = hit["_type"], hit["_source"]
    if not isinstance(doc_type, str) or not _SAFE_TYPE.match(doc_type):
        raise UnsafePath(f"type={doc_type}", "document type is not a safe partition name")
    source = source if isinstance(source, dict) else {}
    fields = _EVENT_TIME_FIELDS if doc_type in EVENT_TYPES else _OTHER_TIME_FIELDS
    ms = None
    for name in fields:
        ms = parse_timestamp(source.get(name))
        if ms is not None:
            break
    context = source.get("context")
    context = context if isinstance(context, dict) else {}
    ids = [_text(context.get(f, source.get(f))) for f in _CONTEXT_FIELDS]
    message = source.get("message")
    text = message.get("text") if isinstance(message, dict) else message
    row = (
        ms,
        _text(source.get("event_type")),
        _text(source.get("level")),
        *ids,
        _text(text),
        hit["_index"],
        hit["_id"],
        json.dumps(hit["_source"], ensure_ascii=False, separators=(",", ":")),
    )
    return (doc_type, _day(ms)), row


def partition_path(partition: Partition) -> str:
    """`type=<type>/day=<day>` (hive style)."""
    doc_type, day = partition
    return f"type={doc_type}/day={day}"


class ToExportRows(beam.PTransform):
    """hits → (Partition, Row) with `export_row` (a fused Map: no shuffle)."""

    def expand(self, hits: beam.PCollection[Hit]) -> beam.PCollection[tuple[Partition, Row]]:
        return hits | "ExportRow" >> beam.Map(export_row)


# ---------------------------------------------------------------------------- write parts
class _PartWriter:
    """One open Parquet file of a partition, fed column-wise batches."""

    def __init__(self, staging: str) -> None:
        self.path = FileSystems.join(staging, f"part-{uuid.uuid4().hex}.parquet")
        self._stream = FileSystems.create(self.path)
        self._writer = pq.ParquetWriter(self._stream, EXPORT_SCHEMA, compression="zstd")
        self.rows = 0

    def write(self, columns: list[list[Any]]) -> None:
        arrays = [pa.array(values, type=field.type) for values, field in zip(columns, EXPORT_SCHEMA, strict=True)]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=EXPORT_SCHEMA))
        self.rows += len(columns[0])

    def close(self) -> int:
        self._writer.close()
        nbytes = self._stream.tell() if hasattr(self._stream, "tell") else 0
        self._stream.close()
        return int(nbytes)


class _WriteParquetPartsFn(beam.DoFn):
    def __init__(
        self, staging: str, rows_per_group: int, max_buffered_rows: int, max_open_files: int
    ) -> None:
        self._staging = staging
        self._rows_per_group = rows_per_group
        self._max_buffered = max_buffered_rows
        self._max_open = max_open_files
        self._written = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "rows_written")

    def start_bundle(self) -> None:
        self._buffers: dict[Partition, list[list[Any]]] = {}
        self._buffered = 0
        self._open: OrderedDict[Partition, _PartWriter] = OrderedDict()
        self._done: list[PartFile] = []

    # no `-> None`: Beam 2.78 reads it as an output type that is not iterable and
    # refuses the DoFn; this one emits only in finish_bundle
    def process(self, element: tuple[Partition, Row]):
        partition, row = element
        columns = self._buffers.get(partition)
        if columns is None:
            columns = self._buffers[partition] = [[] for _ in COLUMNS]
        for values, value in zip(columns, row, strict=True):
            values.append(value)
        self._buffered += 1
        if len(columns[0]) >= self._rows_per_group:
            self._flush(partition)
        elif self._buffered >= self._max_buffered:
            self._flush(max(self._buffers, key=lambda p: len(self._buffers[p][0])))

    def _flush(self, partition: Partition) -> None:
        columns = self._buffers.pop(partition)
        writer = self._open.pop(partition, None)
        if writer is None:
            if len(self._open) >= self._max_open:
                self._close(*self._open.popitem(last=False))
            writer = _PartWriter(self._staging)
        self._open[partition] = writer  # most recently used last
        writer.write(columns)
        n = len(columns[0])
        self._buffered -= n
        self._written.inc(n)
        progress.report(n, 0)

    def _close(self, partition: Partition, writer: _PartWriter) -> None:
        nbytes = writer.close()
        self._done.append(PartFile(partition, writer.path, writer.rows, nbytes))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for partition in list(self._buffers):
            self._flush(partition)
        while self._open:
            self._close(*self._open.popitem(last=False))
        for part in self._done:
            yield in_global_window(part)


class WriteParquetParts(beam.PTransform):
    """(Partition, Row) → `PartFile`s staged in `staging`, written per bundle per partition.

    Memory per worker: at most `max_buffered_rows` buffered rows plus `max_open_files` writers.
    """

    def __init__(
        self,
        staging: str,
        *,
        rows_per_group: int = ROWS_PER_GROUP,
        max_buffered_rows: int | None = None,
        max_open_files: int = 64,
    ) -> None:
        super().__init__()
        if rows_per_group < 1 or max_open_files < 1:
            raise ValueError("rows_per_group and max_open_files must be positive")
        buffered = max_buffered_rows or 4 * rows_per_group
        if buffered < rows_per_group:
            raise ValueError("max_buffered_rows must be at least rows_per_group")
        self._args = (staging, rows_per_group, buffered, max_open_files)

    def expand(self, rows: beam.PCollection[tuple[Partition, Row]]) -> beam.PCollection[PartFile]:
        return rows | "WritePartFiles" >> beam.ParDo(_WriteParquetPartsFn(*self._args))


# -------------------------------------------------------------------------------- commit
def commit_dataset(dataset: str, parts: Iterable[PartFile]) -> dict[str, Any]:
    """Move committed part files into `dataset` as `type=…/day=…/part-NNNNN.parquet`.

    Parts are numbered per partition in path order. Returns a summary: `rows` per type, `files`,
    `bytes`, `partitions`. Only the given parts move: files of failed bundles stay in staging.
    """
    by_partition: dict[Partition, list[PartFile]] = {}
    for part in parts:
        by_partition.setdefault(tuple(part.partition), []).append(part)  # type: ignore[arg-type]
    rows: dict[str, int] = {}
    files = nbytes = 0
    for partition in sorted(by_partition):
        folder = FileSystems.join(dataset, partition_path(partition))
        if not FileSystems.exists(folder):
            FileSystems.mkdirs(folder)
        for n, part in enumerate(sorted(by_partition[partition], key=lambda p: p.path)):
            FileSystems.rename([part.path], [FileSystems.join(folder, f"part-{n:05d}.parquet")])
            rows[partition[0]] = rows.get(partition[0], 0) + part.rows
            files += 1
            nbytes += part.nbytes
    return {"rows": rows, "files": files, "bytes": nbytes, "partitions": len(by_partition)}


class _CommitFn(beam.DoFn):
    def __init__(self, dataset: str, summary_path: str) -> None:
        self._dataset, self._summary = dataset, summary_path

    def process(self, _: Any, parts: Sequence[PartFile]) -> Iterator[dict[str, Any]]:
        summary = commit_dataset(self._dataset, parts)
        with FileSystems.create(self._summary) as f:
            f.write(json.dumps(summary).encode())
        yield summary


class CommitDataset(beam.PTransform):
    """`PartFile`s → the dataset folder (see `commit_dataset`) on one worker; emits the summary
    and also writes it as JSON to `summary_path` for the driver."""

    def __init__(self, dataset: str, summary_path: str) -> None:
        super().__init__()
        self._dataset, self._summary = dataset, summary_path

    def expand(self, parts: beam.PCollection[PartFile]) -> beam.PCollection[dict[str, Any]]:
        return (parts,) | "MoveParts" >> RunOnce(_CommitFn(self._dataset, self._summary))


class _KeepTypesFn(beam.DoFn):
    def __init__(self, types: tuple[str, ...] | None) -> None:
        self._types = None if types is None else frozenset(types)
        self._read = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "documents_read")
        self._skipped = beam.metrics.Metrics.counter(COUNTER_NAMESPACE, "documents_skipped")

    def process(self, hit: Hit) -> Iterator[Hit]:
        self._read.inc()
        if self._types is None or hit["_type"] in self._types:
            yield hit
        else:
            self._skipped.inc()


class KeepTypes(beam.PTransform):
    """hits → the hits of `types` (None: all); counts documents read and skipped."""

    def __init__(self, types: tuple[str, ...] | None) -> None:
        super().__init__()
        self._types = types

    def expand(self, hits: beam.PCollection[Hit]) -> beam.PCollection[Hit]:
        return hits | "KeepSelectedTypes" >> beam.ParDo(_KeepTypesFn(self._types))
