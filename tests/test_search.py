"""core.search: names (pure), the real server (marked `server`), and fault injection with a
tiny fake server for what a real one will not do on demand (429 items)."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from core.errors import BulkLoadError, SearchServerError
from core.model import Hit, Version, hit_key, storage_mappings
from core.search import (
    BulkItemError,
    BulkResult,
    Dialect,
    Layout,
    Partition,
    RawPage,
    SearchClient,
    ServerInfo,
    _error_reason,
)
from pipelines.sample.load import install_manager
from tests.conftest import wipe

# ---- pure: names ----------------------------------------------------------------------------


def offline(layout: Layout) -> SearchClient:
    return SearchClient("http://127.0.0.1:9", layout=layout)


@pytest.mark.parametrize(
    ("index", "doc_type", "physical"),
    [
        ("cloudify_storage", "node_instance", "cloudify_storage-node_instance"),
        ("cloudify_events", "cloudify_event", "cloudify_events-cloudify_event"),
        ("logstash-2016.03.14", "cloudify_log", "logstash-2016.03.14-cloudify_log"),
    ],
)
def test_typeless_names_round_trip(index: str, doc_type: str, physical: str) -> None:
    client = offline(Layout.TYPELESS)
    assert client.physical_index(index, doc_type) == physical
    assert client.logical(physical, None) == (index, doc_type)
    assert client.logical(physical, "_doc") == (index, doc_type)


def test_typed_names_are_the_logical_ones() -> None:
    client = offline(Layout.TYPED)
    assert client.physical_index("logstash-2016.03.14", "cloudify_event") == "logstash-2016.03.14"
    assert client.logical("logstash-2016.03.14", "cloudify_event") == (
        "logstash-2016.03.14",
        "cloudify_event",
    )


def test_url_never_carries_credentials() -> None:
    client = SearchClient("http://admin:s3cret@127.0.0.1:9200/", layout=Layout.TYPELESS)
    assert client.url == "http://127.0.0.1:9200"
    assert "s3cret" not in repr(client)


def test_client_pickles_without_its_transport() -> None:
    client = offline(Layout.TYPELESS)
    _ = client.transport
    copy = pickle.loads(pickle.dumps(client))
    assert copy._transport is None
    assert copy.url == client.url and copy.layout is Layout.TYPELESS


def test_bulk_result_raises_bulk_load_error() -> None:
    result = BulkResult(1, [BulkItemError("cloudify_storage", "node", "n1", 400, "bad")])
    with pytest.raises(BulkLoadError) as e:
        result.raise_on_failure()
    assert e.value.items == [("cloudify_storage", "node", "n1", 400, "bad")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_is_a_search_server_error() -> None:
    client = SearchClient(
        f"http://user:s3cret@127.0.0.1:{free_port()}", max_retries=1, retry_backoff=0.01
    )
    with pytest.raises(SearchServerError) as e:
        client.info()
    assert "cannot connect" in e.value.reason
    assert "s3cret" not in str(e.value)
    with pytest.raises(SearchServerError):
        list(client.scan("cloudify_storage"))


# ---- real server ----------------------------------------------------------------------------


def storage_hits() -> list[Hit]:
    """Documents whose field types clash between documents (as runtime_properties do)."""
    return [
        {
            "_index": "cloudify_storage",
            "_type": "node_instance",
            "_id": "vm_a1b2c",
            "_source": {"id": "vm_a1b2c", "runtime_properties": {"ip": "10.0.0.1", "port": 22}},
        },
        {
            "_index": "cloudify_storage",
            "_type": "node_instance",
            "_id": "vm_d3e4f",
            "_source": {"id": "vm_d3e4f", "runtime_properties": {"ip": {"v4": 1}, "port": "x"}},
        },
        {
            "_index": "cloudify_storage",
            "_type": "node",
            "_id": "dep1_vm",
            "_source": {"id": "vm", "deployment_id": "dep1", "type_hierarchy": ["a", "b"]},
        },
        {
            "_index": "cloudify_storage",
            "_type": "execution",
            "_id": "7ac5-uuid",
            "_source": {"id": "7ac5-uuid", "status": "terminated", "parameters": {"n": None}},
        },
    ]


def event_hits() -> list[Hit]:
    hits = []
    for day in ("2016.03.14", "2016.03.15"):
        for n, doc_type in enumerate(("cloudify_event", "cloudify_event", "cloudify_log")):
            hits.append(
                {
                    "_index": f"logstash-{day}",
                    "_type": doc_type,
                    "_id": f"{day}-{n}",
                    "_source": {
                        "type": doc_type,
                        "@timestamp": f"{day.replace('.', '-')}T10:11:12.345Z",
                        "message": {"text": f"message {n}", "arguments": None},
                        "context": {"deployment_id": "dep1"},
                    },
                }
            )
    return hits


def by_key(hits: list[Hit]) -> list[Hit]:
    return sorted(hits, key=hit_key)


def open_scroll_contexts(client: SearchClient) -> int:
    _, stats = client.request("GET", "/_nodes/stats/indices/search")
    return sum(n["indices"]["search"]["open_contexts"] for n in stats["nodes"].values())


@pytest.fixture
def store(search: SearchClient) -> SearchClient:
    """A wiped server holding a fresh 3.4 manager's indices (`cloudify_storage` with the
    manager's own mappings on a typed server; nothing up front on a typeless one)."""
    install_manager(search, Version.V3_4)
    return search


def put_field_type(client: SearchClient, index: str, doc_type: str, field: str, kind: str) -> None:
    """Map one field of (index, type) to `kind` before any document arrives."""
    if client.layout is Layout.TYPED:
        client.request("PUT", f"/{index}/_mapping/{doc_type}",
                       {doc_type: {"properties": {field: {"type": kind}}}})
    else:
        client.request("PUT", f"/{index}-{doc_type}",
                       {"mappings": {"properties": {field: {"type": kind}}}})


@pytest.mark.server
@pytest.mark.es8
def test_server_info_layout_and_dialect(search: SearchClient, server: str) -> None:
    info = search.info()
    if server == "es1":
        assert info == ServerInfo("elasticsearch", (1, 7, 6))
        assert search.layout is Layout.TYPED
        assert search.dialect == Dialect(
            typed=True, scan_search_type=True, sliced_scroll=False, raw_scroll_id=True,
            delete_by_query="query-api", string_errors=True,
        )
    else:
        assert (info.distribution, info.version[0]) == ("elasticsearch", 8)
        assert search.layout is Layout.TYPELESS
        assert search.dialect.sliced_scroll and not search.dialect.typed


@pytest.mark.server
def test_a_typed_server_never_gets_a_storage_index_made_up(search: SearchClient) -> None:
    """On Elasticsearch 1.7 `cloudify_storage` belongs to the manager: writing into a server
    without it fails naming the index, and creates nothing."""
    with pytest.raises(SearchServerError, match="index cloudify_storage does not exist"):
        search.bulk(storage_hits())
    assert not search.index_exists("cloudify_storage")
    search.bulk(event_hits(), refresh=True)  # event indices are created, as logstash does
    assert search.count("logstash-*") == 6


@pytest.mark.server
@pytest.mark.es8
def test_bulk_then_scan_round_trips_exact_hits(store: SearchClient) -> None:
    search = store
    contexts = open_scroll_contexts(search)  # scrolls of other processes expire on their own
    hits = storage_hits() + event_hits()
    result = search.bulk(hits, refresh=True)
    assert result == BulkResult(len(hits), [])

    assert by_key(list(search.scan("*", page_size=2))) == by_key(hits)
    assert by_key(list(search.scan("cloudify_storage"))) == by_key(storage_hits())
    assert by_key(list(search.scan("cloudify_storage", ["node_instance"]))) == by_key(
        storage_hits()[:2]
    )
    assert by_key(list(search.scan("logstash-*", ["cloudify_log"]))) == by_key(
        [h for h in event_hits() if h["_type"] == "cloudify_log"]
    )
    assert list(search.scan("cloudify_events")) == []
    assert by_key(list(search.scan("cloudify_storage", query={"ids": {"values": ["dep1_vm"]}}))) == [
        storage_hits()[2]
    ]
    assert open_scroll_contexts(search) == contexts


@pytest.mark.server
@pytest.mark.es8
def test_scan_clears_its_scroll_when_abandoned(store: SearchClient) -> None:
    search = store
    search.bulk(event_hits(), refresh=True)
    contexts = open_scroll_contexts(search)  # scrolls of other processes expire on their own
    scan = search.scan("logstash-*", page_size=2)
    next(scan)
    assert open_scroll_contexts(search) > contexts  # one per shard
    scan.close()
    assert open_scroll_contexts(search) == contexts


@pytest.mark.server
def test_a_1x_scan_page_stays_near_page_size_over_many_indices(store: SearchClient) -> None:
    """1.x scan pages hold `size` hits per shard read, and a read of `logstash-*` reads shard N of
    every daily index (or every shard of all of them): the size asked for is divided by the
    shards read, so a page does not grow with the number of days (4 days of 5 shards here: a
    fixed size gave 80-hit pages for a page size of 20)."""
    search = store
    days = [f"2015.12.0{d}" for d in range(1, 5)]
    hits = [
        {"_index": f"logstash-{day}", "_type": "cloudify_event", "_id": f"{day}-{n}",
         "_source": {"type": "cloudify_event", "n": n}}
        for day in days
        for n in range(100)
    ]
    assert search.bulk_all(hits, max_docs=200, refresh=True) == BulkResult(400, [])
    parts = search.partitions("logstash-*", None, 2)
    assert parts == [Partition("shard", i, 5) for i in range(5)]
    assert [part.shards for part in parts] == [4] * 5  # planned: no _search_shards per scroll
    unplanned = [Partition("shard", i, 5) for i in range(5)]  # the server is asked instead
    for part in [*parts, *unplanned, None]:
        pages = list(search.scan_pages("logstash-*", partition=part, page_size=20))
        assert pages, f"{part}: no pages"
        assert all(type(page) is RawPage for page in pages)
        # a part reads 4 shards (5 hits each), the whole read 20 (1 each): 20-hit pages
        assert max(len(page) for page in pages) == 20, (part, [len(p) for p in pages])
    read = Counter(
        (h.index, h.type, h.id)
        for part in parts
        for page in search.scan_pages("logstash-*", partition=part, page_size=20)
        for h in page
    )
    assert read == Counter((h["_index"], h["_type"], h["_id"]) for h in hits)


@pytest.mark.server
@pytest.mark.es8
def test_pages_sized_by_bytes_hold_fewer_large_documents(
    search: SearchClient, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`page_bytes`: a page of large documents holds fewer hits, down to MIN_PAGE_HITS (4 here),
    a page of small ones `page_size`; the sizes come from the server's `_stats`, and every
    document is read once either way."""
    import core.search

    monkeypatch.setattr(core.search, "MIN_PAGE_HITS", 4)
    large, small = "logstash-2015.12.01", "logstash-2015.12.02"
    if server == "es1":  # one shard each, as 8.x makes them: one scan size, no division
        for name in (large, small):
            search.request("PUT", f"/{name}", {"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    hits = [
        {"_index": index, "_type": "cloudify_log", "_id": f"{index[-2:]}-{n}",
         "_source": {"n": n, "message": os.urandom(10_000).hex() if index == large else "ok"}}
        for index in (large, small)
        for n in range(40)
    ]
    assert search.bulk_all(hits, max_docs=20, refresh=True) == BulkResult(len(hits), [])
    search.request("POST", "/_flush")  # sizes on disk as a long-running manager's are
    large_bytes = search.stored_bytes_per_document(large)
    small_bytes = search.stored_bytes_per_document(small)
    assert large_bytes is not None and small_bytes is not None
    assert large_bytes > 12_500 > 2_500 > small_bytes, (large_bytes, small_bytes)
    assert search.stored_bytes_per_document("logstash-1999.01.01") is None

    def pages(index: str, **size: Any) -> list[list[Any]]:
        return list(search.scan_pages(index, page_size=20, **size))

    assert [len(p) for p in pages(large)] == [20, 20]
    assert [len(p) for p in pages(large, page_bytes=50_000)] == [4] * 10  # 50,000 / 12,500 < 4
    assert [len(p) for p in pages(small, page_bytes=50_000)] == [20, 20]  # 50,000 / 2,500 > 20
    read = Counter(hit_key({"_index": h.index, "_type": h.type, "_id": h.id})
                   for index in (large, small) for p in pages(index, page_bytes=50_000) for h in p)
    assert read == Counter(hit_key(h) for h in hits)


@pytest.mark.server
def test_a_1x_read_of_many_indices_is_split_into_groups_of_five(store: SearchClient) -> None:
    """7 daily indices of 2 shards, one of them large: the parts read at most 5 indices each, one
    shard id at a time, so a shard is asked for page_size / 5 hits, not page_size / 7 (a year
    of days would have asked each for 2); every document is read exactly once."""
    search = store
    days = [f"2015.12.{d:02d}" for d in range(1, 8)]
    for day in days:
        search.request("PUT", f"/logstash-{day}",
                       {"settings": {"number_of_shards": 2, "number_of_replicas": 0}})
    hits = [
        {"_index": f"logstash-{day}", "_type": "cloudify_log", "_id": f"{day}-{n}",
         "_source": {"type": "cloudify_log", "n": n}}
        for day in days
        for n in range(60 if day == days[3] else 3)
    ]
    assert search.bulk_all(hits, max_docs=100, refresh=True) == BulkResult(len(hits), [])
    first = ",".join(f"logstash-{d}" for d in days[:5])
    rest = ",".join(f"logstash-{d}" for d in days[5:])
    parts = search.partitions("logstash-*", None, 2)
    assert parts == [Partition("shard", i, 2, first) for i in range(2)] + [
        Partition("shard", i, 2, rest) for i in range(2)
    ]
    assert [part.shards for part in parts] == [5, 5, 2, 2]
    read: Counter[tuple[str, str, str]] = Counter()
    for part in parts:
        pages = list(search.scan_pages("logstash-*", partition=part, page_size=10))
        assert max(len(page) for page in pages) <= 10, (part, [len(p) for p in pages])
        read.update((h.index, h.type, h.id) for page in pages for h in page)
    assert read == Counter((h["_index"], h["_type"], h["_id"]) for h in hits)


@pytest.mark.server
@pytest.mark.es8
def test_partitions_cover_every_doc_exactly_once(store: SearchClient, server: str) -> None:
    """1.x has no sliced scroll: a read is split by shard (5 on a manager's cloudify_storage);
    8.x slices it. Either way the parts hold every document exactly once."""
    search = store
    hits = [
        {"_index": "cloudify_storage", "_type": "node", "_id": f"dep_{n}", "_source": {"n": n}}
        for n in range(500)
    ]
    assert search.bulk_all(hits, max_docs=120, refresh=True) == BulkResult(500, [])
    parts = search.partitions("cloudify_storage", None, 2)
    if server == "es1":
        assert parts == [Partition("shard", i, 5) for i in range(5)]
    else:
        assert parts == [Partition("slice", 0, 2), Partition("slice", 1, 2)]
    read = [
        [hit_key(h) for h in search.scan("cloudify_storage", partition=part, page_size=50)]
        for part in parts
    ]
    assert all(read), "each part should hold some documents"
    assert Counter(k for part in read for k in part) == Counter(hit_key(h) for h in hits)
    assert search.partitions("cloudify_events", None, 2) == (
        [] if server == "es1" else [Partition("slice", 0, 2), Partition("slice", 1, 2)]
    )


@pytest.mark.server
@pytest.mark.es8
def test_logical_indices_counts(store: SearchClient) -> None:
    search = store
    search.bulk(storage_hits() + event_hits(), refresh=True)
    search.ensure_index("cloudify_storage", "blueprint")  # exists (typed: its mapping), empty
    storage = {
        ("cloudify_storage", "node_instance"): 2,
        ("cloudify_storage", "node"): 1,
        ("cloudify_storage", "execution"): 1,
        ("cloudify_storage", "blueprint"): 0,
    }
    if search.layout is Layout.TYPED:  # every mapping type of the manager, empty or not
        storage |= {
            ("cloudify_storage", t): 0
            for t in storage_mappings(Version.V3_4)
            if ("cloudify_storage", t) not in storage
        }
    events = {
        ("logstash-2016.03.14", "cloudify_event"): 2,
        ("logstash-2016.03.14", "cloudify_log"): 1,
        ("logstash-2016.03.15", "cloudify_event"): 2,
        ("logstash-2016.03.15", "cloudify_log"): 1,
    }
    assert search.logical_indices("cloudify_storage") == storage
    assert search.logical_indices("logstash-*") == events
    assert search.logical_indices("*") == storage | events
    assert search.logical_indices("cloudify_events") == {}
    assert search.index_exists("cloudify_storage")
    assert search.index_exists("logstash-2016.03.14")
    assert not search.index_exists("cloudify_events")
    assert search.count("logstash-*") == 6
    assert search.count("cloudify_storage", "node_instance") == 2
    assert search.count("cloudify_events") == 0


@pytest.mark.server
@pytest.mark.es8
def test_bulk_reports_each_failed_item(store: SearchClient) -> None:
    search = store
    put_field_type(search, "cloudify_storage", "plugin", "wheels", "integer")
    hits = [
        {"_index": "cloudify_storage", "_type": "plugin", "_id": "a", "_source": {"wheels": 1}},
        {"_index": "cloudify_storage", "_type": "plugin", "_id": "b", "_source": {"wheels": "x"}},
        {"_index": "cloudify_storage", "_type": "plugin", "_id": "c", "_source": {"wheels": 3}},
    ]
    result = search.bulk(hits, refresh=True)
    assert result.succeeded == 2
    [failure] = result.failed
    assert (failure.index, failure.doc_type, failure.doc_id, failure.status) == (
        "cloudify_storage",
        "plugin",
        "b",
        400,
    )
    assert "pars" in failure.reason  # MapperParsingException / document_parsing_exception
    assert "wheels" in failure.reason
    assert sorted(h["_id"] for h in search.scan("cloudify_storage", ["plugin"])) == ["a", "c"]


@pytest.mark.server
@pytest.mark.es8
def test_create_conflict_is_a_409_item(store: SearchClient) -> None:
    search = store
    [first, *rest] = storage_hits()
    search.bulk([first], refresh=True)
    changed = {**first, "_source": {"id": first["_id"], "changed": True}}
    result = search.bulk([changed, *rest], op_type="create", refresh=True)
    assert result.succeeded == len(rest)
    assert [(f.doc_id, f.status) for f in result.failed] == [(first["_id"], 409)]
    assert search.get("cloudify_storage", "node_instance", first["_id"]) == first["_source"]


@pytest.mark.server
@pytest.mark.es8
def test_index_op_overwrites_by_id(store: SearchClient) -> None:
    search = store
    hits = storage_hits()
    search.bulk(hits, refresh=True)
    search.bulk(hits, refresh=True)
    assert search.count("cloudify_storage") == len(hits)


@pytest.mark.server
@pytest.mark.es8
def test_flush_commits_every_acknowledged_write(store: SearchClient) -> None:
    """After `flush` no written operation is left only in the translog (1.x syncs that every
    few seconds): the commit a restore makes before its journal says finished."""
    store.bulk(storage_hits() + event_hits())

    def uncommitted() -> int:  # of the test's own indices (not the server's system ones)
        _, stats = store.request("GET", "/_stats/translog")
        total = 0
        for name, index in stats["indices"].items():
            if not name.startswith("."):
                translog = index["primaries"]["translog"]
                total += int(translog.get("uncommitted_operations", translog["operations"]))
        return total

    assert uncommitted() == len(storage_hits() + event_hits())
    store.flush()
    assert uncommitted() == 0


@pytest.mark.server
@pytest.mark.es8
def test_document_operations(store: SearchClient) -> None:
    search = store
    search.bulk(storage_hits(), refresh=True)
    assert search.get("cloudify_storage", "node", "dep1_vm") == storage_hits()[2]["_source"]
    assert search.get("cloudify_storage", "node", "missing") is None
    assert search.get("cloudify_events", "cloudify_event", "x") is None

    search.update_fields("cloudify_storage", "node", "dep1_vm", {"host_id": "h1"}, refresh=True)
    assert search.get("cloudify_storage", "node", "dep1_vm") == {
        **storage_hits()[2]["_source"],
        "host_id": "h1",
    }
    with pytest.raises(SearchServerError):
        search.update_fields("cloudify_storage", "node", "missing", {"x": 1})

    assert search.delete("cloudify_storage", "node", "dep1_vm", refresh=True)
    assert not search.delete("cloudify_storage", "node", "dep1_vm")
    assert not search.delete("cloudify_events", "cloudify_event", "x")

    deleted = search.delete_by_query(
        "cloudify_storage", "node_instance", {"term": {"id": "vm_a1b2c"}}
    )
    assert deleted == 1
    assert [h["_id"] for h in search.scan("cloudify_storage", ["node_instance"])] == ["vm_d3e4f"]
    assert search.delete_by_query("cloudify_storage", None) == 2
    assert search.count("cloudify_storage") == 0
    assert search.delete_by_query("cloudify_storage", "node") == 0


@pytest.mark.server
def test_ensure_index_on_a_typeless_server_is_safe_and_idempotent(search8: SearchClient) -> None:
    search = search8
    threads = [
        threading.Thread(target=search.ensure_index, args=("cloudify_storage", "node"))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    search.ensure_index("cloudify_storage", "node")
    _, mapping = search.request("GET", "/cloudify_storage-node/_mapping")
    assert mapping["cloudify_storage-node"]["mappings"]["dynamic"] in (False, "false")
    _, settings = search.request("GET", "/cloudify_storage-node/_settings")
    index_settings = settings["cloudify_storage-node"]["settings"]["index"]
    assert (index_settings["number_of_shards"], index_settings["number_of_replicas"]) == ("1", "0")


@pytest.mark.server
def test_ensure_index_on_a_typed_server_changes_no_mapping(store: SearchClient) -> None:
    _, before = store.request("GET", "/cloudify_storage/_mapping")
    threads = [
        threading.Thread(target=store.ensure_index, args=("logstash-2016.01.02", "cloudify_log"))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.ensure_index("cloudify_storage", "node")
    store.ensure_index("cloudify_storage", "plugin")
    assert store.index_exists("logstash-2016.01.02")
    _, after = store.request("GET", "/cloudify_storage/_mapping")
    assert after == before
    store.ensure_index("elsewhere", "thing")  # another index: the server's own defaults
    assert store.index_exists("elsewhere")
    wipe(store)
    with pytest.raises(SearchServerError, match="index cloudify_storage does not exist"):
        store.ensure_index("cloudify_storage", "node")


@pytest.mark.server
@pytest.mark.es8
def test_a_pickled_client_reconnects(store: SearchClient) -> None:
    search = store
    search.bulk(storage_hits(), refresh=True)
    copy = pickle.loads(pickle.dumps(search))
    try:
        assert copy.count("cloudify_storage") == len(storage_hits())
    finally:
        copy.close()


# ---- fault injection: a fake server answering 429 for some bulk items ------------------------


class FakeBulkServer(http.server.ThreadingHTTPServer):
    """Answers `HEAD /<index>` with 200 and `POST /_bulk` from a script of per-item statuses:
    `script[n](doc_id)` is the status of that item in the n-th bulk request (last one repeats)."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.script = script
        self.requests: list[list[str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    server: FakeBulkServer

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        lines = self.rfile.read(int(self.headers["content-length"])).splitlines()
        actions = [json.loads(line) for line in lines[::2]]
        ids = [next(iter(a.values()))["_id"] for a in actions]
        step = self.server.script[min(len(self.server.requests), len(self.server.script) - 1)]
        self.server.requests.append(ids)
        items = []
        for action, doc_id in zip(actions, ids, strict=True):
            op, meta = next(iter(action.items()))
            status = step(doc_id)
            outcome = {"_index": meta["_index"], "_id": doc_id, "status": status}
            if status >= 300:
                outcome["error"] = {"type": "es_rejected_execution_exception", "reason": "full"}
            items.append({op: outcome})
        errors = any(next(iter(item.values()))["status"] >= 300 for item in items)
        body = json.dumps({"errors": errors, "items": items}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_bulk(request: pytest.FixtureRequest) -> Iterator[FakeBulkServer]:
    server = FakeBulkServer(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def three_hits() -> list[Hit]:
    return [
        {"_index": "cloudify_storage", "_type": "node", "_id": i, "_source": {"id": i}}
        for i in ("a", "b", "c")
    ]


@pytest.mark.parametrize(
    "fake_bulk", [[lambda i: 429 if i == "b" else 201, lambda i: 201]], indirect=True
)
def test_only_the_429_item_is_resent(fake_bulk: FakeBulkServer) -> None:
    client = SearchClient(fake_bulk.url, layout=Layout.TYPELESS, retry_backoff=0.01)
    assert client.bulk(three_hits()) == BulkResult(3, [])
    assert fake_bulk.requests == [["a", "b", "c"], ["b"]]


@pytest.mark.parametrize("fake_bulk", [[lambda i: 429 if i == "c" else 201]], indirect=True)
def test_an_item_still_failing_after_retries_is_reported(fake_bulk: FakeBulkServer) -> None:
    client = SearchClient(fake_bulk.url, layout=Layout.TYPELESS, max_retries=2, retry_backoff=0.01)
    result = client.bulk(three_hits())
    assert result.succeeded == 2
    assert [(f.doc_id, f.status) for f in result.failed] == [("c", 429)]
    assert fake_bulk.requests == [["a", "b", "c"], ["c"], ["c"]]


@pytest.mark.parametrize(
    "fake_bulk", [[lambda i: 503 if i != "a" else 400, lambda i: 201]], indirect=True
)
def test_a_4xx_item_is_not_resent(fake_bulk: FakeBulkServer) -> None:
    client = SearchClient(fake_bulk.url, layout=Layout.TYPELESS, retry_backoff=0.01)
    result = client.bulk(three_hits())
    assert result.succeeded == 2
    assert [(f.doc_id, f.status) for f in result.failed] == [("a", 400)]
    assert fake_bulk.requests == [["a", "b", "c"], ["b", "c"]]


class _FlushFailing(http.server.BaseHTTPRequestHandler):
    """A server whose flush fails on one shard (`failure`: the entry it answers with), as 1.x
    answers when another flush is under way and the request did not ask to wait."""

    failure: dict[str, Any] = {}
    paths: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        type(self).paths.append(self.path)
        body = json.dumps({"_shards": {"total": 10, "successful": 9, "failed": 1,
                                       "failures": [type(self).failure]}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        # 1.x: a string; its exception's name is kept, its detail withheld (it may quote values)
        ('FlushNotAllowedEngineException[[logstash-2015.12.01][2] already flushing, "pass1"]',
         "FlushNotAllowedEngineException"),
        # 8.x: an object; its type and reason, never its causes' text
        ({"type": "flush_failed_engine_exception", "reason": "Flush failed",
          "caused_by": {"type": "io_exception", "reason": "broker_pass pass1"}},
         "flush_failed_engine_exception: Flush failed"),
    ],
    ids=["1.x", "8.x"],
)
def test_a_flush_that_fails_on_a_shard_is_an_error_naming_it(reason: Any, said: str) -> None:
    _FlushFailing.failure = {"index": "logstash-2015.12.01", "shard": 2, "status": 503,
                             "reason": reason}
    _FlushFailing.paths = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlushFailing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = SearchClient(f"http://127.0.0.1:{server.server_address[1]}", layout=Layout.TYPED)
        with pytest.raises(SearchServerError) as caught:
            client.flush()
    finally:
        server.shutdown()
        server.server_close()
    assert str(caught.value) == f"search server {client.url}: flush: 1 shard failed ({said})"
    [path] = _FlushFailing.paths
    assert path.startswith("/_flush?") and "wait_if_ongoing=true" in path


def test_a_bulk_response_counts_as_written_only_when_every_item_says_so() -> None:
    """The fast reading of a bulk response (statuses only) takes it as all written only when
    `errors` is false, it has an item for every document sent and each item's status is 2xx;
    anything else is left to the whole parse, which names what failed."""
    from core.search import _all_written

    def response(statuses: list[int], errors: bool = False, **extra: object) -> bytes:
        items = [{"index": {"_id": str(n), "status": s, **extra}} for n, s in enumerate(statuses)]
        return json.dumps({"took": 3, "errors": errors, "items": items}).encode()

    assert _all_written(response([201, 200, 201]), 3)
    assert _all_written(response([201], _version=1, _shards={"total": 2}), 1)
    assert not _all_written(response([201, 200, 201]), 4)  # an item missing
    assert not _all_written(response([201, 400, 201]), 3)  # `errors` false, an item failed
    assert not _all_written(response([201, 201], errors=True), 2)
    assert not _all_written(b'{"items": [{"index": {"status": 201}}]}', 1)  # no `errors`
    assert not _all_written(b'{"errors": false, "items": [{"index": {}}]}', 1)  # no status
    assert not _all_written(b'{"errors": false, "items": [{"index": {"status": 201}, '
                            b'"create": {"status": 201}}]}', 1)
    assert not _all_written(b"<html><title>502 Bad Gateway</title></html>", 1)
    assert not _all_written("text", 1)


# ------------------------------------------------------------------------ review regressions
@pytest.mark.server
@pytest.mark.es8
def test_a_rejected_field_value_never_reaches_the_error(store: SearchClient) -> None:
    """Servers quote the rejected value (ES 7+: "Preview of field's value: ..."; 1.x:
    `NumberFormatException[For input string: "..."]`): a secret in a document that does not
    fit the target's mapping must not end up in the message."""
    search = store
    put_field_type(search, "cloudify_storage", "plugin", "broker_pass", "long")
    secret = "c10udify-TOPSECRET"
    hit = {
        "_index": "cloudify_storage",
        "_type": "plugin",
        "_id": "p1",
        "_source": {"id": "p1", "broker_pass": secret},
    }
    result = search.bulk([hit], refresh=True)
    [failure] = result.failed
    assert (failure.doc_id, failure.status) == ("p1", 400)
    assert "broker_pass" in failure.reason  # the field is named ...
    assert secret not in failure.reason  # ... its value is not
    with pytest.raises(BulkLoadError) as err:
        result.raise_on_failure()
    assert secret not in str(err.value)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            'MapperParsingException[failed to parse [n]]; nested: NumberFormatException[For '
            'input string: "s3cret"]; ',
            "MapperParsingException: failed to parse [n] (nested: NumberFormatException)",
        ),
        (
            "MapperParsingException[failed to parse [dt]]; nested: MapperParsingException[failed"
            " to parse date field [s3cret], tried both date format [dateOptionalTime], and "
            'timestamp number with locale []]; nested: IllegalArgumentException[Invalid format: '
            '"s3cret"]; ',
            "MapperParsingException: failed to parse [dt] (nested: IllegalArgumentException)",
        ),
        (
            "MapperParsingException[failed to parse [n]]; nested: "
            "ElasticsearchIllegalArgumentException[unknown property [s3cret]]; ",
            "MapperParsingException: failed to parse [n] (nested: "
            "ElasticsearchIllegalArgumentException)",
        ),
        (
            "DocumentAlreadyExistsException[[t1][4] [d][3]: document already exists]",
            "DocumentAlreadyExistsException: [t1][4] [d][3]: document already exists",
        ),
        ("IndexMissingException[[nope] missing]", "IndexMissingException: [nope] missing"),
        ("SomethingNewException[value s3cret here]", "SomethingNewException"),
        ("plain words with s3cret", "(reason withheld)"),
    ],
)
def test_1x_string_errors_keep_names_and_fields_never_values(error: str, reason: str) -> None:
    assert _error_reason({"error": error, "status": 400}) == reason
    assert "s3cret" not in _error_reason(error)


def test_a_malformed_hit_error_does_not_show_its_source() -> None:
    client = SearchClient("http://127.0.0.1:1", layout=Layout.TYPELESS)
    hit = {"_type": "node_instance", "_id": "vm_1", "_source": {"broker_pass": "TOPSECRET"}}
    with pytest.raises(ValueError) as err:
        client.bulk([hit])
    assert str(err.value) == "bulk: hit without _index (keys: ['_id', '_source', '_type'])"


def test_each_planned_part_says_how_many_shards_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Indices of different shard counts: part N reads shard N of each index that has one, and
    says so (`Partition.shards`), for its scroll to divide its page by; equality ignores it."""
    client = SearchClient("http://127.0.0.1:1")
    es17 = Dialect.of(ServerInfo("elasticsearch", (1, 7, 6)))
    monkeypatch.setattr(SearchClient, "dialect", property(lambda self: es17))
    groups = [[{"index": "a", "shard": i}] for i in range(5)] + [[{"index": "b", "shard": i}] for i in range(2)]
    monkeypatch.setattr(SearchClient, "_shard_groups", lambda self, index, params: groups)
    parts = client.partitions("*", None, 2)
    assert parts == [Partition("shard", i, 5) for i in range(5)]
    assert [part.shards for part in parts] == [2, 2, 1, 1, 1]
    with pytest.raises(ValueError, match="only a shard part"):
        Partition("slice", 0, 2, shards=1)
    with pytest.raises(ValueError, match="at least 1"):
        Partition("shard", 0, 2, shards=0)
