"""`create`: a Beam pipeline from a live manager to a snapshot archive (spec §1–§4, §7.1).

A manager is its search server (either layout) plus its file-server root plus the agent keys its
Compute nodes name. The archive is written in the source's own version: nothing is changed while
copying (that is `convert`).

    ReadManagerDocuments (cloudify_storage, then cloudify_events or logstash-*; split by the
      server: sliced scroll, or one part per shard on Elasticsearch 1.x; scroll pages whose
      sources stay the server's bytes)
      └─ ToSnapshotParts (one pass over each page)
           ├─ lines (less provider_context, snapshot, the running create's execution)
           │    └─ WriteShards ──────────▶ shard files in a staging folder beside the output
           ├─ facts ──BuildAgentsJson (staged by bucket of deployments) ──▶ staged agents.json
           └─ keys ──▶ snapshot-credentials/<dep>_<node>/agent_key
    ListFileTree (blueprints, uploaded-blueprints, plugins 3.3+, deployments 3.4)
    metadata.json (+ manager.json for 3.2)
      ──WriteSnapshotArchive──▶ staged archive ──(counts reconciled)──▶ output (atomic rename)

Only slice numbers, shard paths, file paths and (bucket, fact file) pairs are shuffled. The
staging folder is removed whatever happens; a failed job leaves nothing at the output path.

Counts are reconciled at the end: for every (index, type), the documents counted on the server
before reading (after a refresh) must equal those read, and those read must equal those written
plus those dropped. Any difference fails the job: a manager whose documents change while the
snapshot is taken (a running workflow) does not give a consistent snapshot.

With `snapshot_id` the job behaves like a manager's `create_snapshot` workflow (§7.1): the
archive goes to `<fs_root>/snapshots/<id>/<id>.zip`; a `snapshot` document goes creating →
created/failed (with the error); a system `create_snapshot` execution goes started →
terminated/failed, and that execution is left out of the snapshot. When the search server itself
fails, the failed status is written once it answers again (retried for `status_timeout`
seconds, as a manager's REST service would on its next request); if it never does, the error
says the status could not be recorded.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import cancel
from core.archive import METADATA, SnapshotReader
from core.beam_import import import_beam
from core.crypto import ArchiveKey, Encryption
from core.errors import CfysnapError, JobFailed, SearchServerError, StoreError, job_error
from core.manager import ManagerFacts, inspect_manager
from core.model import (
    EVENT_TYPES,
    NEVER_IN_SNAPSHOT_TYPES,
    STORAGE_INDEX,
    Doc,
    Version,
    metadata_version,
)
from core.progress import Progress
from core.read_ahead import ReadAhead, whole_reads
from core.search import SearchClient, SearchTarget
from core.store import SnapshotStore, Status, archive_path
from core.text import plural

if TYPE_CHECKING:
    import apache_beam as beam

    from transforms.agents import AgentDefaults
    from transforms.read_manager import Source

# Beam and the graph's transforms are imported by `_import_runner`, in a thread started before
# the manager is inspected: the import (~0.3 s) runs while this thread waits for the server.

__all__ = [
    "CreateConfig",
    "CreateSummary",
    "run",
    "file_folders",
    "set_execution_status",
    "start_snapshot",
    "SNAPSHOTS_FOLDER",
]

_LOG = logging.getLogger("cfysnap")
SNAPSHOTS_FOLDER = "snapshots"
ACTIVE_EXECUTION_STATUSES = ("pending", "started", "cancelling", "force_cancelling")
Counts = dict[tuple[str, str], int]
READ_CONCURRENCY = 2
"""Scrolls each worker reads at once (the read-ahead's too)."""


# ------------------------------------------------------------------------------ config/result
@dataclass(frozen=True)
class CreateConfig:
    """One create job. Exactly one of `output` and `snapshot_id`."""

    target: SearchTarget
    """The server (a bare URL given here is taken as `SearchTarget(url)`)."""
    fs_root: Path
    output: Path | None = None
    snapshot_id: str | None = None
    include_credentials: bool = True
    encrypt_with: ArchiveKey | None = None
    """Encrypt the agent keys and agents.json's broker passwords and SSL keys with this key
    (`core.crypto`); manifest.json says so."""
    exclude_events: bool = False
    exclude_logs: bool = False
    source_version: str | None = None
    """"3.2", "3.2.1", "3.3" or "3.4"; None: read from the data (`core.manager`)."""
    slices: int | None = None
    """Parallel reads per index: scroll slices (Elasticsearch ≥ 5, OpenSearch); default
    max(2, number of Beam workers). 1.x/2.x servers are read one part per shard instead."""
    page_size: int = 5000
    """The most hits a scroll page holds (on 1.x divided over the shards a part reads); larger
    documents get fewer (`page_bytes`). Each page costs the server a round trip: reading the
    100k-document bench manager from 1.7 on its own took 0.93-0.99 s with pages of 1,000,
    0.78-0.83 s with 2,500, 0.68-0.71 s with 5,000; its create 2.5-3.2 s against 3.0-3.6 s."""
    page_bytes: int = 4 << 20
    """About how many bytes of documents a page holds (the index's stored bytes per document,
    `core.search.SearchClient.scan_pages`), never fewer than 1,000 hits: memory bounded by bytes,
    not only by hits. A reader holds up to 3 pages per scroll queued, one more per scroll thread
    and the one it works on: about 9 pages, 36 MiB, per worker."""
    status_timeout: float = 120.0
    """How long to keep trying to record a failed snapshot status on the server."""
    progress: bool = True
    force: bool = False
    """Replace an existing `output` (without it an existing file is refused, untouched)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", SearchTarget.of(self.target))
        if (self.output is None) == (self.snapshot_id is None):
            raise ValueError("give exactly one of output and snapshot_id")
        if self.slices is not None and self.slices < 1:
            raise ValueError("slices must be at least 1")
        if self.page_size < 1 or self.page_bytes < 1:
            raise ValueError("page_size and page_bytes must be at least 1")


@dataclass(frozen=True)
class CreateSummary:
    """What a create job wrote."""

    output: Path
    version: Version
    documents: dict[str, int]
    """Documents written per "index/type"."""
    dropped: dict[str, int]
    """Documents read and left out (§4) per "index/type"."""
    files: int
    """Archive members other than es_data, metadata.json, agents.json, manager.json, manifest."""
    credentials: int
    bytes: int
    """Size of the archive."""
    es_data_bytes: int
    seconds: float
    snapshot_id: str | None = None
    execution_id: str | None = None
    source: str = ""
    """How the manager's version was known (`VersionReading.describe()`)."""

    @property
    def total_documents(self) -> int:
        return sum(self.documents.values())

    @property
    def docs_per_second(self) -> float:
        return self.total_documents / max(self.seconds, 1e-9)

    def render(self) -> str:
        lines = [f"wrote {self.output} (snapshot_version {metadata_version(self.version)})"]
        if self.source:
            lines.append(f"  {self.source}")
        for key, n in sorted(self.documents.items()):
            lines.append(f"  {key}: {n:,}")
        if self.dropped:
            dropped = ", ".join(f"{k}={n}" for k, n in sorted(self.dropped.items()))
            lines.append(f"  left out: {dropped}")
        lines.append(
            f"{plural(self.total_documents, 'document')}, {plural(self.files, 'file')}, "
            f"{plural(self.credentials, 'agent key')}, {self.bytes:,} bytes in {self.seconds:.1f}s "
            f"({self.docs_per_second:,.0f} docs/s)"
        )
        return "\n".join(lines)


# ------------------------------------------------------------------------------ the source
def _import_runner() -> None:
    """Import Beam and the create's transforms (what `_create` imports again, from the cache).
    Runs in a thread: an import error is left for `_create`'s own imports to raise, as one
    typed line, not a thread's traceback."""
    try:
        import_beam()  # first: without the connectors no job uses (`core.beam_import`)
        import core.counts  # noqa: F401
        import core.options  # noqa: F401
        import transforms.agents  # noqa: F401
        import transforms.read_manager  # noqa: F401
        import transforms.shards  # noqa: F401
    except BaseException:  # noqa: BLE001, S110 - raised again where it is imported for use
        pass


def _agent_defaults(source: ManagerFacts) -> AgentDefaults:
    from transforms.agents import agent_defaults

    return agent_defaults(source.version, source.provider_context, source.release)


def file_folders(version: Version) -> list[str]:
    """File-server folders a snapshot of `version` carries (§1, §7.1)."""
    folders = ["blueprints", "uploaded-blueprints"]
    if version >= Version.V3_3:
        folders.append("plugins")
    if version >= Version.V3_4:
        folders.append("deployments")
    return folders


def _event_types(config: CreateConfig) -> tuple[str, ...]:
    excluded = {"cloudify_event"} if config.exclude_events else set()
    if config.exclude_logs:
        excluded.add("cloudify_log")
    return tuple(t for t in EVENT_TYPES if t not in excluded)


def _sources(config: CreateConfig, source: ManagerFacts) -> list[Source]:
    sources: list[Source] = [(STORAGE_INDEX, None)]
    types = _event_types(config)
    if types:
        sources.append((source.events_index, None if types == EVENT_TYPES else types))
    return sources


def _expected_counts(client: SearchClient, sources: Sequence[Source]) -> Counts:
    """Documents per (index, type) the reads should see (after a refresh)."""
    expected: Counts = {}
    for index, types in sources:
        client.refresh(index)
        for (i, t), n in client.logical_indices(index).items():
            if n and (types is None or t in types):
                expected[(i, t)] = n
    return expected


# ------------------------------------------------------------------------------ the store
def _now() -> str:
    """`str(datetime.now())` as the REST service stores it (UTC here)."""
    return str(datetime.now(UTC).replace(tzinfo=None))


def set_execution_status(
    client: SearchClient, execution_id: str, status: str, error: str = ""
) -> None:
    client.update_fields(
        STORAGE_INDEX, "execution", execution_id, {"status": status, "error": error}, refresh=True
    )


def _execution_config(config: CreateConfig, client: SearchClient, version: Version) -> Doc:
    from urllib.parse import urlsplit

    parts = urlsplit(client.url)
    cfg: Doc = {
        "file_server_root": str(config.fs_root),
        "file_server_snapshots_folder": SNAPSHOTS_FOLDER,
        "file_server_blueprints_folder": "blueprints",
        "file_server_uploaded_blueprints_folder": "uploaded-blueprints",
        "file_server_uploaded_plugins_folder": "plugins",
    }
    if version >= Version.V3_4:
        cfg["file_server_deployments_folder"] = "deployments"
    cfg.update(
        {
            "db_address": parts.hostname or "",
            "db_port": parts.port or 9200,
            "created_status": "created",
            "failed_status": "failed",
        }
    )
    return cfg


def start_snapshot(client: SearchClient, config: CreateConfig, version: Version) -> str:
    """Record the snapshot (status `creating`) and its `create_snapshot` system execution
    (status `started`) as a 3.3/3.4 manager does (§7.1); return the execution id.

    Refuses (StoreError) a 3.2 manager (it had no snapshot store), an id that exists, and a
    manager with an active execution (system workflows run alone).
    """
    snapshot_id = config.snapshot_id
    assert snapshot_id is not None
    store = SnapshotStore(client, config.fs_root)
    store.require_store(snapshot_id, version)
    store.reap_stale()  # a crashed earlier create must not stay `creating` forever
    if store.get(snapshot_id) is not None:
        raise StoreError(snapshot_id, "already exists")
    active = client.count(
        STORAGE_INDEX, "execution", {"terms": {"status": list(ACTIVE_EXECUTION_STATUSES)}}
    )
    if active:
        raise StoreError(snapshot_id, f"{plural(active, 'execution')} still running; try again later")
    now = _now()
    snapshot = {"id": snapshot_id, "created_at": now, "status": "creating", "error": ""}
    execution_id = str(uuid.uuid4())
    execution = {
        "id": execution_id,
        "status": "started",
        "deployment_id": None,
        "blueprint_id": None,
        "workflow_id": "create_snapshot",
        "created_at": now,
        "error": "",
        "parameters": {
            "snapshot_id": snapshot_id,
            "include_metrics": False,
            "include_credentials": config.include_credentials,
            "config": _execution_config(config, client, version),
        },
        "is_system_workflow": True,
    }
    hits = [
        {"_index": STORAGE_INDEX, "_type": "snapshot", "_id": snapshot_id, "_source": snapshot},
        {"_index": STORAGE_INDEX, "_type": "execution", "_id": execution_id, "_source": execution},
    ]
    client.bulk(hits, op_type="create", refresh=True).raise_on_failure()
    store.claim(snapshot_id)  # the creator marker lets the next command reap a crashed create
    return execution_id


def _retry_until(deadline: float, action: Callable[[], None]) -> str | None:
    """Run `action` until it succeeds or `deadline` passes; None, or the last error."""
    delay = 0.5
    while True:
        try:
            action()
            return None
        except SearchServerError as exc:
            if time.monotonic() + delay > deadline:
                return str(exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _record_failure(config: CreateConfig, execution_id: str | None, error: str) -> str | None:
    """Mark the snapshot and its execution failed; None, or why that could not be done."""
    assert config.snapshot_id is not None
    deadline = time.monotonic() + config.status_timeout
    with config.target.connect(max_retries=0, timeout=10) as client:

        def mark() -> None:
            SnapshotStore(client, config.fs_root).mark(config.snapshot_id or "", Status.FAILED, error)
            if execution_id:
                set_execution_status(client, execution_id, "failed", error)

        return _retry_until(deadline, mark)


# ------------------------------------------------------------------------------ the job
def run(config: CreateConfig, beam_args: Sequence[str] = ()) -> CreateSummary:
    """Create a snapshot archive of the manager described by `config`.

    Raises a `CfysnapError`: `JobFailed` at once when `output` exists and `force` is not set,
    `SearchServerError` when the server cannot be used before the pipeline starts, `StoreError` for a refused `snapshot_id`, `JobFailed` when the pipeline or
    the count reconciliation fails (nothing is then left at the output path).
    """
    started = time.monotonic()
    output = (
        archive_path(config.fs_root, config.snapshot_id)
        if config.snapshot_id
        else Path(config.output or "").absolute()
    )
    if config.output is not None and output.exists() and not config.force:
        raise JobFailed("create", f"{output} exists (use --force to replace it)")
    # the client first: its transport's import (0.12 s) then has the GIL to itself, not half
    # of it beside Beam's import thread, and the inspection starts that much sooner
    client = config.target.connect()
    # an import error, if any, is raised again by `_create`'s own imports
    importer = threading.Thread(target=_import_runner, name="cfysnap-import", daemon=True)
    importer.start()
    try:
        return _run(config, beam_args, output, started, client)
    finally:
        importer.join()  # never left importing while the process ends (a failed inspection)


def _run(
    config: CreateConfig,
    beam_args: Sequence[str],
    output: Path,
    started: float,
    client: SearchClient,
) -> CreateSummary:
    with client:
        source = inspect_manager(client, config.source_version)
        _LOG.debug("%s", source.reading.describe())  # the summary says it
        execution_id = (
            start_snapshot(client, config, source.version) if config.snapshot_id else None
        )
        try:
            summary = _create(client, config, source, output, execution_id, beam_args, started)
        except BaseException as exc:
            error = _as_job_error(exc)
            if config.snapshot_id:
                not_recorded = _record_failure(config, execution_id, str(error))
                if not_recorded:
                    error = JobFailed(
                        "create",
                        f"{error}; the snapshot's failed status could not be recorded "
                        f"({not_recorded})",
                    )
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise error from None
        if config.snapshot_id and execution_id:
            SnapshotStore(client, config.fs_root).mark(config.snapshot_id, Status.CREATED)
            set_execution_status(client, execution_id, "terminated")
    return summary


def _create(
    client: SearchClient,
    config: CreateConfig,
    source: ManagerFacts,
    output: Path,
    execution_id: str | None,
    beam_args: Sequence[str],
    started: float,
) -> CreateSummary:
    sources = _sources(config, source)
    expected = _expected_counts(client, sources)
    target = replace(config.target, layout=client.layout)
    with _read_ahead(config, target, sources, beam_args) as ahead:
        return _run_pipeline(
            config, source, sources, expected, output, execution_id, beam_args, started, target,
            ahead,
        )


@contextmanager
def _read_ahead(
    config: CreateConfig, target: SearchTarget, sources: Sequence[Source], beam_args: Sequence[str]
) -> Iterator[str | None]:
    """The token of a `core.read_ahead.ReadAhead` of the job's reads, running while Beam is
    imported and the graph built (None where the pipeline reads in other processes)."""
    if not ReadAhead.fits(beam_args):
        yield None
        return
    with ReadAhead(
        target,
        whole_reads(sources),
        parallelism=_slices(config, workers=1),
        page_size=config.page_size,
        page_bytes=config.page_bytes,
        concurrency=READ_CONCURRENCY,
    ) as ahead:
        yield ahead.token


def _slices(config: CreateConfig, workers: int) -> int:
    return config.slices or max(2, workers)


def _run_pipeline(
    config: CreateConfig,
    source: ManagerFacts,
    sources: Sequence[Source],
    expected: Counts,
    output: Path,
    execution_id: str | None,
    beam_args: Sequence[str],
    started: float,
    target: SearchTarget,
    ahead: str | None,
) -> CreateSummary:
    import apache_beam as beam  # waits, if the import thread is still at it
    from apache_beam.options.pipeline_options import DirectOptions

    from core.counts import counter_values
    from core.options import beam_options
    from transforms.read_manager import DROPPED_NAMESPACE, READ_NAMESPACE

    options = beam_options(beam_args)
    workers = options.view_as(DirectOptions).direct_num_workers or 1
    slices = _slices(config, workers)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir(mode=0o700)
    staged_archive = staging / "archive.zip"
    try:
        pipeline = beam.Pipeline(options=options)
        _build_pipeline(
            pipeline,
            config,
            source,
            sources,
            staging,
            staged_archive,
            execution_id,
            slices,
            target,
            ahead,
            Encryption.new(config.encrypt_with) if config.encrypt_with is not None else None,
        )
        with Progress("create", total=sum(expected.values()), enabled=config.progress):
            result = pipeline.run()
            result.wait_until_finish()
        read = counter_values(result, READ_NAMESPACE)
        dropped = counter_values(result, DROPPED_NAMESPACE)
        with SnapshotReader(staged_archive) as snap:
            manifest = snap.manifest() or {}
        written = {k: int(v) for k, v in (manifest.get("documents") or {}).items()}
        _reconcile(expected, read, dropped, written)
        members = manifest.get("members") or {}
        os.chmod(staged_archive, 0o600)  # broker passwords and agent keys
        cancel.checkpoint()  # an interrupt something swallowed still stops it here
        os.replace(staged_archive, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fixed = {"es_data", METADATA, "agents.json", "manager.json"}
    credentials = sum(1 for name in members if name.startswith("snapshot-credentials/"))
    return CreateSummary(
        output=output,
        version=source.version,
        documents=written,
        dropped={k: v for k, v in dropped.items() if v},
        files=sum(1 for name in members if name not in fixed) - credentials,
        credentials=credentials,
        bytes=output.stat().st_size,
        es_data_bytes=int((members.get("es_data") or {}).get("size", 0)),
        seconds=time.monotonic() - started,
        snapshot_id=config.snapshot_id,
        execution_id=execution_id,
        source=source.reading.describe(),
    )


def _build_pipeline(
    p: beam.Pipeline,
    config: CreateConfig,
    source: ManagerFacts,
    sources: Sequence[Source],
    staging: Path,
    staged_archive: Path,
    execution_id: str | None,
    slices: int,
    target: SearchTarget,
    ahead: str | None,
    encryption: Encryption | None,
) -> None:
    import apache_beam as beam

    from transforms._beam import Values
    from transforms.agents import BuildAgentsJson
    from transforms.read_manager import ListFileTree, ReadManagerDocuments, ToSnapshotParts
    from transforms.shards import ArchiveMember, WriteShards, WriteSnapshotArchive

    pages = p | "ReadManagerDocuments" >> ReadManagerDocuments(
        target,
        sources,
        parallelism=slices,
        page_size=config.page_size,
        page_bytes=config.page_bytes,
        pages=True,
        concurrency=READ_CONCURRENCY,
        ahead=ahead,
    )
    parts = pages | "ToSnapshotParts" >> ToSnapshotParts(
        NEVER_IN_SNAPSHOT_TYPES,
        [execution_id] if execution_id else [],
        keys=config.include_credentials,
    )
    shard_infos = parts.lines | "WriteShards" >> WriteShards(str(staging), deflate=True)
    agents_member = parts.facts | "BuildAgentsJson" >> BuildAgentsJson(
        str(staging), _agent_defaults(source), encryption
    )
    file_members = p | "ListFileTree" >> ListFileTree(
        str(config.fs_root), file_folders(source.version)
    )
    small = [ArchiveMember(METADATA, data=_json_bytes(source.metadata))]
    if source.version == Version.V3_2:  # the 3.2 tool's manager.json (§1)
        ip = _agent_defaults(source).manager_ip
        small.append(ArchiveMember("manager.json", data=_json_bytes({"MANAGEMENT_IP": ip})))
    member_sets = [
        p | "SmallMembers" >> Values(small),
        agents_member,
        file_members,
    ]
    if config.include_credentials:
        member_sets.append(parts.keys)
    members = member_sets | "AllMembers" >> beam.Flatten()
    _ = (shard_infos, members) | "WriteSnapshotArchive" >> WriteSnapshotArchive(
        str(staged_archive), encryption
    )


def _json_bytes(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode()


def _reconcile(
    expected: Counts, read: dict[str, int], dropped: dict[str, int], written: dict[str, int]
) -> None:
    """Fail the job unless server counts == read and read == written + dropped, per index/type."""
    expected_keys = {f"{i}/{t}": n for (i, t), n in expected.items()}
    problems = []
    for key in sorted(set(expected_keys) | set(read) | set(written) | set(dropped)):
        e, r = expected_keys.get(key, 0), read.get(key, 0)
        w, d = written.get(key, 0), dropped.get(key, 0)
        if e != r:
            problems.append(f"{key}: {e} on the server, {r} read")
        elif r != w + d:
            problems.append(f"{key}: {r} read, {w} written + {d} left out")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        raise JobFailed("create", f"document counts do not reconcile: {shown}")


def _as_job_error(exc: BaseException) -> CfysnapError:
    """The typed error behind a failed job, always as `create failed: …`."""
    error = job_error("create", exc)
    return error if isinstance(error, JobFailed) else JobFailed("create", str(error))
