"""`export`: snapshot documents (from an archive or a live manager) as a Parquet dataset.

    archive ──SplitEsDataIntoShards──▶ shard paths ──ReadShards──┐
    search server ──ReadManagerDocuments (sliced scroll)─────────┴▶ hits
      ──KeepTypes──▶ ToExportRows ──▶ WriteParquetParts (per bundle, per partition)
      ──CommitDataset──▶ staged dataset ──(counts reconciled)──▶ OUT_DIR (one rename)

Why Beam and not a plain streaming writer: the same pipeline reads either source in parallel
(shards of es_data, scroll slices of the server), converts and writes on every worker, and runs
on any runner (FnApiRunner, multi-process, Flink); only shard paths, slice numbers and small
`PartFile` records are shuffled. Memory per worker is bounded by `WriteParquetParts`
(`rows_per_group` rows per partition, 4× that in all, 64 open files), not by the data size.

The dataset is hive-partitioned: `type=<type>/day=<YYYY-MM-DD|none>/part-NNNNN.parquet`, schema
`transforms.parquet.EXPORT_SCHEMA` (read it with `pyarrow.dataset.dataset(OUT_DIR,
partitioning="hive")` or DuckDB's `read_parquet('OUT_DIR/**/*.parquet', hive_partitioning=true)`).

Counts are reconciled: documents read = rows written + documents of other types; rows per type
in the committed dataset = rows written; and, per type, the documents the source says it has
(the archive's manifest, or the server's counts) = rows exported. A failed job leaves nothing at
OUT_DIR; its staging folder beside OUT_DIR is removed whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions

from core.archive import ArchiveLimits, SnapshotReader
from core.counts import counter_values
from core.errors import JobFailed, job_error
from core.model import EVENT_TYPES, EVENTS_INDEX, LOGSTASH_PREFIX, STORAGE_INDEX
from core.options import beam_options
from core.progress import Progress
from core.search import SearchClient, SearchTarget
from core.text import plural
from transforms.parquet import (
    COUNTER_NAMESPACE,
    ROWS_PER_GROUP,
    CommitDataset,
    KeepTypes,
    ToExportRows,
    WriteParquetParts,
)
from transforms.read_manager import ReadManagerDocuments, Source
from transforms.shards import LINES_PER_SHARD, ReadShards, SplitEsDataIntoShards

__all__ = ["ExportConfig", "ExportSummary", "FORMATS", "run", "parse_types"]

FORMATS = ("parquet",)
_TYPE_ALIASES = {"events": "cloudify_event", "logs": "cloudify_log"}


def parse_types(text: str) -> tuple[str, ...] | None:
    """`events,logs` → the Cloudify types; `all` → None (every type). Unknown words are type names
    (`node_instance`, `execution`, …). Raises ValueError when nothing is named."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise ValueError("name at least one type (events, logs, a document type) or all")
    if "all" in words:
        return None
    return tuple(dict.fromkeys(_TYPE_ALIASES.get(w, w) for w in words))


@dataclass(frozen=True)
class ExportConfig:
    """One export: exactly one source (`archive` or `es_url`), the dataset folder `output`."""

    output: Path
    archive: Path | None = None
    target: SearchTarget | None = None
    types: tuple[str, ...] | None = EVENT_TYPES
    """Document types to export; None = every type."""
    format: str = "parquet"
    rows_per_group: int = ROWS_PER_GROUP
    lines_per_shard: int = LINES_PER_SHARD
    slices: int | None = None
    page_size: int = 1000
    progress: bool = True

    def __post_init__(self) -> None:
        if self.target is not None:
            object.__setattr__(self, "target", SearchTarget.of(self.target))
        if (self.archive is None) == (self.target is None):
            raise ValueError("give exactly one source: an archive or a search server URL")
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r} (known: {', '.join(FORMATS)})")
        if self.types is not None and not self.types:
            raise ValueError("types must name at least one type (or be None for all)")
        if self.rows_per_group < 1:
            raise ValueError("rows_per_group must be positive")

    @property
    def source(self) -> str:
        return str(self.archive) if self.archive is not None else str(self.target)


@dataclass(frozen=True)
class ExportSummary:
    output: Path
    source: str
    rows: dict[str, int]
    files: int
    bytes: int
    partitions: int
    documents_read: int
    documents_skipped: int
    seconds: float = 0.0
    expected: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        total = sum(self.rows.values())
        rate = total / self.seconds if self.seconds else 0.0
        lines = [
            f"exported {plural(total, 'document')} from {self.source} to {self.output} "
            f"({plural(self.files, 'Parquet file')}, {plural(self.partitions, 'partition')}, "
            f"{self.bytes:,} bytes, "
            f"{self.seconds:.1f}s, {rate:,.0f} docs/s)"
        ]
        lines += [f"  {t}: {n:,}" for t, n in sorted(self.rows.items())]
        if self.documents_skipped:
            lines.append(f"  other types not exported: {self.documents_skipped}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ transforms
# ----------------------------------------------------------------------------------- sources
def _archive_expected(archive: Path) -> dict[str, int] | None:
    """Documents per type from the archive's manifest (None: archive without a manifest)."""
    with SnapshotReader(archive, ArchiveLimits()) as snap:  # a zip bomb is refused here
        _ = snap.version  # a readable snapshot (metadata.json), else a typed error now
        manifest = snap.manifest()
    documents = (manifest or {}).get("documents") if isinstance(manifest, dict) else None
    if not isinstance(documents, dict):
        return None
    expected: Counter[str] = Counter()
    for key, n in documents.items():
        expected[str(key).rpartition("/")[2]] += int(n)
    return dict(expected)


def _server_sources(client: SearchClient, types: tuple[str, ...] | None) -> list[Source]:
    events_index = (
        EVENTS_INDEX if client.index_exists(EVENTS_INDEX) else f"{LOGSTASH_PREFIX}*"
    )
    if types is None:
        return [(STORAGE_INDEX, None), (events_index, None)]
    sources: list[Source] = []
    storage = tuple(t for t in types if t not in EVENT_TYPES)
    events = tuple(t for t in types if t in EVENT_TYPES)
    if storage:
        sources.append((STORAGE_INDEX, storage))
    if events:
        sources.append((events_index, events))
    return sources


def _server_expected(client: SearchClient, sources: Sequence[Source]) -> dict[str, int]:
    expected: Counter[str] = Counter()
    for index, types in sources:
        client.refresh(index)
        for (_, t), n in client.logical_indices(index).items():
            if types is None or t in types:
                expected[t] += n
    return dict(expected)


# -------------------------------------------------------------------------------------- run
def run(config: ExportConfig, beam_args: Sequence[str] = ()) -> ExportSummary:
    """Export the documents of `config.types` to a Parquet dataset at `config.output`.

    Raises `JobFailed` (output not empty, pipeline failed, counts do not reconcile; nothing is
    then left at the output), `CorruptArchive`/`UnsupportedVersion` for an unreadable archive,
    `SearchServerError` when the server cannot be read before the pipeline starts.
    """
    started = time.monotonic()
    output = Path(config.output).absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise JobFailed("export", f"{output} exists and is not an empty folder")
    options = beam_options(beam_args)
    target: SearchTarget | None = None
    if config.archive is not None:
        expected = _archive_expected(config.archive)
        sources: list[Source] = []
    else:
        workers = options.view_as(DirectOptions).direct_num_workers or 1
        assert config.target is not None
        with config.target.connect() as client:
            sources = _server_sources(client, config.types)
            expected = _server_expected(client, sources)
            target = replace(config.target, layout=client.layout)
    if expected is not None and config.types is not None:
        expected = {t: n for t, n in expected.items() if t in config.types}

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.staging-{uuid.uuid4().hex[:8]}"
    dataset = staging / "dataset"
    summary_path = staging / "summary.json"
    for folder in (staging, staging / "in", staging / "parts", dataset):
        folder.mkdir(mode=0o700)
    done: dict[str, Any] = {"dataset written": "no"}
    try:
        p = beam.Pipeline(options=options)
        if config.archive is not None:
            hits = (
                p
                | "Archive" >> beam.Create([str(config.archive)])
                | "SplitEsDataIntoShards"
                >> SplitEsDataIntoShards(str(staging / "in"), config.lines_per_shard)
                | "ReadShards" >> ReadShards()
            )
        else:
            assert target is not None
            hits = p | "ReadManagerDocuments" >> ReadManagerDocuments(
                target,
                sources,
                parallelism=config.slices or max(2, workers),
                page_size=config.page_size,
            )
        _ = (
            hits
            | "KeepTypes" >> KeepTypes(config.types)
            | "ToExportRows" >> ToExportRows()
            | "WriteParquetParts"
            >> WriteParquetParts(str(staging / "parts"), rows_per_group=config.rows_per_group)
            | "CommitDataset" >> CommitDataset(str(dataset), str(summary_path))
        )
        total = sum(expected.values()) if expected is not None else None
        with Progress("export", total=total, enabled=config.progress):
            try:
                result = p.run()
                result.wait_until_finish()
            except Exception as exc:  # noqa: BLE001 - turned into a typed error right here
                raise job_error("export", exc, done) from None
        counters = counter_values(result, COUNTER_NAMESPACE)
        committed = json.loads(summary_path.read_text())
        summary = ExportSummary(
            output=output,
            source=config.source,
            rows={str(k): int(v) for k, v in committed["rows"].items()},
            files=int(committed["files"]),
            bytes=int(committed["bytes"]),
            partitions=int(committed["partitions"]),
            documents_read=counters.get("documents_read", 0),
            documents_skipped=counters.get("documents_skipped", 0),
            expected=expected or {},
        )
        _reconcile(summary, counters.get("rows_written", 0), expected, done)
        if output.exists():
            output.rmdir()  # empty (checked above)
        os.rename(dataset, output)
        done["dataset written"] = "yes"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return replace(summary, seconds=time.monotonic() - started)


def _reconcile(
    summary: ExportSummary,
    rows_written: int,
    expected: dict[str, int] | None,
    done: dict[str, Any],
) -> None:
    exported = sum(summary.rows.values())
    problems = []
    if summary.documents_read != rows_written + summary.documents_skipped:
        problems.append(
            f"read {summary.documents_read} != written {rows_written} + other types "
            f"{summary.documents_skipped}"
        )
    if exported != rows_written:
        problems.append(f"the dataset holds {exported} rows but {rows_written} were written")
    if expected is not None:
        for doc_type in sorted(set(expected) | set(summary.rows)):
            want, got = expected.get(doc_type, 0), summary.rows.get(doc_type, 0)
            if want != got:
                problems.append(f"{doc_type}: the source has {want} documents, exported {got}")
    if problems:
        raise JobFailed("export", "counts do not reconcile: " + "; ".join(problems), done)
