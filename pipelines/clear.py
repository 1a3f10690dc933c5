"""`clear`: the manual "clearing the manager" procedure done before a restore (spec §7.2, §9).

Deletes every document of `cloudify_storage` except the `provider_context` and `snapshot`
documents, every document of every event index (`cloudify_events`, `logstash-*`), and empties the
file-server folders `blueprints/`, `uploaded-blueprints/`, `plugins/`, `deployments/` (the
folders stay; their children go). Snapshots (documents and `snapshots/` archives) and the
provider context are kept.

Contracts:
- Documents are deleted by query per (index, type); indices and their mappings are kept (the
  manager owns them).
- Counts are reconciled: after the deletes (and a refresh) every cleared (index, type) must count
  0 and every kept one must count what it did before; otherwise `JobFailed` says what was done.
- Files: a file-server folder that is itself a symbolic link, or resolves outside `fs_root`, is
  refused (`UnsafePath`) before anything is deleted. Children that are links are unlinked, never
  followed; sub-folders are removed with `shutil.rmtree`, which does not follow links.
- `plan(config)` is read-only: what `run` would delete.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import JobFailed, UnsafePath
from core.model import FILE_FOLDERS, NEVER_IN_SNAPSHOT_TYPES, STORAGE_INDEX, is_event_index
from core.search import SearchClient, SearchTarget
from core.text import plural

__all__ = ["ClearConfig", "ClearSummary", "KEPT_TYPES", "plan", "run"]

KEPT_TYPES = NEVER_IN_SNAPSHOT_TYPES
"""`provider_context` and `snapshot`: what clearing keeps."""

TypeKey = tuple[str, str]


@dataclass(frozen=True)
class ClearConfig:
    """Where the manager lives: its search server and its file-server root."""

    target: SearchTarget
    """The server (a bare URL given here is taken as `SearchTarget(url)`)."""
    fs_root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", SearchTarget.of(self.target))


@dataclass
class ClearSummary:
    """What clearing deleted (or, from `plan`, would delete) and what it kept.

    `documents`: deleted documents per (index, type); `kept`: documents kept per (index, type);
    `files`: children removed per file-server folder (folders that do not exist are absent).
    """

    documents: dict[TypeKey, int] = field(default_factory=dict)
    kept: dict[TypeKey, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)

    @property
    def total_documents(self) -> int:
        return sum(self.documents.values())

    @property
    def total_files(self) -> int:
        return sum(self.files.values())

    def render(self, verb: str = "deleted") -> str:
        lines = [f"{verb} {plural(self.total_documents, 'document')}:"]
        lines += [f"  {i}/{t}: {n:,}" for (i, t), n in sorted(self.documents.items())]
        lines.append(f"kept {plural(sum(self.kept.values()), 'document')}:")
        lines += [f"  {i}/{t}: {n:,}" for (i, t), n in sorted(self.kept.items())]
        lines.append(f"{verb} {plural(self.total_files, 'file-server entry')}:")
        lines += [f"  {name}/: {n:,}" for name, n in sorted(self.files.items())]
        return "\n".join(lines)


def _manager_pairs(client: SearchClient) -> dict[TypeKey, int]:
    """(index, type) → count for cloudify_storage and every event index."""
    client.refresh()
    return {
        key: count
        for key, count in client.logical_indices("*").items()
        if key[0] == STORAGE_INDEX or is_event_index(key[0])
    }


def _cleared(key: TypeKey) -> bool:
    return not (key[0] == STORAGE_INDEX and key[1] in KEPT_TYPES)


def _folders(fs_root: Path) -> Iterator[tuple[str, Path]]:
    """The file-server folders that exist, checked to be real folders inside `fs_root`."""
    root = fs_root.resolve()
    for name in FILE_FOLDERS:
        folder = fs_root / name
        if folder.is_symlink():
            raise UnsafePath(str(folder), "is a symbolic link; refusing to clear through it")
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise UnsafePath(str(folder), "is not a folder")
        if folder.resolve().parent != root:
            raise UnsafePath(str(folder), "resolves outside the file-server root")
        yield name, folder


def plan(config: ClearConfig) -> ClearSummary:
    """What `run` would delete, without changing anything."""
    folders = list(_folders(Path(config.fs_root)))
    with config.target.connect() as client:
        pairs = _manager_pairs(client)
    summary = ClearSummary()
    for key, count in pairs.items():
        (summary.documents if _cleared(key) else summary.kept)[key] = count
    for name, folder in folders:
        summary.files[name] = sum(1 for _ in folder.iterdir())
    return summary


def _empty(folder: Path) -> int:
    removed = 0
    for child in sorted(folder.iterdir()):
        if child.is_symlink() or not child.is_dir():
            child.unlink()
        else:
            shutil.rmtree(child)
        removed += 1
    return removed


def run(config: ClearConfig) -> ClearSummary:
    """Clear the manager; return what was deleted and kept (see the module docstring).

    Raises `UnsafePath` (nothing deleted) for an unsafe file-server folder, `SearchServerError`
    if the server fails, `JobFailed` (with what was done) if documents remain afterwards.
    """
    fs_root = Path(config.fs_root)
    folders = list(_folders(fs_root))  # refuse unsafe folders before deleting anything
    summary = ClearSummary()
    with config.target.connect() as client:
        before = _manager_pairs(client)
        try:
            for key, count in sorted(before.items()):
                if not _cleared(key):
                    summary.kept[key] = count
                    continue
                summary.documents[key] = client.delete_by_query(key[0], key[1], refresh=False)
            for name, folder in folders:
                summary.files[name] = _empty(folder)
        except Exception as exc:
            raise JobFailed("clear", str(exc), _done(summary)) from exc
        after = _manager_pairs(client)
    left = {k: n for k, n in after.items() if _cleared(k) and n}
    changed = {k: n for k, n in summary.kept.items() if after.get(k, 0) != n}
    if left or changed:
        reason = "; ".join(
            [f"{i}/{t}: {plural(n, 'document')} left" for (i, t), n in sorted(left.items())]
            + [
                f"{i}/{t}: kept {n}, now {after.get((i, t), 0)}"
                for (i, t), n in sorted(changed.items())
            ]
        )
        raise JobFailed("clear", f"counts do not reconcile: {reason}", _done(summary))
    return summary


def _done(summary: ClearSummary) -> dict[str, int]:
    return {"documents_deleted": summary.total_documents, "files_deleted": summary.total_files}
