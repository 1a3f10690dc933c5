"""`verify`: does a target manager hold exactly what restoring an archive gives?

Compares, read-only (apart from a search-server refresh):
- documents: per target (index, type), the count, and a digest of every document's `_source`
  against the digest of the archive's document after the version upgrade and the restore's own
  changes — computed with the same pure functions `restore` uses (`RestoreContext.expected_hit`:
  `transforms.versions.upgrade_hit` then `transforms.restore_docs.restore_hit`); missing, extra
  and changed documents are differences;
- files: every file under the archive's file-server folders, by sha256, under `fs_root`;
- keys (with `credentials_dir`): each `<dir>/<dep>_<node>/agent_key` equals the archive's and has
  mode 0600. Without `credentials_dir`, node key paths are left out of the document digests.

Memory: one 16-byte digest per archive document (plus its id), per (index, type) at a time
when scanning the target.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from core.archive import CREDENTIALS_PREFIX, ArchiveLimits, SnapshotReader
from core.crypto import ArchiveKey
from core.digests import document_digest, file_sha256
from core.model import Doc, Version
from core.search import SearchClient, SearchTarget
from core.text import plural
from transforms.restore import restore_context

__all__ = ["VerifyConfig", "VerifyReport", "run"]


@dataclass(frozen=True)
class VerifyConfig:
    archive: Path
    target: SearchTarget
    """The server (a bare URL given here is taken as `SearchTarget(url)`)."""
    fs_root: Path
    credentials_dir: Path | None = None
    target_version: Version = Version.V3_4
    max_differences: int = 20
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    """How large the archive's members may be (refused before anything is read)."""
    key: ArchiveKey | None = None
    """The key of an archive whose credentials are encrypted."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", SearchTarget.of(self.target))


@dataclass
class VerifyReport:
    """`differences` holds the first `max_differences`; `kinds` counts all by kind."""

    documents: int = 0
    files: int = 0
    keys: int = 0
    differences: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    max_differences: int = 20

    @property
    def ok(self) -> bool:
        return not self.kinds

    def add(self, kind: str, text: str) -> None:
        self.kinds[kind] += 1
        if len(self.differences) < self.max_differences:
            self.differences.append(text)

    def render(self) -> str:
        checked = (f"{plural(self.documents, 'document')}, {plural(self.files, 'file')}, "
                   f"{plural(self.keys, 'key')}")
        if self.ok:
            return f"verified: the target matches the archive ({checked})"
        total = sum(self.kinds.values())
        lines = [f"{plural(total, 'difference')} ({checked} checked):"]
        lines += [f"  {kind}: {n:,}" for kind, n in sorted(self.kinds.items())]
        lines += [f"  - {d}" for d in self.differences]
        if total > len(self.differences):
            lines.append(f"  … and {total - len(self.differences):,} more")
        return "\n".join(lines)


def _without_key_path(source: Doc) -> Doc:
    props = source.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("cloudify_agent"), dict):
        return source
    agent = {k: v for k, v in props["cloudify_agent"].items() if k != "key"}
    return {**source, "properties": {**props, "cloudify_agent": agent}}


def run(config: VerifyConfig) -> VerifyReport:
    """Compare the target with the archive; see the module docstring. Never writes data."""
    report = VerifyReport(max_differences=config.max_differences)
    with tempfile.TemporaryDirectory(prefix="cfysnap-verify-") as workdir, SnapshotReader(
        config.archive, config.limits, key=config.key
    ) as reader:
        ctx = restore_context(reader, config.target_version, config.credentials_dir, Path(workdir))
        strip = config.credentials_dir is None
        expected: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        for _, hit in reader.iter_hits():
            out = ctx.expected_hit(hit)
            source = out["_source"]
            if strip and out["_type"] == "node":
                source = _without_key_path(source)
            expected[(out["_index"], out["_type"])][out["_id"]] = document_digest(source)

        with config.target.connect() as client:
            client.refresh()
            for (index, doc_type), docs in sorted(expected.items()):
                _compare_documents(client, index, doc_type, docs, strip, report)

        for _child, members in reader.file_children().items():
            for member in members:
                report.files += 1
                target = Path(config.fs_root) / member
                if not target.is_file():
                    report.add("file missing", f"file {member}: missing under {config.fs_root}")
                    continue
                with reader.open(member) as f:
                    sha = hashlib.sha256()
                    while chunk := f.read(1 << 20):
                        sha.update(chunk)
                if file_sha256(target) != sha.hexdigest():
                    report.add("file differs", f"file {member}: content differs (sha256)")

        if config.credentials_dir is not None:
            for name in reader.key_names():
                report.keys += 1
                target = Path(config.credentials_dir) / name / "agent_key"
                if not target.is_file():
                    report.add("key missing", f"key {name}: missing at {target}")
                    continue
                with reader.open(f"{CREDENTIALS_PREFIX}{name}/agent_key") as f:
                    same = f.read() == target.read_bytes()
                if not same:
                    report.add("key differs", f"key {name}: content differs")
                mode = stat.S_IMODE(os.stat(target).st_mode)
                if mode != 0o600:
                    report.add("key mode", f"key {name}: mode {mode:o}, expected 600")
    return report


def _compare_documents(
    client: SearchClient,
    index: str,
    doc_type: str,
    docs: dict[str, str],
    strip: bool,
    report: VerifyReport,
) -> None:
    seen: set[str] = set()
    where = f"{index}/{doc_type}"
    for hit in client.scan(index, [doc_type]):
        doc_id = hit["_id"]
        seen.add(doc_id)
        report.documents += 1
        want = docs.get(doc_id)
        if want is None:
            report.add("extra document", f"{where}/{doc_id}: on the target, not in the archive")
            continue
        source = hit["_source"]
        if strip and doc_type == "node":
            source = _without_key_path(source)
        if document_digest(source) != want:
            report.add("document differs", f"{where}/{doc_id}: differs from the archive")
    missing = [i for i in docs if i not in seen]
    for doc_id in missing:
        report.add("document missing", f"{where}/{doc_id}: missing on the target")
    if len(seen) != len(docs):
        report.add("count", f"{where}: {len(seen)} on the target, {len(docs)} in the archive")
