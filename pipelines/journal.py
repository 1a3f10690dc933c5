"""An append-only, fsync'd journal of what a restore has done, replayed by `--resume`.

One JSON object per line. Events (the `event` key):

- `started`  — archive path and sha256, target URL (no credentials), target version, the
  batching (`lines_per_shard`, `batch_docs`, `batch_bytes`) the run uses.
- `checked`  — the dirty and clash checks passed (a resumed restore skips them: the target
  then holds the restore's own half-written documents, which are not clashes).
- `file`     — one top-level child of a file-server folder is in place (`path`, `action`
  "copied" or "kept" when it existed before the restore).
- `key`      — one agent key written (`name` = `<deployment>_<node>`).
- `batch`    — one bulk batch fully acknowledged: the es_data `lines` it held (as
  `[first, last]` ranges), its document `counts` per "index/type", and `digest` (sha256 of its
  sorted target keys) that identifies it.
- `agents`   — agents.json merged into the node instances (`merged`, `skipped`, `warnings`).
- `finished` — the restore completed and its counts reconciled.

`append` writes one line with a single `write` on an O_APPEND descriptor and fsyncs it, so
several worker processes can append to one journal and a kill never leaves a half line that
matters (`replay` ignores a torn last line). `Journal` holds only its path: it is picklable and
can be handed to Beam DoFns.

Test hook: when the environment variable `CFYSNAP_TEST_KILL_AT` is `<event>:<n>` (for example
`batch:3`), the process SIGKILLs itself right after its n-th append of that event has been
fsync'd. Tests use it to stop a restore at deterministic points; it is never set in production.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Journal", "JournalState", "KILL_HOOK_ENV"]

KILL_HOOK_ENV = "CFYSNAP_TEST_KILL_AT"
_appended: Counter[str] = Counter()


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
    """digest → batch event (a batch journaled twice, after a retried bundle, counts once)."""

    def loaded_lines(self) -> list[tuple[int, int]]:
        """Sorted, merged `[first, last]` es_data line ranges of every acknowledged batch."""
        ranges = sorted(
            (int(a), int(b)) for batch in self.batches.values() for a, b in batch["lines"]
        )
        merged: list[tuple[int, int]] = []
        for a, b in ranges:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def loaded_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for batch in self.batches.values():
            counts.update(batch["counts"])
        return dict(counts)


class Journal:
    """`Journal(path).append({"event": "key", "name": ...})`; `Journal(path).replay()`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    def exists(self) -> bool:
        return self.path.exists()

    def start(self, started: dict[str, Any]) -> None:
        """Begin a new journal (replacing a finished one) with its `started` event."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        self.append({"event": "started", **started})
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def append(self, event: dict[str, Any]) -> None:
        """Append one event durably (write + fsync), then run the test kill hook."""
        record = {**event, "at": round(time.time(), 3)}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        _kill_hook(str(event.get("event")))

    def events(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # a torn last line from a kill: that event never completed
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


def _kill_hook(event: str) -> None:
    spec = os.environ.get(KILL_HOOK_ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != event:
        return
    _appended[event] += 1
    if _appended[event] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
