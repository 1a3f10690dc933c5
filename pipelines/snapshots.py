"""`snapshots`: the manager's snapshot store, as its `cfysnap snapshots …` commands use it
(spec §8: `<fs_root>/snapshots/<id>/<id>.zip` plus a `snapshot` document per snapshot).

Each function opens the store (reaping `creating` snapshots whose creator died, which it returns
as warnings), does one thing and closes the store's client. The store itself, and its lifecycle
rules, are `core.store.SnapshotStore`, which `create` records its snapshots through too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.search import SearchTarget
from core.store import SnapshotRecord, SnapshotStore, Transfer

__all__ = ["open_store", "list_snapshots", "upload", "download", "delete", "archive_for_restore"]

Warn = Callable[[str], None]


@contextmanager
def open_store(target: SearchTarget, fs_root: Path, warn: Warn) -> Iterator[SnapshotStore]:
    """The store, after reaping stale `creating` snapshots (each reaped one is a warning)."""
    with target.connect() as client:
        store = SnapshotStore(client, fs_root)
        for record in store.reap_stale():
            warn(f"snapshot {record.id} marked failed: {record.error}")
        yield store


def list_snapshots(target: SearchTarget, fs_root: Path, warn: Warn) -> list[SnapshotRecord]:
    with open_store(target, fs_root, warn) as store:
        return store.list()


def upload(target: SearchTarget, fs_root: Path, snapshot_id: str, source: str, warn: Warn) -> Transfer:
    with open_store(target, fs_root, warn) as store:
        return store.upload(snapshot_id, source)


def download(
    target: SearchTarget, fs_root: Path, snapshot_id: str, dest: str, overwrite: bool, warn: Warn
) -> Transfer:
    with open_store(target, fs_root, warn) as store:
        return store.download(snapshot_id, dest, overwrite=overwrite)


def delete(target: SearchTarget, fs_root: Path, snapshot_id: str, warn: Warn) -> SnapshotRecord | None:
    with open_store(target, fs_root, warn) as store:
        return store.delete(snapshot_id)


def archive_for_restore(target: SearchTarget, fs_root: Path, snapshot_id: str, warn: Warn) -> Path:
    with open_store(target, fs_root, warn) as store:
        return store.archive_for_restore(snapshot_id)
