"""The Beam connector `transforms.search_io` on the real servers: `ReadFromSearch` reads every
document exactly once (split by shard on Elasticsearch 1.7, by slice on 8), `WriteToSearch`
writes every hit with its id in bounded, checked batches, fails naming a document the server
refuses, and the README's example runs as written."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.display import DisplayData

from core.errors import BulkLoadError, job_error
from core.model import Hit, Version
from core.search import SearchClient, SearchTarget
from pipelines.sample.generate import ManagerSpec, manager_hits
from pipelines.sample.load import install_manager, load_manager
from tests.conftest import REPO, wipe
from transforms.search_io import ReadAllFromSearch, ReadFromSearch, WriteToSearch, WrittenBatch

pytestmark = [pytest.mark.server]


def keyed(hits: Any) -> Counter[tuple[str, str, str, str]]:
    return Counter(
        (h["_index"], h["_type"], h["_id"], json.dumps(h["_source"], sort_keys=True)) for h in hits
    )


def plugins(n: int, bad: int | None = None) -> list[Hit]:
    return [
        {
            "_index": "cloudify_storage",
            "_type": "plugin",
            "_id": f"p{i}",
            "_source": {"id": f"p{i}", "uploaded_at": "not a number" if i == bad else i},
        }
        for i in range(n)
    ]


@pytest.mark.es8
def test_read_from_search_reads_every_document_once(search: SearchClient, tmp_path: Path) -> None:
    spec = ManagerSpec(version=Version.V3_3, events=300, logs=300, keys_dir=str(tmp_path / "k"))
    load_manager(spec, search, tmp_path / "fs")
    expected = keyed(h for h in manager_hits(spec) if h["_index"].startswith("logstash-"))
    with BeamPipeline() as p:
        hits = p | ReadFromSearch(SearchTarget(search.url), "logstash-*", parallelism=3, page_size=7)
        assert_that(
            hits | beam.Map(lambda h: (h["_index"], h["_type"], h["_id"], json.dumps(h["_source"], sort_keys=True))),
            equal_to(list(expected.elements())),
        )
        assert_that(hits | beam.Map(lambda h: (h["_score"], sorted(h))), equal_to(
            [(0.0, ["_id", "_index", "_score", "_source", "_type"])] * sum(expected.values())),
            label="es_data shape")


def test_read_from_search_shows_what_it_reads() -> None:
    read = ReadFromSearch(SearchTarget("http://u:secret@127.0.0.1:9200"), "cloudify_storage",
                          ["node"], parallelism=4)
    items = {i.key: i.value for i in DisplayData.create_from(read).items}
    assert items == {"server": "http://127.0.0.1:9200", "index": "cloudify_storage",
                     "doc_types": "node", "parallelism": 4, "page_size": 1000, "page_bytes": 0}


class Collect:
    """`on_batch` for tests: DoFns are pickled, so batches are kept in a class attribute (the
    runner is in-process)."""

    batches: list[WrittenBatch] = []

    def __call__(self, batch: WrittenBatch) -> None:
        Collect.batches.append(batch)


@pytest.mark.es8
def test_write_to_search_keeps_ids_bounds_batches_and_overwrites(search: SearchClient) -> None:
    install_manager(search, Version.V3_4)
    Collect.batches.clear()
    hits = plugins(25)
    for _ in range(2):  # a second run overwrites by id: still 25
        with BeamPipeline() as p:
            batches = (
                p
                | beam.Create(list(enumerate(hits)))
                | WriteToSearch(SearchTarget(search.url), max_docs=10, tagged=True,
                                on_batch=Collect())
            )
            assert_that(batches | beam.Map(lambda b: b.documents) | beam.CombineGlobally(sum),
                        equal_to([25]), label="all")
            assert_that(batches | beam.Map(lambda b: b.documents <= 10) | beam.Distinct(),
                        equal_to([True]), label="bounded")
    search.refresh()
    stored = {h["_id"]: h["_source"] for h in search.scan("cloudify_storage", ["plugin"])}
    assert stored == {h["_id"]: h["_source"] for h in hits}
    seen = Collect.batches
    assert sum(b.documents for b in seen) == 50 and all(b.documents <= 10 for b in seen)
    tags = sorted(t for batch in seen for t in batch.tags)
    assert tags == sorted(list(range(25)) * 2)  # every element's tag came back with its batch
    assert all(dict(b.counts) == {"cloudify_storage/plugin": b.documents} for b in seen)


@pytest.mark.es8
def test_write_to_search_fails_the_job_naming_the_document_refused(search: SearchClient) -> None:
    install_manager(search, Version.V3_4)
    if search.layout.value == "typed":
        search.request("PUT", "/cloudify_storage/_mapping/plugin",
                       {"plugin": {"properties": {"uploaded_at": {"type": "long"}}}})
    else:
        search.request("PUT", "/cloudify_storage-plugin",
                       {"mappings": {"properties": {"uploaded_at": {"type": "long"}}}})
    with pytest.raises(Exception) as info:  # noqa: PT011 - the runner wraps the DoFn's error
        with BeamPipeline() as p:
            _ = p | beam.Create(plugins(10, bad=3)) | WriteToSearch(search.url, max_docs=4)
    error = job_error("restore", info.value)
    assert isinstance(error, BulkLoadError)
    assert [(i, t, d, s) for i, t, d, s, _ in error.items] == [
        ("cloudify_storage", "plugin", "p3", 400)
    ]
    assert "uploaded_at" in error.items[0][4] and "not a number" not in str(error)


def test_write_to_search_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="op_type"):
        WriteToSearch("http://127.0.0.1:9200", op_type="upsert")
    with pytest.raises(ValueError, match="max_docs"):
        WriteToSearch("http://127.0.0.1:9200", max_docs=0)


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"```python\n(# The connector on its own.*?)```", text, re.DOTALL)
    assert found, "README lacks the connector example"
    return found.group(1)


def test_the_readme_example_copies_documents_between_servers(
    search: SearchClient, search8: SearchClient, tmp_path: Path
) -> None:
    """The README's example, run as written against the two servers of the test suite."""
    spec = ManagerSpec(version=Version.V3_3, events=50, logs=50, keys_dir=str(tmp_path / "k"))
    load_manager(spec, search, tmp_path / "fs")
    wipe(search8)
    code = readme_example().replace("http://127.0.0.1:9200", search.url).replace(
        "http://127.0.0.1:9280", search8.url)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    search8.refresh()
    copied = list(search8.scan("logstash-*"))
    assert keyed(copied) == keyed(h for h in manager_hits(spec) if h["_type"] == "cloudify_event")


@pytest.mark.parametrize("bad", [{"parallelism": 0}, {"page_size": 0}, {"concurrency": 0}, {"page_bytes": 0}])
def test_read_all_from_search_refuses_a_size_below_one(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        ReadAllFromSearch("http://127.0.0.1:9", **bad)
    ReadAllFromSearch("http://127.0.0.1:9", page_bytes=None)  # sized by hits alone: fine


def test_a_raw_page_counts_once_estimates_from_lengths_and_codes_round_trip() -> None:
    """`RawPage.counts` (what the read's counters and the lines' counts use) is the documents
    per (index, type), worked out once; `RawPageCoder` gives the page back as it was and sizes
    it by the lengths of its sources, asking no hit for an estimate of its own."""
    import apache_beam as beam
    import msgspec

    from core.search import RawHit, RawPage
    from transforms.search_io import RawPageCoder

    page = RawPage([
        RawHit("logstash-2015.12.01", "cloudify_event", "e1", msgspec.Raw(b'{"a": 1}')),
        RawHit("logstash-2015.12.01", "cloudify_log", "l1", msgspec.Raw(b'{"message": {"text": "x\\ny"}}')),
        RawHit("logstash-2015.12.02", "cloudify_event", "e\u00e92", msgspec.Raw(b"{}")),
        RawHit("logstash-2015.12.01", "cloudify_event", "e3", msgspec.Raw(b'{"b": [1, 2]}')),
    ])
    counts = page.counts()
    assert counts == {("logstash-2015.12.01", "cloudify_event"): 2,
                      ("logstash-2015.12.01", "cloudify_log"): 1,
                      ("logstash-2015.12.02", "cloudify_event"): 1}
    assert page.counts() is counts  # kept, not counted again
    assert page.nbytes == 8 + 29 + 2 + 13 + 4 * 64

    coder = beam.coders.registry.get_coder(RawPage)
    assert isinstance(coder, RawPageCoder)
    back = coder.decode(coder.encode(page))
    assert isinstance(back, RawPage)
    assert [(h.index, h.type, h.id, bytes(h.source)) for h in back] == [
        (h.index, h.type, h.id, bytes(h.source)) for h in page
    ]
    assert coder.estimate_size(page) == page.nbytes
    assert coder.get_impl().estimate_size(page) == page.nbytes  # what Beam's counters sample


def test_read_all_from_search_gives_pages_coded_as_raw_pages() -> None:
    """The pages of `ReadAllFromSearch(pages=True)` are typed `RawPage`, so Beam codes and
    sizes them with `RawPageCoder` (graph only: nothing is read)."""
    import apache_beam as beam

    from core.search import RawPage
    from transforms.search_io import RawPageCoder, ReadAllFromSearch, ReadPart

    p = beam.Pipeline()
    pages = (p | beam.Create([ReadPart("cloudify_storage", None, None)], reshuffle=False)
             | ReadAllFromSearch("http://127.0.0.1:1", pages=True))
    assert pages.element_type is RawPage
    assert isinstance(beam.coders.registry.get_coder(pages.element_type), RawPageCoder)


def test_write_to_search_takes_pages_of_hits_in_order(search: SearchClient) -> None:
    """`HitPage`s of tagged hits are written as their hits one by one would be: each with its
    `_id`, batches bounded across pages, every tag back with its batch, in the page's order."""
    from transforms.search_io import HitPage

    install_manager(search, Version.V3_4)
    Collect.batches.clear()
    hits = list(enumerate(plugins(25)))
    pages = [HitPage(hits[:7], nbytes=700), HitPage(hits[7:], nbytes=1800)]
    with BeamPipeline() as p:
        _ = (p | beam.Create(pages, reshuffle=False)
             | WriteToSearch(SearchTarget(search.url), max_docs=10, tagged=True,
                             on_batch=Collect()))
    search.refresh()
    stored = {h["_id"]: h["_source"] for h in search.scan("cloudify_storage", ["plugin"])}
    assert stored == {h["_id"]: h["_source"] for _, h in hits}
    assert [list(b.tags) for b in Collect.batches] == [
        list(range(0, 10)), list(range(10, 20)), list(range(20, 25))]


def test_a_hit_page_codes_round_trip_and_is_sized_by_its_own_count() -> None:
    """`HitPageCoder` gives a page back as it was (dict and archive-bytes sources alike) and
    sizes it by the page's `nbytes`, pickling nothing to measure it."""
    import msgspec

    from transforms.search_io import HitPage, HitPageCoder

    page = HitPage([(3, {"_index": "cloudify_storage", "_type": "plugin", "_id": "p",
                         "_source": {"id": "p"}}),
                    (4, {"_index": "logstash-2015.12.01", "_type": "cloudify_log", "_id": "l",
                         "_source": msgspec.Raw(b'{"message": "x"}')})], nbytes=123)
    coder = beam.coders.registry.get_coder(HitPage)
    assert isinstance(coder, HitPageCoder)
    back = coder.decode(coder.encode(page))
    assert type(back) is HitPage and back.nbytes == 123
    assert back[0] == page[0] and back[1][0] == 4
    assert bytes(back[1][1]["_source"]) == b'{"message": "x"}'
    assert coder.get_impl().estimate_size(page) == 123  # what Beam's counters sample
