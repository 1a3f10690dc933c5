"""`restore`: load a snapshot archive into a target manager — checked first, resumable, never
duplicating (issue 5; spec §3, §4, §6, §7.2, §9).

    run(config) ─ check ─▶ version gate · validate archive, gathering the plan in the same
                           es_data pass (expected counts, blueprint/deployment ids, event days)
                           · dirty target? · clashing ids?            (nothing written yet)
                ─ write ─▶ journal `started`, `checked`
                           files: each top-level child copied unless it exists (kept)
                           keys:  <credentials-dir>/<dep>_<node>/agent_key, 0600 in 0700
                           indices: every target (index, type) created up front
                           documents (Beam):
        archive ─SplitEsDataIntoShards─▶ Shard ─RestoreDocuments(agents)─▶ (line, restored hit)
                (skip loaded lines · upgrade · restore changes, one fused step) ─BulkLoad─▶
                           reconcile: loaded (journal) == expected (plan pass), per (index, type)
                ─ done ──▶ journal `agents`, `finished`; summary

Every step that writes appends to the journal (`pipelines.journal`) once done; `--resume`
replays it and does only what is missing: files and keys already recorded are skipped, es_data
lines of acknowledged batches are not read into the bulk again, the checks are not repeated
(the target then holds this restore's own documents). Every document keeps its `_id` and an
event's index is a function of the event (its own day), so anything sent twice overwrites.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines.errors import (
    CfysnapError,
    CorruptArchive,
    JobFailed,
    RestoreRefused,
    job_error,
)
from pipelines.io.archive import CREDENTIALS_PREFIX, SnapshotReader, parse_hit, safe_target_path
from pipelines.io.search import Layout
from pipelines.journal import Journal, JournalState
from pipelines.model import FILE_FOLDERS, STORAGE_INDEX, Hit, Version
from pipelines.options import beam_options
from pipelines.progress import Progress
from pipelines.validate import validate_archive
from transforms.bulk_load import BulkLoad, NumberedHit
from transforms.restore_docs import (
    Agent,
    AgentWarning,
    flatten_agents,
    key_target,
    restore_hit,
    restored_key,
)
from transforms.shards import Shard, SplitEsDataIntoShards
from transforms.versions import DowngradeRefused, plan, upgrade_agents, upgrade_hit

__all__ = [
    "RestoreConfig",
    "RestoreSummary",
    "ArchivePlan",
    "run",
    "file_sha256",
    "default_journal_path",
    "restore_context",
    "restore_agents",
    "RestoreContext",
    "RestoreDocuments",
    "LoadDocuments",
    "check_target",
    "create_indices",
    "copy_files",
    "write_keys",
    "file_children",
    "key_names",
    "plan_pass",
]

_LOG = logging.getLogger("cfysnap")
_PARTIAL = ".cfysnap-partial-"


# ------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class RestoreConfig:
    """Everything one restore needs. `layout` is "typed"/"typeless" or None (by server version)."""

    archive: Path
    es_url: str
    fs_root: Path
    credentials_dir: Path
    target_version: Version = Version.V3_4
    force: bool = False
    resume: bool = False
    journal: Path | None = None
    dry_run: bool = False
    layout: str | None = None
    batch_docs: int = 2000
    batch_bytes: int = 8_000_000
    lines_per_shard: int = 10_000
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_docs < 1 or self.batch_bytes < 1 or self.lines_per_shard < 1:
            raise ValueError("batch_docs, batch_bytes and lines_per_shard must be positive")
        if self.resume and self.dry_run:
            raise ValueError("--resume and --dry-run cannot be combined")


@dataclass
class RestoreSummary:
    """What a restore did (or, with `dry_run`, would do). Counts keyed by (index, type)."""

    archive: str
    source_version: str
    target_version: str
    steps: list[str]
    expected: dict[tuple[str, str], int]
    loaded: dict[tuple[str, str], int]
    files_copied: list[str] = field(default_factory=list)
    files_kept: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    agents_merged: int = 0
    agent_warnings: list[str] = field(default_factory=list)
    journal: str = ""
    resumed: bool = False
    dry_run: bool = False
    already_done: bool = False
    seconds: float = 0.0
    loaded_this_run: int = 0

    @property
    def documents(self) -> int:
        return sum(self.loaded.values())

    def render(self) -> str:
        head = "restore (dry run: nothing written)" if self.dry_run else "restore"
        lines = [
            f"{head}: {self.archive} ({self.source_version} -> {self.target_version}"
            + (f", steps {', '.join(self.steps)}" if self.steps else "")
            + ")"
        ]
        if self.already_done:
            lines.append(f"already finished according to {self.journal}; nothing to do")
        width = max([len(f"{i}/{t}") for i, t in self.expected] + [20])
        verb = "would write" if self.dry_run else "loaded"
        lines.append(f"  {'index/type':<{width}}  {'expected':>9}  {verb:>11}")
        for key in sorted(set(self.expected) | set(self.loaded)):
            exp, got = self.expected.get(key, 0), self.loaded.get(key, 0)
            mark = "" if exp == got else "  MISMATCH"
            lines.append(f"  {key[0] + '/' + key[1]:<{width}}  {exp:>9}  {got:>11}{mark}")
        lines.append(f"  {'total':<{width}}  {sum(self.expected.values()):>9}  {self.documents:>11}")
        copied = "would copy" if self.dry_run else "copied"
        lines.append(
            f"files: {len(self.files_copied)} folder(s) {copied}, "
            f"{len(self.files_kept)} kept (already on the target)"
        )
        for kept in self.files_kept[:10]:
            lines.append(f"  kept: {kept}")
        lines.append(f"keys: {len(self.keys)} {'would be written' if self.dry_run else 'written'}")
        lines.append(
            f"agents: {self.agents_merged} node instance(s) merged, "
            f"{len(self.agent_warnings)} warning(s)"
        )
        for warning in self.agent_warnings[:10]:
            lines.append(f"  warning: {warning}")
        if not self.dry_run and not self.already_done:
            rate = self.loaded_this_run / self.seconds if self.seconds else 0.0
            lines.append(
                f"{self.loaded_this_run} documents this run in {self.seconds:.1f}s ({rate:.0f} docs/s)"
                + (", resumed" if self.resumed else "")
                + f"; journal {self.journal}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- the plan
@dataclass
class ArchivePlan:
    """What the plan pass over es_data found: expected documents per target (index, type),
    the blueprint and deployment ids the archive restores, how many instances get agent data."""

    expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    blueprint_ids: list[str] = field(default_factory=list)
    deployment_ids: list[str] = field(default_factory=list)
    agents_matched: int = 0
    problem: CorruptArchive | None = None
    """The first hit the restore could not place (an event with no usable time)."""

    def add(self, lineno: int, hit: Hit, agents: dict[str, tuple[str, Agent]]) -> None:
        """Account for one es_data hit (line `lineno`)."""
        try:
            index, doc_type, doc_id = restored_key(hit)
        except CorruptArchive as exc:
            if self.problem is None:
                self.problem = CorruptArchive(exc.member, lineno, exc.reason)
            return
        self.expected[(index, doc_type)] += 1
        if index == STORAGE_INDEX:
            if doc_type == "blueprint":
                self.blueprint_ids.append(doc_id)
            elif doc_type == "deployment":
                self.deployment_ids.append(doc_id)
            elif doc_type == "node_instance" and doc_id in agents:
                entry_dep, agent = agents[doc_id]
                if agent and hit["_source"].get("deployment_id") == entry_dep:
                    self.agents_matched += 1

    def raise_problem(self) -> None:
        if self.problem is not None:
            raise self.problem


@dataclass(frozen=True)
class RestoreContext:
    """The restore's inputs besides es_data, shared by `restore` and `verify`."""

    source: Version
    target: Version
    key_paths: dict[str, str]
    """node storage `_id` → absolute key path on the target."""
    agents: dict[str, tuple[str, Agent]]
    agent_warnings: list[AgentWarning]

    def expected_hit(self, hit: Hit) -> Hit:
        """The hit as the restore writes it: version upgrade, then the restore's own changes."""
        steps = plan(self.source, self.target)
        return restore_hit(upgrade_hit(hit, steps), key_paths=self.key_paths, agents=self.agents)


def key_names(reader: SnapshotReader) -> list[str]:
    """`<deployment>_<node>` of every `snapshot-credentials/<name>/agent_key` member."""
    names = []
    for name in reader.file_names():
        if name.startswith(CREDENTIALS_PREFIX) and name.endswith("/agent_key"):
            middle = name[len(CREDENTIALS_PREFIX) : -len("/agent_key")]
            if middle and "/" not in middle:
                names.append(middle)
    return sorted(names)


def restore_agents(
    archive: str | Path, source: Version, target: Version
) -> dict[str, tuple[str, Agent]]:
    """agents.json of `archive`, upgraded from `source` to `target` and flattened (instance id →
    (deployment, entry)); broken deployments left out, as `restore_context` reports them."""
    with SnapshotReader(archive) as reader:
        agents, _ = flatten_agents(upgrade_agents(reader.agents(), plan(source, target)))
    return agents


def restore_context(
    reader: SnapshotReader, target: Version, credentials_dir: Path | None
) -> RestoreContext:
    """Version gate (RestoreRefused for a newer archive) and the small inputs of a restore."""
    source = reader.version
    try:
        steps = plan(source, target)
    except DowngradeRefused:
        raise RestoreRefused(
            f"the archive is a {source.value} snapshot, newer than the target version "
            f"{target.value}; restore it into a {source.value} (or newer) manager"
        ) from None
    agents, warnings = flatten_agents(upgrade_agents(reader.agents(), steps))
    paths = (
        {name: key_target(credentials_dir, name) for name in key_names(reader)}
        if credentials_dir is not None
        else {}
    )
    return RestoreContext(source, target, paths, agents, warnings)


def plan_pass(reader: SnapshotReader, ctx: RestoreContext) -> ArchivePlan:
    """One streaming pass over es_data, before anything is written. Raises CorruptArchive for an
    event with no usable time (the restore could not place it). `run` does not make this pass:
    it gathers the same plan inside validation's pass (`ArchivePlan.add` as `on_hit`)."""
    result = ArchivePlan()
    for lineno, line in reader.iter_lines():
        result.add(lineno, parse_hit(line, lineno), ctx.agents)
    result.raise_problem()
    return result


# ------------------------------------------------------------------------------------ helpers
def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (the archive for its journal name, restored files)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def default_journal_path(fs_root: Path, sha: str) -> Path:
    return Path(fs_root) / ".cfysnap" / f"restore-{sha}.jsonl"


def _client(config: RestoreConfig) -> Any:
    from pipelines.io.search import Layout, SearchClient

    layout = Layout(config.layout) if config.layout else None
    return SearchClient(config.es_url, layout=layout)


@dataclass(frozen=True)
class _ClientFactory:
    """Picklable: builds a SearchClient on each worker."""

    url: str
    layout: str | None

    def __call__(self) -> Any:
        from pipelines.io.search import Layout, SearchClient

        return SearchClient(self.url, layout=Layout(self.layout) if self.layout else None)


def _existing_ids(client: Any, doc_type: str, ids: list[str]) -> list[str]:
    found: list[str] = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        query = {"ids": {"values": chunk}}
        found.extend(hit["_id"] for hit in client.scan(STORAGE_INDEX, [doc_type], query=query))
    return sorted(set(found))


def check_target(client: Any, archive_plan: ArchivePlan, force: bool) -> None:
    """Dirty (any blueprint, unless `force`) and clash (blueprint vs blueprint ids, deployment vs
    deployment ids, even with `force`) checks; RestoreRefused names every clash at once."""
    if client.layout is Layout.TYPED and not client.index_exists(STORAGE_INDEX):
        raise RestoreRefused(
            f"the target has no {STORAGE_INDEX} index: it is not an installed Cloudify manager "
            "(a manager's bootstrap creates that index with its own mappings; cfysnap does not "
            "make them up)"
        )
    blueprints = client.count(STORAGE_INDEX, "blueprint")
    if blueprints and not force:
        raise RestoreRefused(
            f"the target manager is not empty ({blueprints} blueprint(s)); restore into a clean "
            "manager, or use --force to restore into this one (clashing ids are refused anyway)"
        )
    clashes = [f"blueprint {i}" for i in _existing_ids(client, "blueprint", archive_plan.blueprint_ids)]
    clashes += [
        f"deployment {i}" for i in _existing_ids(client, "deployment", archive_plan.deployment_ids)
    ]
    if clashes:
        raise RestoreRefused(
            f"{len(clashes)} id(s) of the archive already exist on the target; nothing was changed",
            clashes,
        )


def create_indices(client: Any, pairs: list[tuple[str, str]], threads: int = 8) -> None:
    """Create the physical index of every (index, type) the restore writes, once, up front and
    concurrently (creating an index is a cluster-state change of ~0.2–0.3 s; the server batches
    concurrent ones). Existing indices are kept as they are (`ensure_index`)."""
    if not pairs:
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(pairs))) as pool:
        list(pool.map(lambda pair: client.ensure_index(*pair), sorted(pairs)))


def file_children(reader: SnapshotReader) -> dict[str, list[str]]:
    """`<folder>/<child>` → its member names, for the file-server folders of the archive."""
    children: dict[str, list[str]] = {}
    for name in reader.file_names():
        parts = name.split("/")
        if parts[0] in FILE_FOLDERS and len(parts) >= 2 and parts[1]:
            children.setdefault(f"{parts[0]}/{parts[1]}", []).append(name)
    return dict(sorted(children.items()))


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def copy_files(
    reader: SnapshotReader,
    fs_root: Path,
    state: JournalState,
    journal: Journal | None,
) -> tuple[list[str], list[str]]:
    """Copy each top-level child (`blueprints/<id>`, …) that the target lacks; keep the others.

    A child is extracted into a hidden sibling and renamed into place, so it appears whole or
    not at all; nothing lands outside `fs_root` (`safe_target_path`). Returns (copied, kept)."""
    copied: list[str] = []
    kept: list[str] = []
    modes = {info.filename: (info.external_attr >> 16) & 0o777 for info in reader.infos()}
    for child, members in file_children(reader).items():
        if child in state.files:
            (copied if state.files[child] == "copied" else kept).append(child)
            continue
        folder, name = child.split("/", 1)
        dest = safe_target_path(fs_root, child)
        if _exists(dest):
            kept.append(child)
            if journal is not None:
                journal.append({"event": "file", "path": child, "action": "kept"})
            continue
        partial = safe_target_path(fs_root, f"{folder}/{_PARTIAL}{name}")
        if _exists(partial):
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        for member in members:
            rel = member[len(child) :]
            target = safe_target_path(fs_root, f"{folder}/{_PARTIAL}{name}{rel}")
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = modes.get(member, 0o644)
            with reader.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(target, 0o755 if mode & 0o111 else 0o644)
        os.rename(partial, dest)
        copied.append(child)
        if journal is not None:
            journal.append({"event": "file", "path": child, "action": "copied"})
    return copied, kept


def write_keys(
    reader: SnapshotReader,
    credentials_dir: Path,
    state: JournalState,
    journal: Journal | None,
) -> list[str]:
    """Write each agent key to `<credentials_dir>/<dep>_<node>/agent_key`: mode 0600 in a 0700
    folder, written to a temporary file and renamed (whole or absent). Returns the names."""
    written = []
    names = key_names(reader)
    if names:
        credentials_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in names:
        written.append(name)
        if name in state.keys:
            continue
        target = safe_target_path(credentials_dir, f"{name}/agent_key")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(target.parent, 0o700)
        temp = target.with_name(f".agent_key.{os.getpid()}.partial")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as dst, reader.open(f"{CREDENTIALS_PREFIX}{name}/agent_key") as src:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, target)
        if journal is not None:
            journal.append({"event": "key", "name": name})
    return written


# ------------------------------------------------------------------------------- transforms
class _RestoreShardFn(beam.DoFn):
    """One shard → its `(line, restored hit)`s: parse, skip lines already loaded (journal),
    version upgrade, the restore's own changes. One fused step: Beam's per-step cost is paid
    once per shard, not four times per document."""

    def __init__(
        self,
        source: Version,
        target: Version,
        key_paths: dict[str, str],
        loaded: list[tuple[int, int]],
    ) -> None:
        self._source, self._target, self._key_paths = source, target, key_paths
        self._starts = [a for a, _ in loaded]
        self._ends = [b for _, b in loaded]
        self._read = beam.metrics.Metrics.counter("cfysnap", "documents_read")

    def setup(self) -> None:
        self._steps = plan(self._source, self._target)

    def _loaded(self, line: int) -> bool:
        i = bisect.bisect_right(self._starts, line) - 1
        return i >= 0 and line <= self._ends[i]

    def process(
        self, shard: Shard, agents: dict[str, tuple[str, Agent]]
    ) -> Iterator[NumberedHit]:
        steps, key_paths, skip = self._steps, self._key_paths, bool(self._starts)
        n = 0
        with FileSystems.open(shard.path) as f:
            for offset, line in enumerate(f):
                lineno = shard.first_line + offset
                if not line.strip() or (skip and self._loaded(lineno)):
                    continue
                try:
                    hit = upgrade_hit(parse_hit(line, lineno), steps)
                    hit = restore_hit(hit, key_paths=key_paths, agents=agents)
                except CorruptArchive as exc:
                    raise CorruptArchive(exc.member, lineno, exc.reason) from None
                n += 1
                yield lineno, hit
        self._read.inc(n)


class RestoreDocuments(beam.PTransform):
    """`Shard` → `(es_data line, hit as restored)`: lines of batches the journal records as
    loaded are skipped (resume); the rest are upgraded from `source` to `target` and given the
    restore's own changes (event index by own day, node key paths, agents.json merged into node
    instances; `agents` is a small side input). The line number stays with each hit: the journal
    records loaded batches by line."""

    def __init__(
        self,
        source: Version,
        target: Version,
        key_paths: dict[str, str],
        agents: beam.PCollection,
        loaded_lines: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__()
        plan(source, target)  # bad versions fail here, not mid-pipeline
        self._fn = _RestoreShardFn(source, target, key_paths, sorted(loaded_lines))
        self._agents = agents

    def expand(self, shards: beam.PCollection[Shard]) -> beam.PCollection[NumberedHit]:
        return shards | "ParseUpgradeRestore" >> beam.ParDo(
            self._fn, beam.pvalue.AsSingleton(self._agents)
        )


class LoadDocuments(beam.PTransform):
    """archive path → `LoadedBatch`es: the whole document side of a restore."""

    def __init__(
        self,
        ctx: RestoreContext,
        config: RestoreConfig,
        staging: str,
        loaded_lines: list[tuple[int, int]],
        journal: Journal,
    ) -> None:
        super().__init__()
        self._ctx, self._config, self._staging = ctx, config, staging
        self._loaded, self._journal = loaded_lines, journal

    def expand(self, archive_paths: beam.PCollection[str]) -> beam.PCollection:
        ctx, config = self._ctx, self._config
        # read in the pipeline from the archive, not pickled into it: agents.json is a few MB
        # at 100k documents, and beam.Create would infer its type and bz2-pickle it (~4 s)
        agents = archive_paths | "ReadAgentsJson" >> beam.Map(
            restore_agents, ctx.source, ctx.target
        )
        return (
            archive_paths
            | "SplitEsDataIntoShards"
            >> SplitEsDataIntoShards(self._staging, config.lines_per_shard)
            | "RestoreDocuments"
            >> RestoreDocuments(ctx.source, ctx.target, ctx.key_paths, agents, self._loaded)
            | "BulkLoad"
            >> BulkLoad(
                _ClientFactory(config.es_url, config.layout),
                max_docs=config.batch_docs,
                max_bytes=config.batch_bytes,
                journal=self._journal,
            )
        )


# ------------------------------------------------------------------------------------- run
def _counts_by_key(counts: dict[str, int]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for key, n in counts.items():
        index, _, doc_type = key.rpartition("/")
        out[(index, doc_type)] = n
    return out


def run(config: RestoreConfig, beam_args: tuple[str, ...] | list[str] = ()) -> RestoreSummary:
    """Restore `config.archive` into the target; see the module docstring for the order.

    Raises CorruptArchive (invalid archive, before anything is written), RestoreRefused (newer
    archive, dirty or clashing target, unfinished journal without --resume),
    SearchServerError, BulkLoadError, JobFailed (counts do not reconcile, or a pipeline failure,
    with what was done)."""
    started = time.monotonic()
    archive = Path(config.archive)
    fs_root = Path(config.fs_root).absolute()
    credentials_dir = Path(config.credentials_dir).absolute()

    # the small members first (version gate, agents, key paths), then ONE pass over es_data that
    # validates it and gathers the plan; a corrupt archive is reported by validation first
    ctx: RestoreContext | None = None
    refused: CfysnapError | None = None
    try:
        with SnapshotReader(archive) as reader:
            ctx = restore_context(reader, config.target_version, credentials_dir)
    except CfysnapError as exc:
        refused = exc
    archive_plan = ArchivePlan()
    agents = ctx.agents if ctx is not None else {}
    problems = validate_archive(
        archive, on_hit=lambda lineno, hit: archive_plan.add(lineno, hit, agents)
    )
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s); see `cfysnap validate`)" if len(problems) > 1 else ""
        raise CorruptArchive(first.member, first.line, first.reason + more, str(archive))
    if refused is not None:
        raise refused  # a valid archive newer than the target
    assert ctx is not None
    archive_plan.raise_problem()

    sha = file_sha256(archive)
    journal = Journal(config.journal or default_journal_path(fs_root, sha))
    state = journal.replay() if journal.exists() else JournalState()
    if state.started and state.started.get("archive_sha256") != sha:
        raise RestoreRefused(f"the journal {journal.path} records a restore of another archive")
    unfinished = state.started is not None and not state.finished
    if unfinished and not config.resume and not config.dry_run:
        raise RestoreRefused(
            f"an unfinished restore of this archive is recorded in {journal.path}; "
            "rerun with --resume to finish it"
        )
    resuming = config.resume and unfinished

    with SnapshotReader(archive) as reader:
        for warning in ctx.agent_warnings:
            _LOG.warning("%s (skipped)", warning)
        steps = [s.name for s in plan(ctx.source, ctx.target)]
        summary = RestoreSummary(
            archive=str(archive),
            source_version=ctx.source.value,
            target_version=ctx.target.value,
            steps=steps,
            expected=dict(archive_plan.expected),
            loaded={},
            agents_merged=archive_plan.agents_matched,
            agent_warnings=[str(w) for w in ctx.agent_warnings],
            journal=str(journal.path),
            resumed=resuming,
            dry_run=config.dry_run,
        )
        if config.resume and state.finished:
            summary.already_done = True
            summary.loaded = _counts_by_key(state.loaded_counts())
            summary.files_copied = sorted(p for p, a in state.files.items() if a == "copied")
            summary.files_kept = sorted(p for p, a in state.files.items() if a == "kept")
            summary.keys = sorted(state.keys)
            return summary

        with _client(config) as client:
            if not (resuming and state.checked):
                check_target(client, archive_plan, config.force)

            if config.dry_run:
                for child in file_children(reader):
                    target = safe_target_path(fs_root, child)
                    (summary.files_kept if _exists(target) else summary.files_copied).append(child)
                summary.keys = key_names(reader)
                summary.loaded = dict(archive_plan.expected)
                return summary

            if not resuming:
                journal.start(
                    {
                        "archive": str(archive),
                        "archive_sha256": sha,
                        "target": client.url,
                        "target_version": ctx.target.value,
                        "lines_per_shard": config.lines_per_shard,
                        "batch_docs": config.batch_docs,
                        "batch_bytes": config.batch_bytes,
                    }
                )
                state = JournalState(started={"archive_sha256": sha})
                journal.append({"event": "checked"})
            done: dict[str, Any] = {}
            try:
                summary.files_copied, summary.files_kept = copy_files(
                    reader, fs_root, state, journal
                )
                done["files"] = len(summary.files_copied)
                summary.keys = write_keys(reader, credentials_dir, state, journal)
                done["keys"] = len(summary.keys)
                create_indices(client, list(archive_plan.expected))
                already = sum(state.loaded_counts().values())
                remaining = sum(archive_plan.expected.values()) - already
                staging = tempfile.mkdtemp(prefix="cfysnap-restore-")
                try:
                    with Progress("restore", total=remaining, enabled=config.progress):
                        with beam.Pipeline(options=beam_options(beam_args)) as pipeline:
                            _ = (
                                pipeline
                                | "Archive" >> beam.Create([str(archive)])
                                | "LoadDocuments"
                                >> LoadDocuments(
                                    ctx, config, staging, state.loaded_lines(), journal
                                )
                            )
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                client.refresh()
            except CfysnapError:
                raise
            except Exception as exc:  # noqa: BLE001 - a runner wraps the DoFn's error
                loaded = sum(journal.replay().loaded_counts().values())
                raise job_error(
                    "restore", exc, {**done, "documents": loaded, "journal": str(journal.path)}
                ) from None

        final = journal.replay()
        summary.loaded = _counts_by_key(final.loaded_counts())
        summary.loaded_this_run = summary.documents - sum(state.loaded_counts().values())
        if summary.loaded != summary.expected:
            diff = sorted(
                f"{i}/{t}: expected {summary.expected.get((i, t), 0)}, loaded {summary.loaded.get((i, t), 0)}"
                for i, t in set(summary.expected) | set(summary.loaded)
                if summary.expected.get((i, t), 0) != summary.loaded.get((i, t), 0)
            )
            raise JobFailed(
                "restore",
                "loaded counts do not reconcile with the archive: " + "; ".join(diff[:5]),
                {"documents": summary.documents, "journal": str(journal.path)},
            )
        journal.append(
            {
                "event": "agents",
                "merged": archive_plan.agents_matched,
                "warnings": summary.agent_warnings,
            }
        )
        journal.append({"event": "finished", "documents": summary.documents})
    summary.seconds = time.monotonic() - started
    return summary

