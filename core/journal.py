"""The journal of what a restore has done, replayed by `--resume`.

A journal is a folder at any path Beam's `FileSystems` understand (a local folder, a shared
mount, an object store): the restore's driver and its workers write to it, so on a cluster it
must be storage they all reach, like the archive and the staging folder. Every event is one
small JSON file, written under a temporary name and renamed into place: it is there whole or not
at all, whoever writes it and whatever kills them. Nothing is ever appended to a shared file.

- `events/<n>-<event>.json`, written by the driver in order (`n` counts from 0):
  - `started`  — archive path and sha256, target URL (no credentials), target version, the
    batching (`lines_per_shard`, `batch_docs`, `batch_bytes`) the run uses;
  - `checked`  — the dirty and clash checks passed (a resumed restore skips them: the target
    then holds the restore's own half-written documents, which are not clashes);
  - `file`     — one top-level child of a file-server folder is in place (`path`, `action`
    "copied", or "kept" when it existed before the restore);
  - `key`      — one agent key written (`name` = `<deployment>_<node>`);
  - `agents`   — agents.json merged into the node instances (`merged`, `warnings`);
  - `reload`   — batches the target turned out not to hold after a crash of the server
    (`digests`): their files are removed right after, so they are loaded and counted again;
  - `finished` — the restore completed and its counts reconciled.
- `batches/<digest>.json`, written by whichever worker sent the batch, once the server has
  acknowledged every document of it: the es_data `lines` it held (`[first, last]` ranges), its
  document `counts` per "index/type", and `digest` (sha256 of its sorted target keys), which
  names the file: a batch resent by a retried bundle writes the same file again.

`Journal` holds only its path: it is picklable and is handed to Beam DoFns.

Test hook: when the environment variable `CFYSNAP_TEST_KILL_AT` is `<event>:<n>` (for example
`batch:3`), the process SIGKILLs itself right after its n-th write of that event is in place.
Tests use it to stop a restore at deterministic points; it is never set in production.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.fs import FileSystems

__all__ = ["Journal", "JournalState", "KILL_HOOK_ENV", "line_ranges", "merge_ranges"]

KILL_HOOK_ENV = "CFYSNAP_TEST_KILL_AT"
_written: Counter[str] = Counter()


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """`[first, last]` integer ranges sorted and merged where they touch or overlap."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def line_ranges(lines: Iterable[int]) -> list[tuple[int, int]]:
    """`merge_ranges` of single lines: a batch's es_data lines (a few thousand, mostly one run)
    as `[first, last]` ranges. One run, the usual batch, is found without a Python loop."""
    ordered = sorted(set(lines))
    if not ordered:
        return []
    if ordered[-1] - ordered[0] == len(ordered) - 1:  # distinct, and as many as the span holds
        return [(ordered[0], ordered[-1])]
    return merge_ranges((n, n) for n in ordered)


@dataclass
class JournalState:
    """What a journal says was done."""

    started: dict[str, Any] | None = None
    checked: bool = False
    finished: bool = False
    files: dict[str, str] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    agents: dict[str, Any] | None = None
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    """digest → batch event."""

    def loaded_lines(self) -> list[tuple[int, int]]:
        """Sorted, merged `[first, last]` es_data line ranges of every acknowledged batch."""
        return merge_ranges(
            (int(a), int(b)) for batch in self.batches.values() for a, b in batch["lines"]
        )

    def loaded_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for batch in self.batches.values():
            counts.update(batch["counts"])
        return dict(counts)


class Journal:
    """`Journal(path).append({"event": "key", "name": ...})`; `Journal(path).replay()`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._next: int | None = None
        """The number of the next driver event (counted once, then kept)."""

    def __repr__(self) -> str:
        return f"Journal({self.path!r})"

    def _folder(self, kind: str) -> str:
        return FileSystems.join(self.path, kind)

    def _names(self, kind: str) -> list[str]:
        pattern = FileSystems.join(self._folder(kind), "*.json")
        try:
            [result] = FileSystems.match([pattern])
        except Exception:  # noqa: BLE001 - a folder that does not exist (yet) holds nothing
            return []
        return sorted(m.path for m in result.metadata_list)

    def exists(self) -> bool:
        return any(name.endswith("-started.json") for name in self._names("events"))

    def start(self, started: dict[str, Any]) -> None:
        """Begin a new journal (replacing a finished one) with its `started` event."""
        if FileSystems.exists(self.path):
            FileSystems.delete([self.path])
        self._next = 0
        _make_private_folder(self._folder("events"))
        _make_private_folder(self._folder("batches"))
        self.append({"event": "started", **started})

    def append(self, event: dict[str, Any]) -> None:
        """Write one event in place (a driver event in order, or a batch under its digest),
        then run the test kill hook."""
        kind = str(event.get("event"))
        record = {**event, "at": round(time.time(), 3)}
        if kind == "batch":
            name = FileSystems.join(self._folder("batches"), f"{event['digest']}.json")
        else:
            if self._next is None:
                self._next = len(self._names("events"))
            name = FileSystems.join(self._folder("events"), f"{self._next:06d}-{kind}.json")
            self._next += 1
        _write_whole(name, json.dumps(record, separators=(",", ":")).encode())
        _kill_hook(kind)

    def forget_batches(self, digests: Iterable[str]) -> None:
        """Remove batch records (a `reload` event says which and why first): batches the
        target turned out not to hold, so that they are loaded, and counted, again."""
        digests = list(digests)
        self.append({"event": "reload", "digests": digests})
        names = [FileSystems.join(self._folder("batches"), f"{d}.json") for d in digests]
        present = [n for n in names if FileSystems.exists(n)]
        if present:
            FileSystems.delete(present)

    def events(self) -> Iterator[dict[str, Any]]:
        for name in [*self._names("events"), *self._names("batches")]:
            try:
                with FileSystems.open(name) as f:
                    record = json.loads(f.read())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and "event" in record:
                yield record

    def replay(self) -> JournalState:
        state = JournalState()
        for record in self.events():
            kind = record["event"]
            if kind == "started":
                state = JournalState(started=record)
            elif kind == "checked":
                state.checked = True
            elif kind == "file":
                state.files[record["path"]] = record["action"]
            elif kind == "key":
                state.keys.add(record["name"])
            elif kind == "batch":
                state.batches.setdefault(record["digest"], record)
            elif kind == "agents":
                state.agents = record
            elif kind == "finished":
                state.finished = True
        return state


def _make_private_folder(path: str) -> None:
    """The folder (0700 where it is a local one: a journal names broker hosts and key names)."""
    if "://" not in path:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        os.chmod(os.path.dirname(path), 0o700)
    elif not FileSystems.exists(path):
        FileSystems.mkdirs(path)


def _write_whole(path: str, data: bytes) -> None:
    """`data` at `path`, whole or not at all: a temporary file renamed into place (fsync'd, on a
    local path, before the rename)."""
    temp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    if "://" not in path:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return
    with FileSystems.create(temp) as out:
        out.write(data)
    FileSystems.rename([temp], [path])


def _kill_hook(event: str) -> None:
    spec = os.environ.get(KILL_HOOK_ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != event:
        return
    _written[event] += 1
    if _written[event] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
