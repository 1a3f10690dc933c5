"""Scrolls read by threads of their own, and a job's read started before its pipeline runs.

`Scroll`: one part of a read (`ReadPart`) scrolled by a thread into a queue of pages that the
running scrolls share; the reader (`transforms.search_io`'s ReadPart step) takes whichever page
is ready first. A scroll's network waits release the GIL, so the reader parses, writes and reads
the next pages at once.

`ReadAhead`: the first parts of a job's reads, planned and scrolled before Beam is imported and
the job's graph built. On the 2-core bench machine that start takes about a second of one core
(Beam's import 0.7 s, the graph and the runner's set-up 0.35 s) while the server has nothing to
do. The pipeline's steps adopt what was started, in the same process: the planning step takes
the plan instead of asking the server again, and the reading step takes the queue and the running
scrolls as its own and does not start a part again. So a part is read once, by one scroll, as it
is without read-ahead. It holds no more than the reader itself would: `concurrency` scrolls at a
time, 3 pages a scroll queued, and it stops starting parts once adopted.

It only serves a reader in the same process: a job starts one only for Beam's in-process runner
with one worker (`ReadAhead.fits`), and closes it when its pipeline is done. Closing cancels
every scroll it started and waits for it (its server context cleared): after a pipeline that
read them all they have ended; after one that failed they stop there.

This module imports no Beam (it runs before Beam is imported).
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.search import Partition, SearchTarget

__all__ = [
    "DONE",
    "PAGES_PER_SCROLL",
    "Adopted",
    "Pages",
    "ReadAhead",
    "ReadPart",
    "Scroll",
    "adopt",
    "plan_parts",
    "planned",
    "planning_key",
    "reading_key",
    "whole_reads",
]

DONE = object()
"""What a scroll puts in its queue after its last page."""
PAGES_PER_SCROLL = 3
"""Pages a reader holds waiting, per scroll it runs at once."""
_WATCH = 0.02
"""Seconds between the read-ahead's looks at its scrolls (to start the next part)."""


@dataclass(frozen=True)
class ReadPart:
    """One part of a read: a logical index (or pattern), its types (None: all), the query, and
    which part (None: the whole of it)."""

    index: str
    doc_types: tuple[str, ...] | None
    partition: Partition | None
    query: Any = None

    def key(self) -> tuple[Any, ...]:
        """What identifies the part (its query may be a dict, which does not hash)."""
        query = None if self.query is None else json.dumps(self.query, sort_keys=True)
        return (self.index, self.doc_types, self.partition, query)

    def whole(self) -> ReadPart:
        """The whole read this part belongs to."""
        return ReadPart(self.index, self.doc_types, None, self.query)


def whole_reads(sources: Sequence[tuple[str, Sequence[str] | None]]) -> list[ReadPart]:
    """The whole reads of (logical index or pattern, types or None) sources."""
    return [ReadPart(index, tuple(types) if types else None, None) for index, types in sources]


def plan_parts(target: SearchTarget, whole: ReadPart, parallelism: int) -> list[ReadPart]:
    """The parts the server splits a whole read into (the whole of it if it is not split)."""
    with target.connect() as client:
        partitions = client.partitions(whole.index, whole.doc_types, parallelism)
    if not partitions:
        return [whole]
    return [ReadPart(whole.index, whole.doc_types, p, whole.query) for p in partitions]


class Pages:
    """The pages of running scrolls, `(scroll, page)` in the order they come, at most `limit`
    pages waiting (a scroll's end, `DONE`, or its failure takes no room: a read of many small
    parts is not held up by their ends)."""

    def __init__(self, limit: int) -> None:
        self._items = queue.SimpleQueue[tuple[Any, Any]]()
        self._room = threading.Semaphore(limit)

    def put_page(self, scroll: Any, page: Any, cancelled: threading.Event) -> bool:
        """Wait for room (False: cancelled meanwhile), then add the page."""
        while not cancelled.is_set():
            if self._room.acquire(timeout=0.5):
                self._items.put((scroll, page))
                return True
        return False

    def put_end(self, scroll: Any, item: Any) -> None:
        """A scroll's `DONE` or its exception."""
        self._items.put((scroll, item))

    def get(self, timeout: float) -> tuple[Any, Any]:
        """The next `(scroll, item)`; `queue.Empty` after `timeout` seconds."""
        scroll, item = self._items.get(timeout=timeout)
        if item is not DONE and not isinstance(item, BaseException):
            self._room.release()
        return scroll, item

    def qsize(self) -> int:
        return self._items.qsize()


class Scroll(threading.Thread):
    """One part read by a thread of its own into `Pages`, as `(scroll, page)`, then
    `(scroll, DONE)`. A failure is handed over the same way (`(scroll, exception)`) and raised
    by the reader."""

    def __init__(
        self,
        target: SearchTarget,
        part: ReadPart,
        page_size: int,
        pages: Pages,
        page_bytes: int | None = None,
    ) -> None:
        super().__init__(daemon=True, name="cfysnap-scroll")
        self.part, self.pages = part, pages
        self._target, self._page_size, self._page_bytes = target, page_size, page_bytes
        self._cancelled = threading.Event()

    def run(self) -> None:
        try:
            with self._target.connect() as client:
                scan = client.scan_pages(
                    self.part.index,
                    list(self.part.doc_types) if self.part.doc_types else None,
                    query=self.part.query,
                    partition=self.part.partition,
                    page_size=self._page_size,
                    page_bytes=self._page_bytes,
                )
                try:
                    for page in scan:
                        if not self.pages.put_page(self, page, self._cancelled):
                            return
                finally:
                    scan.close()  # clears the scroll, also when the reader gave up
            self.pages.put_end(self, DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
            self.pages.put_end(self, exc)

    def cancel(self) -> None:
        self._cancelled.set()


@dataclass(frozen=True)
class Adopted:
    """What a reader takes over from a read-ahead: the queue its scrolls put pages in, those
    scrolls (running or done: each one's end is in the queue), and the keys of their parts
    (not to be started again by the reader that adopted them)."""

    pages: Pages
    scrolls: list[Scroll]
    started: frozenset[tuple[Any, ...]]


class ReadAhead:
    """The whole reads `wholes`, planned now, their first parts scrolled from `start()` on,
    `concurrency` at a time, until a reader adopts them (`adopt`) or `close()`. The keywords
    must be the reader's own: a reader given others neither takes the plan nor adopts."""

    _open: dict[str, ReadAhead] = {}
    _lock = threading.Lock()

    def __init__(
        self,
        target: SearchTarget,
        wholes: Sequence[ReadPart],
        *,
        parallelism: int,
        page_size: int,
        page_bytes: int | None,
        concurrency: int,
    ) -> None:
        self.token = uuid.uuid4().hex
        self._target, self._page_size, self._page_bytes = target, page_size, page_bytes
        self._concurrency, self._parallelism = concurrency, parallelism
        self.plan = {whole.key(): plan_parts(target, whole, parallelism) for whole in wholes}
        self.pages = Pages(PAGES_PER_SCROLL * concurrency)
        self.scrolls: list[Scroll] = []
        self._started: set[tuple[Any, ...]] = set()
        self._adopted = False
        self._closed = threading.Event()
        self._starter = threading.Thread(target=self._start_parts, daemon=True, name="cfysnap-ahead")

    @staticmethod
    def fits(beam_args: Sequence[str]) -> bool:
        """Whether a job run with `beam_args` reads in this process: the default runner
        (in-process, one worker) is the only one given no Beam options at all."""
        return not beam_args

    def planning(self) -> tuple[Any, ...]:
        """What a reader's planning step must have been given for this plan to be its own."""
        return planning_key(self._target, self._parallelism)

    def reading(self) -> tuple[Any, ...]:
        """What a reader must have been given for these pages and scrolls to be its own."""
        return reading_key(self._target, self._page_size, self._page_bytes, self._concurrency)

    def start(self) -> ReadAhead:
        with ReadAhead._lock:
            ReadAhead._open[self.token] = self
        self._starter.start()
        return self

    def _parts(self) -> Iterator[ReadPart]:
        for parts in self.plan.values():
            yield from parts

    def _start_parts(self) -> None:
        """Start the planned parts in order, `concurrency` scrolls running at a time, until
        adopted or closed."""
        for part in self._parts():
            while True:
                with ReadAhead._lock:
                    if self._adopted or self._closed.is_set():
                        return
                    if sum(s.is_alive() for s in self.scrolls) < self._concurrency:
                        scroll = Scroll(
                            self._target, part, self._page_size, self.pages, self._page_bytes
                        )
                        self.scrolls.append(scroll)
                        self._started.add(part.key())
                        scroll.start()
                        break
                self._closed.wait(_WATCH)

    def close(self) -> None:
        """Forget it; cancel every scroll it started and wait for it (its server context
        cleared). After a pipeline that read them all they have ended; after one that failed,
        adopted or not, they stop here, whatever the reader did."""
        with ReadAhead._lock:
            ReadAhead._open.pop(self.token, None)
            self._closed.set()
        self._starter.join()
        for scroll in self.scrolls:
            scroll.cancel()
        for scroll in self.scrolls:
            scroll.join()

    def __enter__(self) -> ReadAhead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def planning_key(target: SearchTarget, parallelism: int) -> tuple[Any, ...]:
    """The keywords a plan depends on, as `planned` compares them."""
    return (target, parallelism)


def reading_key(
    target: SearchTarget, page_size: int, page_bytes: int | None, concurrency: int
) -> tuple[Any, ...]:
    """The keywords a reader's pages and scrolls depend on, as `adopt` compares them."""
    return (target, page_size, page_bytes, concurrency)


def planned(token: str | None, whole: ReadPart, planning: tuple[Any, ...]) -> list[ReadPart] | None:
    """The parts the read-ahead `token` planned for `whole`, if it planned with `planning`
    (`planning_key`); None: plan it yourself."""
    if token is None:
        return None
    with ReadAhead._lock:
        ahead = ReadAhead._open.get(token)
        if ahead is None or ahead.planning() != planning:
            return None
        return ahead.plan.get(whole.key())


def adopt(token: str | None, reading: tuple[Any, ...]) -> Adopted | None:
    """The read-ahead `token`'s queue, scrolls and started parts, once, for a reader given
    `reading` (`reading_key`); it starts no more parts. None: no read-ahead here, one
    with other keywords, or one already adopted."""
    if token is None:
        return None
    with ReadAhead._lock:
        ahead = ReadAhead._open.get(token)
        if ahead is None or ahead._adopted or ahead.reading() != reading:
            return None
        ahead._adopted = True
        return Adopted(ahead.pages, list(ahead.scrolls), frozenset(ahead._started))
