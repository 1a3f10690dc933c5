"""`restore`: load a snapshot archive into a target manager — checked first, resumable, never
duplicating (spec §3, §4, §6, §7.2, §9).

    run(config) ─ check ──▶ version gate · validate the archive, gathering the plan in the same
                            es_data pass (expected counts, blueprint/deployment ids) · journal
                            state · dirty target? · clashing ids?      (nothing written yet)
                ─ plan ───▶ journal `started`, `checked`
                ─ write ──▶ files: each top-level child copied unless it exists (kept)
                            keys:  <credentials-dir>/<dep>_<node>/agent_key, 0600 in 0700
                            indices: every event index created up front
                ─ graph ──▶ archive ─LoadDocuments─▶ batches (Beam: see transforms.restore)
                ─ reconcile: loaded (journal) == expected (plan pass), per (index, type)
                ─ commit ─▶ journal `agents`, `finished`; summary

Every step that writes records itself in the journal (`core.journal`) once done; `--resume`
replays it and does only what is missing: files and keys already recorded are skipped, es_data
lines of acknowledged batches are not read into the bulk again, the checks are not repeated
(the target then holds this restore's own documents). Every document keeps its `_id` and an
event's index is a function of the event (its own day), so anything sent twice overwrites.

The Beam side reads the archive and writes its staging shards and its journal entries through
Beam's `FileSystems`: the archive, `staging` and the journal must be paths every worker reaches
(shared storage on a cluster; any local path on one machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core import cancel
from core.archive import CREDENTIALS_PREFIX, SnapshotReader, safe_target_path
from core.beam_import import import_beam
from core.crypto import ArchiveKey
from core.digests import file_sha256
from core.errors import CfysnapError, JobFailed, RestoreRefused, job_error
from core.fs import FileSystems
from core.journal import Journal, JournalState
from core.manager import collect_evidence
from core.model import STORAGE_INDEX, Version
from core.progress import Progress
from core.search import Layout, SearchClient, SearchTarget
from core.text import plural
from core.validate import ArchiveLimits, limit_problems, refuse, validate_archive
from transforms.restore_plan import (
    ArchivePlan,
    Batching,
    PlanPass,
    RestoreContext,
    restore_context,
)
from transforms.versions import plan

__all__ = [
    "RestoreConfig",
    "RestoreSummary",
    "run",
    "default_journal_path",
    "check_target",
    "create_indices",
    "copy_files",
    "write_keys",
]

_LOG = logging.getLogger("cfysnap")
_PARTIAL = ".cfysnap-partial-"


# ------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class RestoreConfig:
    """Everything one restore needs."""

    archive: Path
    target: SearchTarget
    """The server (a bare URL given here is taken as `SearchTarget(url)`)."""
    fs_root: Path
    credentials_dir: Path
    target_version: Version = Version.V3_4
    force: bool = False
    resume: bool = False
    journal: str | None = None
    """A `FileSystems` path (folder); default `<fs_root>/.cfysnap/restore-<archive sha256>`."""
    staging: str | None = None
    """A `FileSystems` path for the es_data shards; default a fresh folder in the journal's."""
    dry_run: bool = False
    batching: Batching = field(default_factory=Batching)
    progress: bool = True
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    """How large the archive's members may be (zip bombs are refused before anything is read)."""
    key: ArchiveKey | None = None
    """The key of an archive whose credentials are encrypted (refused before anything is
    written without it, or with another)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", SearchTarget.of(self.target))
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
            lines.append(f"  {key[0] + '/' + key[1]:<{width}}  {exp:>9,}  {got:>11,}{mark}")
        lines.append(f"  {'total':<{width}}  {sum(self.expected.values()):>9,}  {self.documents:>11,}")
        copied = "would copy" if self.dry_run else "copied"
        lines.append(
            f"files: {plural(len(self.files_copied), 'folder')} {copied}, "
            f"{len(self.files_kept):,} kept (already on the target)"
        )
        for kept in self.files_kept[:10]:
            lines.append(f"  kept: {kept}")
        lines.append(f"keys: {len(self.keys):,} {'would be written' if self.dry_run else 'written'}")
        lines.append(
            f"agents: {plural(self.agents_merged, 'node instance')} merged, "
            f"{plural(len(self.agent_warnings), 'warning')}"
        )
        for warning in self.agent_warnings[:10]:
            lines.append(f"  warning: {warning}")
        if not self.dry_run and not self.already_done:
            rate = self.loaded_this_run / self.seconds if self.seconds else 0.0
            lines.append(
                f"{plural(self.loaded_this_run, 'document')} this run in {self.seconds:.1f}s "
                f"({rate:,.0f} docs/s)"
                + (", resumed" if self.resumed else "")
                + f"; journal {self.journal}"
            )
        return "\n".join(lines)



def default_journal_path(fs_root: Path, sha: str) -> str:
    return str(Path(fs_root) / ".cfysnap" / f"restore-{sha}")


# ------------------------------------------------------------------------------------- check
def check_archive(
    archive: Path,
    target_version: Version,
    credentials_dir: Path,
    limits: ArchiveLimits | None,
    workdir: Path,
    key: ArchiveKey | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[RestoreContext, ArchivePlan]:
    """The members' sizes first (from the zip's directory: a zip bomb is refused before anything
    is inflated), the small members next (version gate, agents, key paths), then ONE pass over
    es_data (in two parts side by side when it is large) that validates it and gathers the
    plan; a corrupt archive is reported before a newer one. agents.json's index is made in the
    local folder `workdir`. `meanwhile`: work of the caller's to do while a split pass's child
    finishes its part (`validate_archive`)."""
    limits = limits or ArchiveLimits()
    with SnapshotReader(archive) as reader:
        refuse(limit_problems(reader, limits), archive)
    ctx: RestoreContext | None = None
    refused: CfysnapError | None = None
    try:
        with SnapshotReader(archive, key=key) as reader:
            _ = reader.encryption  # a missing or wrong key is refused here
            ctx = restore_context(reader, target_version, credentials_dir, workdir)
    except CfysnapError as exc:
        refused = exc
    archive_plan = ArchivePlan()
    agents = ctx.agents if ctx is not None else {}
    problems = validate_archive(
        archive, on_hit=PlanPass(archive_plan, agents), limits=limits, split=True,
        meanwhile=meanwhile,
    )
    refuse(problems, archive)
    if refused is not None:
        raise refused  # a valid archive newer than the target
    assert ctx is not None
    archive_plan.raise_problem()
    return ctx, archive_plan


def _import_runner() -> None:
    """Import Beam and the restore's transforms (the first pipeline would, a second later),
    and the search client's transport (its first client would: most of its dependencies are
    Beam's too)."""
    import elastic_transport.client_utils  # noqa: F401

    import_beam()  # without the connectors no job uses (`core.beam_import`)
    import transforms.restore  # noqa: F401


def trusted_batches(journal: Journal, state: JournalState, client: SearchClient) -> JournalState:
    """The journal's batches the target still holds. A batch is journaled once the server
    acknowledged it; but Elasticsearch 1.x syncs its translog only every few seconds, so a server
    killed meanwhile comes back without some acknowledged documents. Where the target holds
    fewer documents of an (index, type) than the journal's batches put there, every batch with
    documents of it is loaded again (by `_id`: nothing doubles); the journal records that those
    batches no longer count."""
    client.refresh()
    on_target = client.logical_indices("*")
    journaled: Counter[str] = Counter()
    for batch in state.batches.values():
        journaled.update(batch["counts"])
    lost = {
        key for key, n in journaled.items()
        if on_target.get(tuple(key.rsplit("/", 1)), 0) < n  # type: ignore[arg-type]
    }
    if not lost:
        return state
    _LOG.warning(
        "the target holds fewer documents than the journal records for %s (a server that lost "
        "acknowledged writes, e.g. killed): loading them again", ", ".join(sorted(lost))
    )
    kept = {d: b for d, b in state.batches.items() if not set(b["counts"]) & lost}
    journal.forget_batches(sorted(set(state.batches) - set(kept)))
    return replace(state, batches=kept)


def journal_state(journal: Journal, sha: str, config: RestoreConfig) -> tuple[JournalState, bool]:
    """What the journal records and whether this run resumes it; refuses a journal of another
    archive, and an unfinished one without `--resume`."""
    state = journal.replay() if journal.exists() else JournalState()
    if state.started and state.started.get("archive_sha256") != sha:
        raise RestoreRefused(f"the journal {journal.path} records a restore of another archive")
    unfinished = state.started is not None and not state.finished
    if unfinished and not config.resume and not config.dry_run:
        raise RestoreRefused(
            f"an unfinished restore of this archive is recorded in {journal.path}; "
            "rerun with --resume to finish it"
        )
    return state, config.resume and unfinished


# ------------------------------------------------------------------------------ the target
def _existing_ids(client: SearchClient, doc_type: str, ids: list[str]) -> list[str]:
    found: list[str] = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        query = {"ids": {"values": chunk}}
        found.extend(hit["_id"] for hit in client.scan(STORAGE_INDEX, [doc_type], query=query))
    return sorted(set(found))


def check_target(
    client: SearchClient, archive_plan: ArchivePlan, force: bool, target_version: Version = Version.V3_4
) -> None:
    """Version (the target's data must allow `target_version`, unless `force`), dirty (any
    blueprint, unless `force`) and clash (blueprint vs blueprint ids, deployment vs deployment ids,
    even with `force`) checks; RestoreRefused names every contradicting fact and clash at once."""
    if client.layout is Layout.TYPED and not client.index_exists(STORAGE_INDEX):
        raise RestoreRefused(
            f"the target has no {STORAGE_INDEX} index: it is not an installed Cloudify manager "
            "(a manager's bootstrap creates that index with its own mappings; cfysnap does not "
            "make them up)"
        )
    # The target's own data (its event indices, its documents' fields and types) says which
    # versions it can be (core.manager); a freshly installed manager may say nothing, which is
    # fine. A fact that rules out --target-version means the archive would be upgraded for another
    # manager than this one: refused, as loading 3.4 documents into a 3.2 manager would lose data.
    against = [str(e) for e in collect_evidence(client) if target_version not in e.versions]
    if against and not force:
        raise RestoreRefused(
            f"the target does not look like a {target_version.value} manager (--target-version); "
            "nothing was changed (use --force to restore anyway)",
            against,
        )
    blueprints = client.count(STORAGE_INDEX, "blueprint")
    if blueprints and not force:
        raise RestoreRefused(
            f"the target manager is not empty ({plural(blueprints, 'blueprint')}); restore into a clean "
            "manager, or use --force to restore into this one (clashing ids are refused anyway)"
        )
    clashes = [f"blueprint {i}" for i in _existing_ids(client, "blueprint", archive_plan.blueprint_ids)]
    clashes += [
        f"deployment {i}" for i in _existing_ids(client, "deployment", archive_plan.deployment_ids)
    ]
    if clashes:
        raise RestoreRefused(
            f"{plural(len(clashes), 'id')} of the archive already exist on the target; nothing was changed",
            clashes,
        )


def create_indices(client: SearchClient, pairs: list[tuple[str, str]], threads: int = 8) -> None:
    """Create the physical index of every (index, type) the restore writes, once, up front and
    concurrently (creating an index is a cluster-state change of ~0.2–0.3 s; the server batches
    concurrent ones). Existing indices are kept as they are (`ensure_index`)."""
    if not pairs:
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(pairs))) as pool:
        list(pool.map(lambda pair: client.ensure_index(*pair), sorted(pairs)))


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
    for child, members in reader.file_children().items():
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
    names = reader.key_names()
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



# ------------------------------------------------------------------------------------- run
def run(config: RestoreConfig, beam_args: Sequence[str] = ()) -> RestoreSummary:
    """Restore `config.archive` into the target; see the module docstring for the order.

    Raises CorruptArchive (invalid archive, before anything is written), RestoreRefused (newer
    archive, dirty or clashing target, unfinished journal without --resume),
    SearchServerError, BulkLoadError, JobFailed (counts do not reconcile, or a pipeline failure,
    with what was done)."""
    # a local work folder for the run: agents.json's index (staged for the workers in the
    # staging folder; removed whatever happens)
    with tempfile.TemporaryDirectory(prefix="cfysnap-restore-") as workdir:
        return _restore(config, beam_args, Path(workdir))


def _restore(config: RestoreConfig, beam_args: Sequence[str], workdir: Path) -> RestoreSummary:
    started = time.monotonic()
    archive = Path(config.archive).absolute()
    fs_root = Path(config.fs_root).absolute()
    credentials_dir = Path(config.credentials_dir).absolute()

    # the check: its es_data pass in two processes where it is large (`core.validate`), Beam
    # imported here while the child finishes its part; then Beam's import if it was not, so a
    # broken install fails before anything is written too
    ctx, archive_plan = check_archive(
        archive, config.target_version, credentials_dir, config.limits, workdir, config.key,
        meanwhile=_import_runner,
    )
    _import_runner()
    sha = file_sha256(archive)
    journal = Journal(config.journal or default_journal_path(fs_root, sha))
    state, resuming = journal_state(journal, sha, config)
    if resuming and not state.finished:
        with config.target.connect() as client:
            state = trusted_batches(journal, state, client)
    for warning in ctx.agent_warnings:
        _LOG.warning("%s (skipped)", warning)
    summary = RestoreSummary(
        archive=str(config.archive),
        source_version=ctx.source.value,
        target_version=ctx.target.value,
        steps=[s.name for s in plan(ctx.source, ctx.target)],
        expected=dict(archive_plan.expected),
        loaded={},
        agents_merged=archive_plan.agents_matched,
        agent_warnings=[str(w) for w in ctx.agent_warnings],
        journal=journal.path,
        resumed=resuming,
        dry_run=config.dry_run,
    )
    if config.resume and state.finished:
        return _already_done(summary, state)

    with SnapshotReader(archive, key=config.key) as reader, config.target.connect() as client:
        if not (resuming and state.checked):
            check_target(client, archive_plan, config.force, config.target_version)
        if config.dry_run:
            return _dry_run(summary, reader, fs_root, archive_plan)
        if not resuming:
            _start(journal, sha, config, client, archive)
            state = JournalState(started={"archive_sha256": sha})
        done: dict[str, Any] = {}
        try:
            summary.files_copied, summary.files_kept = copy_files(reader, fs_root, state, journal)
            done["files"] = len(summary.files_copied)
            summary.keys = write_keys(reader, credentials_dir, state, journal)
            done["keys"] = len(summary.keys)
            create_indices(client, list(archive_plan.expected))
            _load_documents(config, ctx, archive, journal, state, archive_plan, beam_args)
            client.flush()  # durable before the journal says finished (see trusted_batches)
            client.refresh()
        except Exception as exc:  # noqa: BLE001 - a runner wraps the DoFn's error
            # whatever failed once writing began: say what was done and how to finish
            loaded = sum(journal.replay().loaded_counts().values())
            done.update(documents=loaded, journal=journal.path)
            error = job_error("restore", exc, done)
            reason = error.reason if isinstance(error, JobFailed) else str(error)
            raise JobFailed("restore", f"{reason}; finish it with --resume", done) from None

    _reconcile(summary, journal, state)
    journal.append(
        {"event": "agents", "merged": archive_plan.agents_matched, "warnings": summary.agent_warnings}
    )
    cancel.checkpoint()  # an interrupted restore is never recorded as finished
    journal.append({"event": "finished"})
    summary.seconds = time.monotonic() - started
    return summary


def _start(
    journal: Journal, sha: str, config: RestoreConfig, client: SearchClient, archive: Path
) -> None:
    batching = config.batching
    journal.start(
        {
            "archive": str(archive),
            "archive_sha256": sha,
            "target": client.url,
            "target_version": config.target_version.value,
            "lines_per_shard": batching.lines_per_shard,
            "batch_docs": batching.batch_docs,
            "batch_bytes": batching.batch_bytes,
        }
    )
    journal.append({"event": "checked"})


def _already_done(summary: RestoreSummary, state: JournalState) -> RestoreSummary:
    summary.already_done = True
    summary.loaded = _counts_by_key(state.loaded_counts())
    summary.files_copied = sorted(p for p, a in state.files.items() if a == "copied")
    summary.files_kept = sorted(p for p, a in state.files.items() if a == "kept")
    summary.keys = sorted(state.keys)
    return summary


def _dry_run(
    summary: RestoreSummary, reader: SnapshotReader, fs_root: Path, archive_plan: ArchivePlan
) -> RestoreSummary:
    for child in reader.file_children():
        target = safe_target_path(fs_root, child)
        (summary.files_kept if _exists(target) else summary.files_copied).append(child)
    summary.keys = reader.key_names()
    summary.loaded = dict(archive_plan.expected)
    return summary


def _load_documents(
    config: RestoreConfig,
    ctx: RestoreContext,
    archive: Path,
    journal: Journal,
    state: JournalState,
    archive_plan: ArchivePlan,
    beam_args: Sequence[str],
) -> None:
    """The Beam side (graph): every es_data line not yet loaded, through the restore's changes,
    bulk-loaded; the staging folder removed afterwards whatever happens."""
    already = sum(state.loaded_counts().values())
    remaining = sum(archive_plan.expected.values()) - already
    staging = config.staging or FileSystems.join(journal.path, f"staging-{uuid.uuid4().hex[:8]}")
    if not FileSystems.exists(staging):
        FileSystems.mkdirs(staging)
        if "://" not in staging:  # a local folder: its shards hold broker secrets
            os.chmod(staging, 0o700)
    import apache_beam as beam

    from core.options import beam_options
    from transforms.restore import LoadDocuments

    try:
        with Progress("restore", total=remaining, enabled=config.progress):
            with beam.Pipeline(options=beam_options(beam_args)) as pipeline:
                _ = (
                    pipeline
                    | "Archive" >> beam.Create([str(archive)])
                    | "LoadDocuments"
                    >> LoadDocuments(
                        ctx, config.target, config.batching, staging, state.loaded_lines(), journal
                    )
                )
    finally:
        if FileSystems.exists(staging):
            FileSystems.delete([staging])


def _reconcile(summary: RestoreSummary, journal: Journal, state: JournalState) -> None:
    """Loaded (journal) == expected (plan pass), per (index, type); JobFailed otherwise."""
    final = journal.replay()
    summary.loaded = _counts_by_key(final.loaded_counts())
    summary.loaded_this_run = summary.documents - sum(state.loaded_counts().values())
    if summary.loaded != summary.expected:
        diff = sorted(
            f"{i}/{t}: expected {summary.expected.get((i, t), 0)}, "
            f"loaded {summary.loaded.get((i, t), 0)}"
            for i, t in set(summary.expected) | set(summary.loaded)
            if summary.expected.get((i, t), 0) != summary.loaded.get((i, t), 0)
        )
        raise JobFailed(
            "restore",
            "loaded counts do not reconcile with the archive: " + "; ".join(diff[:5]),
            {"documents": summary.documents, "journal": journal.path},
        )


def _counts_by_key(counts: dict[str, int]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for key, n in counts.items():
        index, _, doc_type = key.rpartition("/")
        out[(index, doc_type)] = n
    return out
