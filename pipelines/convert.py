"""`convert`: upgrade a snapshot archive to a newer format version, archive to archive (§2, §3, §6).

    plan(source version, target) ─▶ Beam pipeline into staging ─▶ reconcile counts ─┐
    validate (child process, alongside) ────────────────────────────────────────────┴▶ rename into place

    archive ─SplitEsDataIntoShards─▶ Shard ─UpgradeShards(steps)─▶ ShardInfo + key digests
            ─DeduplicateShards─▶ ShardInfo ─────────────────────────┐
    other members (metadata.json and agents.json upgraded, the rest  ├─WriteSnapshotArchive─▶ archive
    carried over byte for byte, manifest.json rebuilt) ──────────────┘

Contracts:
- Nothing appears at `output` unless the source validates (`core.validate`); the validation
  runs in a child process while the pipeline converts into staging, and the job waits for it
  before the rename. An invalid source fails with its first problem and leaves nothing behind.
  A downgrade raises `DowngradeRefused` before any work.
- Every step only adds what is missing: converting an archive already at the target leaves its
  documents identical, and 3.2 → 3.4 equals 3.2 → 3.3 → 3.4. Unknown types, fields and members
  pass through untouched.
- Memory does not grow with the number of documents, apart from the duplicate search's 8 bytes
  per document of key digests (see `transforms.upgrade`) and agents.json, which validation and
  the agents step load whole (it grows with the deployments' compute instances, not with events
  or logs: ~3 MB for a `ManagerSpec.sized` archive of 300k documents; its upgraded form is
  staged as a file, not held in the pipeline).
- Counts are reconciled (read = written + duplicates dropped, and the source manifest's total
  when there is one) before the archive appears at `output`; a failed job leaves no archive and
  removes its staging folder.

`dry_run` is a plain single-process streaming pass, not a Beam job: it writes nothing, needs no
staging space and its per-type, per-step counts are exact without collecting Beam counters by
name; it is as fast as validating the archive once more.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core import cancel
from core import progress as progress_mod
from core.archive import (
    AGENTS,
    ES_DATA,
    MANIFEST,
    METADATA,
    SnapshotReader,
    json_object_chunks,
    parse_hit,
)
from core.beam_import import import_beam
from core.crypto import ArchiveKey, Encryption, encrypt_agents
from core.digests import key_digest
from core.errors import CfysnapError, CorruptArchive, JobFailed, job_error
from core.model import Version, hit_key, parse_version
from core.validate import ArchiveLimits, Problem, limit_problems, refuse, validate_archive
from transforms.versions import Step, describe, plan, step_changes, upgrade_agents, upgrade_metadata

__all__ = [
    "ConvertConfig",
    "ConvertSummary",
    "DryRunReport",
    "run",
    "dry_run",
    "converted_members",
    "CONVERT_LINES_PER_SHARD",
]

if TYPE_CHECKING:
    from transforms.shards import ArchiveMember
# Beam (apache_beam, transforms.shards, transforms.upgrade, core.options) is imported on first
# use, not with this module: `run` starts the source's validation in its child process first, so
# that the child's 0.6-0.7 s (100k documents) overlaps the parent's 0.5 s import of Beam on the
# second core instead of competing with the pipeline's workers for it later (measured with 2
# forked workers: see docs/benchmarks.md).

CONVERT_LINES_PER_SHARD = 10_000
"""Measured with the former bench/convert_bench.py, 300k documents: when every document was a Beam element, 10k lines per
shard was ~1.2x faster than the shared 50k default on 2 processes (smaller shards spread the work
better). Since a shard is one DoFn call (`UpgradeShards`), 5k, 10k and 25k measure the same within
the machine's noise (2 processes: 8.1, 8.2-8.5 and 7.9 s); 10k is kept."""


@dataclass(frozen=True)
class ConvertConfig:
    """One conversion: `source` archive → `output` archive at format version `target`."""

    source: Path
    output: Path
    target: Version
    dry_run: bool = False
    force: bool = False
    """Replace `output` when it exists (it is only replaced once the new archive is complete)."""
    lines_per_shard: int = CONVERT_LINES_PER_SHARD
    """es_data lines per staged shard: the unit of parallel work."""
    staging: Path | None = None
    """Folder in which a hidden staging folder for shards is made (and removed at the end);
    default: beside `output`. Needs about twice es_data's uncompressed size."""
    progress: bool = True
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    """How large the source's members may be: checked before anything is read or staged."""
    key: ArchiveKey | None = None
    """The key of a source whose credentials are encrypted: agents.json is decrypted, upgraded
    and encrypted again (agent keys are carried as they are); refused without it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "target", parse_version(self.target, "target version"))
        if self.lines_per_shard < 1:
            raise ValueError("lines_per_shard must be positive")


@dataclass(frozen=True)
class ConvertSummary:
    """What a conversion did. `documents` are per (index, type) in the output archive."""

    source: str
    output: str
    source_version: str
    target_version: str
    steps: tuple[str, ...]
    documents_read: int
    documents_written: int
    documents_changed: int
    duplicates_dropped: int
    duplicates_differing: int
    members_carried: int
    documents: dict[tuple[str, str], int] = field(default_factory=dict)
    seconds: float = 0.0
    validate_seconds: float = 0.0
    """How long validating the source took; it runs in a child process while converting."""
    validate_wait_seconds: float = 0.0
    """Part of `seconds` spent only waiting for that validation to finish."""

    @property
    def docs_per_second(self) -> float:
        return self.documents_read / self.seconds if self.seconds > 0 else 0.0

    def by_type(self) -> dict[str, tuple[int, int]]:
        """`_type` → (documents, indices holding them): daily event indices are many."""
        docs: Counter[str] = Counter()
        indices: Counter[str] = Counter()
        for (_index, doc_type), n in self.documents.items():
            docs[doc_type] += n
            indices[doc_type] += 1
        return {t: (docs[t], indices[t]) for t in sorted(docs)}

    def render(self) -> str:
        lines = [
            f"converted {self.source} ({self.source_version}) -> {self.output} ({self.target_version})",
            f"steps                {', '.join(self.steps) if self.steps else 'none (a 3.2 target)'}",
            f"documents read       {self.documents_read:,}",
            f"documents changed    {self.documents_changed:,}",
            f"duplicates dropped   {self.duplicates_dropped:,}"
            + (f" ({self.duplicates_differing:,} differed in content)" if self.duplicates_differing else ""),
            f"documents written    {self.documents_written:,}",
            f"members carried over {self.members_carried:,}",
            f"time                 {self.seconds:.1f} s ({self.docs_per_second:,.0f} docs/s;"
            f" source validated alongside in {self.validate_seconds:.1f} s,"
            f" {self.validate_wait_seconds:.1f} s waited for)",
            "documents per type:",
        ]
        for doc_type, (n, indices) in self.by_type().items():
            where = f" in {indices} indices" if indices > 1 else ""
            lines.append(f"  {doc_type:<24} {n:>10,}{where}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "source_version": self.source_version,
            "target_version": self.target_version,
            "steps": list(self.steps),
            "documents_read": self.documents_read,
            "documents_changed": self.documents_changed,
            "duplicates_dropped": self.duplicates_dropped,
            "duplicates_differing": self.duplicates_differing,
            "documents_written": self.documents_written,
            "members_carried": self.members_carried,
            "documents": {f"{i}/{t}": n for (i, t), n in sorted(self.documents.items())},
            "seconds": round(self.seconds, 3),
            "validate_seconds": round(self.validate_seconds, 3),
            "validate_wait_seconds": round(self.validate_wait_seconds, 3),
            "docs_per_second": round(self.docs_per_second, 1),
        }


@dataclass(frozen=True)
class DryRunReport:
    """The plan, and per `_type` how many documents there are and how many each step changes."""

    source: str
    source_version: str
    target_version: str
    steps: tuple[Step, ...]
    documents: dict[str, int]
    changes: dict[str, tuple[int, ...]]
    """`_type` → per step (in plan order), the documents that step changes."""
    duplicates_to_drop: int
    metadata_changes: bool
    agents_changes: bool
    seconds: float = 0.0

    def render(self) -> str:
        lines = [
            f"dry run: {self.source} ({self.source_version}) -> {self.target_version}; nothing written",
            "",
            describe(self.steps, changelogs=False),
            "(`cfysnap versions` shows each step's changelog)",
            "",
        ]
        if self.steps:
            names = [s.name for s in self.steps]
            width = max(len(n) for n in names)
            lines.append(f"{'documents per type':<24} {'total':>10}  " + "  ".join(f"{n:>{width}}" for n in names))
            for doc_type in sorted(self.documents):
                per_step = self.changes.get(doc_type, (0,) * len(names))
                lines.append(
                    f"  {doc_type:<22} {self.documents[doc_type]:>10,}  "
                    + "  ".join(f"{c:>{width},}" for c in per_step)
                )
            lines.append("")
        lines.append(f"metadata.json        {'changes' if self.metadata_changes else 'unchanged'}")
        lines.append(f"agents.json          {'changes' if self.agents_changes else 'unchanged'}")
        lines.append(f"duplicates to drop   {self.duplicates_to_drop:,}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_version": self.source_version,
            "target_version": self.target_version,
            "steps": [{"name": s.name, "summary": s.summary} for s in self.steps],
            "documents": dict(sorted(self.documents.items())),
            "changes": {
                t: {s.name: c for s, c in zip(self.steps, per_step, strict=True)}
                for t, per_step in sorted(self.changes.items())
            },
            "duplicates_to_drop": self.duplicates_to_drop,
            "metadata_changes": self.metadata_changes,
            "agents_changes": self.agents_changes,
        }


# ---------------------------------------------------------------------------------- members
def _archive_member(name: str, **where: Any) -> ArchiveMember:
    from transforms.shards import ArchiveMember

    return ArchiveMember(name, **where)


def converted_members(
    snap: SnapshotReader, steps: Sequence[Step], staging: Path | None = None
) -> list[ArchiveMember]:
    """Every member of the output but es_data and manifest.json, in the source's order.

    metadata.json and agents.json go through the steps (kept byte for byte when no step changes
    them); directory entries stay directory entries; everything else is streamed from the source
    archive byte for byte when the archive is written. A changed JSON member is written to a file
    in `staging` when given (so a multi-MB agents.json is not pickled into the pipeline graph),
    else held as bytes.
    """
    members: list[ArchiveMember] = []
    source = str(snap.path)
    for info in snap.infos():
        name = info.filename
        if name in (ES_DATA, MANIFEST):
            continue
        if info.is_dir():
            members.append(_archive_member(name))
        elif name == METADATA:
            meta = snap.metadata()
            new_meta = upgrade_metadata(meta, steps)
            members.append(_json_member(name, meta, new_meta, source, staging))
        elif name == AGENTS:
            members.append(_agents_member(snap, steps, staging))
        else:
            members.append(_archive_member(name, archive=source))
    return members


def _upgraded_agents(snap: SnapshotReader, steps: Sequence[Step]) -> Iterator[tuple[str, Any, bool]]:
    """agents.json a deployment at a time, upgraded: (id, nodes, whether a step changed them).
    Encrypted secrets are decrypted for the steps and encrypted again (new nonces)."""
    encryption = snap.encryption
    for deployment, nodes in snap.iter_agents():
        new = upgrade_agents({deployment: nodes}, steps)
        changed = new != {deployment: nodes}
        if encryption is not None:
            new = encrypt_agents(new, encryption)  # type: ignore[assignment]
        yield deployment, new[deployment], changed


def _agents_member(snap: SnapshotReader, steps: Sequence[Step], staging: Path | None) -> ArchiveMember:
    """agents.json upgraded a deployment at a time (memory: one deployment) into a file in
    `staging` (bytes when None); the source's own member when no step changes it."""
    changed = False

    def upgraded() -> Iterator[tuple[str, Any]]:
        nonlocal changed
        for deployment, nodes, differs in _upgraded_agents(snap, steps):
            changed = changed or differs
            yield deployment, nodes

    chunks: list[bytes] = []
    path = staging / f"member-{uuid.uuid4().hex}.json" if staging is not None else None
    with open(path, "wb") if path is not None else contextlib.nullcontext() as out:
        write = out.write if out is not None else chunks.append
        for chunk in json_object_chunks(upgraded()):
            write(chunk)
    if not changed:
        if path is not None:
            path.unlink()
        return _archive_member(AGENTS, archive=str(snap.path))
    if path is None:
        return _archive_member(AGENTS, data=b"".join(chunks))
    return _archive_member(AGENTS, source=str(path))


def _json_member(name: str, before: Any, after: Any, source: str, staging: Path | None) -> ArchiveMember:
    if after is before or after == before:
        return _archive_member(name, archive=source)
    data = json.dumps(after).encode()
    if staging is None:
        return _archive_member(name, data=data)
    path = staging / f"member-{uuid.uuid4().hex}.json"
    path.write_bytes(data)
    return _archive_member(name, source=str(path))


# --------------------------------------------------------------------------------------- run
def _check_paths(config: ConvertConfig) -> None:
    if config.output.resolve() == config.source.resolve():
        raise JobFailed("convert", "the output path is the source archive; choose another path")
    if not config.dry_run and config.output.exists() and not config.force:
        raise JobFailed("convert", f"{config.output} exists (use --force to replace it)")


def _check_limits(config: ConvertConfig) -> None:
    """Refuse a source whose members are past the limits (a zip bomb) before anything is read:
    the concurrent validation would find it too, but only after the job began inflating it.
    Then refuse a missing or wrong key for encrypted credentials (KeyRefused)."""
    with SnapshotReader(config.source) as snap:
        refuse(limit_problems(snap, config.limits), config.source)
    with SnapshotReader(config.source, key=config.key) as snap:
        _ = snap.encryption


def _validated_plan(config: ConvertConfig) -> tuple[Version, list[Step]]:
    """Refuse an invalid source (first problem, and how many) or a downgrade; return the plan."""
    refuse(validate_archive(config.source, limits=config.limits), config.source)
    with SnapshotReader(config.source) as snap:
        version = snap.version
    return version, plan(version, config.target)


_VALIDATE_CHILD = """
import json, sys, time
started = time.monotonic()
from core.validate import ArchiveLimits, validate_archive
limits = ArchiveLimits(**json.loads(sys.argv[2]))
problems = [[p.member, p.line, p.reason] for p in validate_archive(sys.argv[1], limits=limits)]
json.dump({"problems": problems, "seconds": time.monotonic() - started}, sys.stdout)
"""


class _ConcurrentValidation:
    """`validate_archive(source)` in a child Python process (a second core), while the job runs.

    A fresh interpreter (`python -c`, the parent's `sys.path`), neither forked (the parent may
    hold Beam/gRPC threads) nor multiprocessing-spawned (that re-imports the caller's main
    module, which a script calling `run` need not guard). The child imports only
    `core.validate` and prints the problems as JSON. `problems()` waits for them;
    `cancel()` kills the child when the job stops early.
    """

    def __init__(self, source: Path, limits: ArchiveLimits) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen(
            [sys.executable, "-c", _VALIDATE_CHILD, str(source), json.dumps(asdict(limits))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._problems: list[Problem] | None = None
        self.seconds = 0.0
        """How long the validation took in its process (imports included)."""
        self.waited = 0.0
        """Seconds the job spent waiting for the validation (the rest ran concurrently)."""

    def problems(self) -> list[Problem]:
        if self._problems is None:
            waiting = time.monotonic()
            out, err = self._process.communicate()
            self.waited = time.monotonic() - waiting
            if self._process.returncode != 0:
                last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
                raise JobFailed("convert", f"validating the source failed: {last}")
            result = json.loads(out)
            self.seconds = result["seconds"]
            self._problems = [Problem(m, line, r) for m, line, r in result["problems"]]
        return self._problems

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()


def _new_folders(folder: Path) -> list[Path]:
    """`folder` and its missing ancestors, deepest first: what `mkdir(parents=True)` would make."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def run(config: ConvertConfig, beam_args: Sequence[str] = ()) -> ConvertSummary | DryRunReport:
    """Convert `config.source` to `config.target` into `config.output` (see the module docstring).

    With `config.dry_run` this is `dry_run(config)`. Raises `CorruptArchive` (invalid source),
    `DowngradeRefused`, `UnsupportedVersion`, or `JobFailed` (nothing is left at `output`).

    The source is validated in a child process while the pipeline converts it into staging.
    "Check before write" holds for the output: the converted archive is renamed to `output` only
    after the validation found no problem; an invalid source leaves nothing behind (staging, the
    partial archive and any folder made for the output are removed) and its first problem is the
    error, whatever the pipeline did or raised meanwhile.
    """
    if config.dry_run:
        return dry_run(config)
    started = time.monotonic()
    _check_paths(config)
    _check_limits(config)
    output = config.output
    new_folders = _new_folders(output.parent)
    validation = _ConcurrentValidation(config.source, config.limits)
    try:
        summary = _convert(config, beam_args, validation)
    except BaseException:
        validation.cancel()
        for folder in new_folders:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: nothing of anyone else's is removed
        raise
    return replace(
        summary,
        seconds=time.monotonic() - started,
        validate_seconds=validation.seconds,
        validate_wait_seconds=validation.waited,
    )


def _source_plan(config: ConvertConfig, validation: _ConcurrentValidation) -> tuple[Version, list[Step]]:
    """The source's version and the plan; when the source cannot even be read, the error is the
    validation's first problem (as if it had been validated first)."""
    try:
        with SnapshotReader(config.source) as snap:
            version = snap.version
    except CfysnapError:
        refuse(validation.problems(), config.source)
        raise
    return version, plan(version, config.target)


def _convert(
    config: ConvertConfig, beam_args: Sequence[str], validation: _ConcurrentValidation
) -> ConvertSummary:
    version, steps = _source_plan(config, validation)
    # Beam (the members' type is its first user) without the connectors no job uses
    # (`core.beam_import`); the validation runs in an interpreter of its own, unaffected
    import_beam()
    output = config.output
    output.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = (config.staging or output.parent) / f".{output.name}.{token}.staging"
    partial = output.parent / f".{output.name}.{token}.converted"
    staging.mkdir(mode=0o700, parents=True, exist_ok=False)  # shards hold broker secrets
    done: dict[str, Any] = {"validated": "no", "archive written": "no"}
    try:
        try:
            with SnapshotReader(config.source, key=config.key) as snap:
                members = converted_members(snap, steps, staging)
                source_manifest = snap.manifest()
                encryption = snap.encryption
            expected_total = _manifest_total(source_manifest)
            with progress_mod.Progress("convert", total=expected_total, enabled=config.progress):
                counters = _run_pipeline(
                    config, steps, members, str(staging), str(partial), beam_args, done, encryption
                )
        except BaseException:
            # an invalid source may fail the pipeline first: its validation problem is the error
            refuse(validation.problems(), config.source)
            raise
        refuse(validation.problems(), config.source)
        done["validated"] = config.source.name
        with SnapshotReader(partial) as produced:
            written = _manifest_documents(produced.manifest())
        summary = ConvertSummary(
            source=str(config.source),
            output=str(output),
            source_version=version.value,
            target_version=config.target.value,
            steps=tuple(s.name for s in steps),
            documents_read=counters.get("documents_read", 0),
            documents_written=sum(written.values()),
            documents_changed=counters.get("documents_changed", 0),
            duplicates_dropped=counters.get("duplicates_dropped", 0),
            duplicates_differing=counters.get("duplicates_differing", 0),
            members_carried=len(members),
            documents=written,
        )
        _reconcile(summary, counters, expected_total, done)
        cancel.checkpoint()  # an interrupt something swallowed still stops it here
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _run_pipeline(
    config: ConvertConfig,
    steps: Sequence[Step],
    members: list[ArchiveMember],
    staging: str,
    partial: str,
    beam_args: Sequence[str],
    done: dict[str, Any],
    encryption: Encryption | None,
) -> dict[str, int]:
    import apache_beam as beam

    from core.counts import counter_values
    from core.options import beam_options
    from transforms.shards import WriteSnapshotArchive
    from transforms.upgrade import COUNTER_NAMESPACE, ConvertEsData

    pipeline = beam.Pipeline(options=beam_options(beam_args))
    unique_shards = (
        pipeline
        | "Source" >> beam.Create([str(config.source)])
        | "ConvertEsData" >> ConvertEsData(staging, steps, config.lines_per_shard)
    )
    carried = pipeline | "OtherMembers" >> beam.Create(members, reshuffle=False)
    _ = (unique_shards, carried) | "WriteSnapshotArchive" >> WriteSnapshotArchive(
        partial, encryption
    )
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:  # noqa: BLE001 - turned into a typed error right here
        raise job_error("convert", exc, done) from None
    return counter_values(result, COUNTER_NAMESPACE)


def _reconcile(
    summary: ConvertSummary, counters: dict[str, int], expected_total: int | None, done: dict[str, Any]
) -> None:
    read, written = summary.documents_read, summary.documents_written
    problems = []
    if read != written + summary.duplicates_dropped:
        problems.append(
            f"read {read} != written {written} + duplicates dropped {summary.duplicates_dropped}"
        )
    staged = counters.get("documents_written", 0)
    if staged != read:
        problems.append(f"upgraded {staged} documents but read {read}")
    if expected_total is not None and expected_total != read:
        problems.append(f"the source manifest lists {expected_total} documents but {read} were read")
    if problems:
        raise JobFailed("convert", "counts do not reconcile: " + "; ".join(problems), done)


def _manifest_total(manifest: dict[str, Any] | None) -> int | None:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("documents"), dict):
        return None
    try:
        return sum(int(n) for n in manifest["documents"].values())
    except (TypeError, ValueError):
        return None


def _manifest_documents(manifest: dict[str, Any] | None) -> dict[tuple[str, str], int]:
    documents: dict[tuple[str, str], int] = {}
    for key, n in ((manifest or {}).get("documents") or {}).items():
        index, _, doc_type = key.rpartition("/")
        documents[(index, doc_type)] = int(n)
    return documents


# ----------------------------------------------------------------------------------- dry run
def dry_run(config: ConvertConfig) -> DryRunReport:
    """Plan `config`'s conversion and count what each step would change, writing nothing.

    Validates the source first (an invalid archive or a downgrade is refused exactly as `run`
    refuses it). One streaming pass over es_data; memory: 8 bytes per document for the duplicate
    count. Raises what the steps raise (e.g. an event that cannot be placed in a daily index).
    """
    started = time.monotonic()
    _check_paths(config)
    version, steps = _validated_plan(config)
    documents: Counter[str] = Counter()
    changes: dict[str, list[int]] = {}
    digests = array("q")
    with SnapshotReader(config.source, key=config.key) as snap, progress_mod.Progress(
        "dry run", total=_manifest_total(snap.manifest()), enabled=config.progress
    ) as bar:
        meta = snap.metadata()
        agents_changes = any(differs for _, _, differs in _upgraded_agents(snap, steps))
        for n, (lineno, line) in enumerate(snap.iter_lines(), 1):
            hit = parse_hit(line, lineno)
            doc_type = hit["_type"]
            documents[doc_type] += 1
            per_step = changes.setdefault(doc_type, [0] * len(steps))
            upgraded = hit
            try:
                for i, changed in enumerate(step_changes(hit, steps)):
                    per_step[i] += changed
                for step in steps:
                    upgraded = step.upgrade_hit(upgraded)
            except CorruptArchive as exc:
                raise CorruptArchive(ES_DATA, lineno, exc.reason, str(config.source)) from None
            digests.append(key_digest(hit_key(upgraded)))
            if n % 10_000 == 0:
                bar.advance(10_000)
        new_meta = upgrade_metadata(meta, steps)
    duplicates = _duplicates_to_drop(digests)
    return DryRunReport(
        source=str(config.source),
        source_version=version.value,
        target_version=config.target.value,
        steps=tuple(steps),
        documents=dict(documents),
        changes={t: tuple(c) for t, c in changes.items()},
        duplicates_to_drop=duplicates,
        metadata_changes=new_meta != meta,
        agents_changes=agents_changes,
        seconds=time.monotonic() - started,
    )


def _duplicates_to_drop(digests: array) -> int:
    """How many documents share a key digest with an earlier one (an upper bound on the drops:
    a 64-bit digest collision would count too, and the real run keeps both)."""
    values = np.frombuffer(digests.tobytes(), dtype=np.int64)
    return int(len(values) - len(np.unique(values)))
