"""`core.read_ahead` on the real 1.7 server: a read started before its pipeline is adopted by the
pipeline's reader (its plan taken, no part read twice, every document read once); a read-ahead
nothing adopted is cancelled and its server contexts cleared; `Pages` bounds pages, not ends."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from core import read_ahead
from core.model import Version
from core.read_ahead import DONE, Pages, ReadAhead, ReadPart, Scroll, whole_reads
from core.search import SearchClient, SearchTarget
from pipelines.sample.generate import ManagerSpec, manager_hits
from pipelines.sample.load import load_manager
from transforms._beam import Values
from transforms.search_io import ReadAllFromSearch

SOURCES = [("cloudify_storage", None), ("logstash-*", ("cloudify_event",))]


class Started:
    """The parts whose scrolls were started, in this process (a class attribute: DoFns are
    pickled, the runner is in-process)."""

    parts: list[ReadPart] = []


@pytest.fixture
def counted_scrolls(monkeypatch: pytest.MonkeyPatch) -> list[ReadPart]:
    real_start = Scroll.start

    def start(self: Scroll) -> None:
        Started.parts.append(self.part)
        real_start(self)

    Started.parts = []
    monkeypatch.setattr(Scroll, "start", start)
    return Started.parts


def open_contexts(client: SearchClient) -> int:
    _, stats = client.request("GET", "/_nodes/stats/indices/search")
    return sum(n["indices"]["search"]["open_contexts"] for n in stats["nodes"].values())


def wait_for_no_contexts(client: SearchClient) -> int:
    deadline = time.monotonic() + 5
    while (n := open_contexts(client)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


@pytest.mark.server
def test_the_pipeline_adopts_a_read_started_ahead(
    search: SearchClient, tmp_path: Path, counted_scrolls: list[ReadPart],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every document is read once; the pipeline takes the read-ahead's plan (the server is not
    asked for one again) and starts no scroll of a part started ahead: each planned part is
    scrolled once in all. The read-ahead had started parts before the pipeline ran."""
    spec = ManagerSpec(version=Version.V3_3, events=400, logs=200, keys_dir=str(tmp_path / "k"))
    load_manager(spec, search, tmp_path / "fs")
    expected = sorted(
        (h["_index"], h["_type"], h["_id"], json.dumps(h["_source"], sort_keys=True))
        for h in manager_hits(spec)
        if h["_index"] == "cloudify_storage" or h["_type"] == "cloudify_event"
    )
    target = SearchTarget(search.url, layout=search.layout)
    ahead = ReadAhead(target, whole_reads(SOURCES), parallelism=2, page_size=50,
                      page_bytes=None, concurrency=2)

    def no_planning(*args: Any) -> None:
        raise AssertionError("the pipeline planned a read the read-ahead had planned")

    monkeypatch.setattr("transforms.search_io.plan_parts", no_planning)
    with ahead:
        deadline = time.monotonic() + 5
        while not Started.parts and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Started.parts, "the read-ahead started no part before the pipeline"
        with BeamPipeline() as p:
            hits = (p | Values(whole_reads(SOURCES))
                    | ReadAllFromSearch(target, parallelism=2, page_size=50, concurrency=2,
                                        ahead=ahead.token))
            assert_that(
                hits | beam.Map(lambda h: (h["_index"], h["_type"], h["_id"],
                                           json.dumps(h["_source"], sort_keys=True))),
                equal_to(expected),
            )
        planned = [part for parts in ahead.plan.values() for part in parts]
    assert len(planned) == 10  # 5 shards of cloudify_storage, shard 0-4 of every logstash index
    assert Counter(p.key() for p in Started.parts) == Counter(p.key() for p in planned)
    assert wait_for_no_contexts(search) == 0


@pytest.mark.server
def test_a_read_ahead_nothing_adopted_is_cancelled_and_cleared(
    search: SearchClient, tmp_path: Path, counted_scrolls: list[ReadPart]
) -> None:
    """Closed with its pages unread (a pipeline that failed before reading, or ran elsewhere):
    its scrolls stop, and the server holds none of their contexts."""
    spec = ManagerSpec(version=Version.V3_3, events=600, logs=600, keys_dir=str(tmp_path / "k"))
    load_manager(spec, search, tmp_path / "fs")
    target = SearchTarget(search.url, layout=search.layout)
    with ReadAhead(target, whole_reads(SOURCES), parallelism=2, page_size=20,
                   page_bytes=None, concurrency=2) as ahead:
        deadline = time.monotonic() + 5
        while not open_contexts(search) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert open_contexts(search) > 0  # scrolls held open, waiting for room
    assert not any(s.is_alive() for s in ahead.scrolls)
    assert Started.parts == [s.part for s in ahead.scrolls]
    held = []
    while ahead.pages.qsize():
        held.append(ahead.pages.get(0)[1])
    assert not any(isinstance(item, BaseException) for item in held)
    assert 0 < sum(item is not DONE for item in held) <= 6  # never more pages than its bound
    assert wait_for_no_contexts(search) == 0
    assert read_ahead.adopt(ahead.token, ahead.reading()) is None  # closed: nothing to adopt


def test_only_the_in_process_runner_reads_ahead() -> None:
    """A job given no Beam options runs on the in-process runner with one worker, whose reads
    are not spread over workers: the only one a read-ahead is started for."""
    from apache_beam.options.pipeline_options import DirectOptions

    from core.options import DEFAULT_RUNNER, beam_options, spreads_work

    options = beam_options([])
    assert options.view_as(beam.options.pipeline_options.StandardOptions).runner == DEFAULT_RUNNER
    assert options.view_as(DirectOptions).direct_running_mode == "in_memory"
    assert not spreads_work(options)
    assert ReadAhead.fits([])
    assert not ReadAhead.fits(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert not ReadAhead.fits(["--runner=FlinkRunner"])


def test_pages_bound_pages_and_not_the_ends_of_scrolls() -> None:
    """A full `Pages` holds a page back until one is taken (and gives up when cancelled); a
    scroll's end or failure always goes in; items come out in the order they went in."""
    pages = Pages(2)
    cancelled = threading.Event()
    assert pages.put_page("a", 1, cancelled) and pages.put_page("b", 2, cancelled)
    pages.put_end("a", DONE)
    failure = ValueError("broken")
    pages.put_end("b", failure)
    assert pages.qsize() == 4
    late: list[bool] = []
    putter = threading.Thread(target=lambda: late.append(pages.put_page("c", 3, cancelled)))
    putter.start()
    putter.join(0.7)
    assert putter.is_alive() and not late  # no room: waits
    assert pages.get(1) == ("a", 1)  # a page taken makes room
    putter.join(2)
    assert late == [True]
    assert [pages.get(1) for _ in range(4)] == [("b", 2), ("a", DONE), ("b", failure), ("c", 3)]
    with pytest.raises(queue.Empty):
        pages.get(0.05)
    assert pages.put_page("d", 4, cancelled) and pages.put_page("e", 5, cancelled)
    cancelled.set()
    assert pages.put_page("f", 6, cancelled) is False  # full and cancelled: not added
    assert pages.qsize() == 2


def test_parts_are_told_apart_by_their_query() -> None:
    """A part's key takes its query's JSON (a dict does not hash), keys in any order."""
    a = ReadPart("cloudify_storage", None, None, {"term": {"x": 1}, "b": [1]})
    b = ReadPart("cloudify_storage", None, None, {"b": [1], "term": {"x": 1}})
    c = ReadPart("cloudify_storage", None, None, {"term": {"x": 2}})
    assert a.key() == b.key() != c.key()
    assert read_ahead.planned(None, a, ()) is None and read_ahead.adopt(None, ()) is None


@pytest.mark.server
def test_a_reader_with_other_keywords_neither_plans_with_nor_adopts_a_read_ahead(
    search: SearchClient, tmp_path: Path, counted_scrolls: list[ReadPart]
) -> None:
    """A reader whose page size differs from the read-ahead's reads every part itself, once;
    the read-ahead's own scrolls are stopped when it is closed."""
    spec = ManagerSpec(version=Version.V3_3, events=300, logs=100, keys_dir=str(tmp_path / "k"))
    load_manager(spec, search, tmp_path / "fs")
    expected = sorted(h["_id"] for h in manager_hits(spec)
                      if h["_index"] == "cloudify_storage" or h["_type"] == "cloudify_event")
    target = SearchTarget(search.url, layout=search.layout)
    with ReadAhead(target, whole_reads(SOURCES), parallelism=2, page_size=50,
                   page_bytes=None, concurrency=2) as ahead:
        with BeamPipeline() as p:
            hits = (p | Values(whole_reads(SOURCES))
                    | ReadAllFromSearch(target, parallelism=2, page_size=60, concurrency=2,
                                        ahead=ahead.token))
            assert_that(hits | beam.Map(lambda h: h["_id"]), equal_to(expected))
        planned = [part for parts in ahead.plan.values() for part in parts]
        ahead_started = [s.part for s in ahead.scrolls]
    # the pipeline started every planned part itself, beside what the read-ahead had started
    assert Counter(p.key() for p in Started.parts) == Counter(
        [p.key() for p in planned] + [p.key() for p in ahead_started])
    assert not any(s.is_alive() for s in ahead.scrolls)
    assert wait_for_no_contexts(search) == 0


class Boom(Exception):
    pass


def fail_on_first(hit: Any) -> Any:
    raise Boom(hit["_id"])


@pytest.mark.server
def test_a_pipeline_that_fails_after_adopting_leaves_no_scroll_behind(
    search: SearchClient, tmp_path: Path
) -> None:
    """A step after the reader fails on the first hit, while adopted scrolls still wait to
    put pages: the job fails, and once the read-ahead is closed no scroll thread runs and the
    server holds no scroll context."""
    spec = ManagerSpec(version=Version.V3_3, events=600, logs=600, keys_dir=str(tmp_path / "k"))
    load_manager(spec, search, tmp_path / "fs")
    target = SearchTarget(search.url, layout=search.layout)
    with pytest.raises(Exception, match="fail_on_first"):  # the step named, as Beam wraps it
        with ReadAhead(target, whole_reads(SOURCES), parallelism=2, page_size=10,
                       page_bytes=None, concurrency=2) as ahead:
            with BeamPipeline() as p:
                _ = (p | Values(whole_reads(SOURCES))
                     | ReadAllFromSearch(target, parallelism=2, page_size=10, concurrency=2,
                                         ahead=ahead.token)
                     | beam.Map(fail_on_first))
    assert ahead.scrolls
    assert not any(s.is_alive() for s in ahead.scrolls)
    assert not [t for t in threading.enumerate() if t.name == "cfysnap-scroll" and t.is_alive()]
    assert wait_for_no_contexts(search) == 0
