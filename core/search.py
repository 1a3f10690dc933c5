"""The one module that talks to the search server (Elasticsearch 1.x–9.x, OpenSearch).

Everything above this module speaks the *logical* layout of a Cloudify 3.x snapshot: Cloudify's own
index and type names (`cloudify_storage`/`node_instance`, `logstash-2016.03.14`/`cloudify_event`).
How those are stored depends on the server (spec §4):

- `Layout.TYPED` (Elasticsearch ≤ 6, what every Cloudify 3.x manager runs: 1.x): one index per
  logical index, mapping types as in Cloudify. The manager owns `cloudify_storage` and its
  mappings: this module never creates nor changes them (other missing indices, like the daily
  event indices logstash creates on a manager, are created with the server's defaults).
- `Layout.TYPELESS` (Elasticsearch ≥ 7, OpenSearch): one physical index per (index, type),
  named `f"{index}-{type}"`. Types never contain "-", so the split at the last "-" is exact.

The request forms follow the server's major version (`Dialect`, read from `GET /` or
`GET /_nodes/_local`):

| | 1.x | 2.x | 5.x–6.x | ≥ 7, OpenSearch |
|---|---|---|---|---|
| full read | `search_type=scan` + scroll (the first page has no hits) | scroll sorted by `_doc` | same | same |
| parallel read | one part per shard (`preference=_shards:N`) | per shard | sliced scroll | sliced scroll |
| scroll id | raw request body | JSON body | JSON | JSON |
| delete by query | `DELETE /<index>/<type>/_query` | scroll + bulk deletes | `_delete_by_query` | same |
| bulk lines | with `_type` | with `_type` | with `_type` | without |

The client is built on `elastic_transport.Transport` and sends plain JSON: the `elasticsearch`
client refuses non-Elasticsearch servers and servers older than its own major, and sends
`compatible-with` headers that other majors reject. Every failure to reach the server, and every
unexpected answer, is a `SearchServerError(url, reason)` whose url never carries credentials and
whose reason never carries a document's field value.

Writes keep each hit's `_id`, so a retried bundle overwrites instead of duplicating. `bulk` checks
every item of the response, resends only the items that failed with 429 or 5xx (with exponential
backoff) and reports the rest as permanent failures. Every scroll page is checked for failed
shards (a failed shard would silently drop its documents); the scroll is always cleared.

The client is picklable: the live transport is dropped and re-created on first use.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
import operator
import random
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

if TYPE_CHECKING:
    from elastic_transport import NodeConfig, Transport, TransportApiResponse

from core.errors import BulkLoadError, SearchServerError
from core.model import STORAGE_INDEX, Doc, Hit
from core.text import plural

__all__ = [
    "RawHit",
    "RawPage",
    "Layout",
    "SearchTarget",
    "TLS",
    "Auth",
    "Dialect",
    "Partition",
    "ServerInfo",
    "BulkItemError",
    "BulkResult",
    "SearchClient",
    "SearchSession",
    "SAFE_MAPPING",
]


class Layout(StrEnum):
    TYPED = "typed"
    TYPELESS = "typeless"


@dataclass(frozen=True)
class ServerInfo:
    distribution: str  # "elasticsearch" | "opensearch"
    version: tuple[int, int, int]

    @functools.cached_property
    def dialect(self) -> Dialect:
        return Dialect.of(self)


@dataclass(frozen=True)
class Dialect:
    """The request forms one server generation takes (see the module docstring's table)."""

    typed: bool
    """Mapping types exist (Elasticsearch ≤ 6)."""
    scan_search_type: bool
    """1.x: full reads use `search_type=scan`, whose first response carries no hits."""
    sliced_scroll: bool
    """Parallel reads by sliced scroll (Elasticsearch ≥ 5, OpenSearch); else by shard."""
    raw_scroll_id: bool
    """1.x: scroll continuations and clears take the bare scroll id as the request body."""
    delete_by_query: str
    """"query-api" (1.x `DELETE …/_query`), "native" (`_delete_by_query`) or "scroll"."""
    string_errors: bool
    """1.x: errors are strings such as `MapperParsingException[…]; nested: …`."""

    @staticmethod
    def of(info: ServerInfo) -> Dialect:
        major = info.version[0]
        if info.distribution != "elasticsearch" or major >= 5:
            return Dialect(
                typed=info.distribution == "elasticsearch" and major <= 6,
                scan_search_type=False,
                sliced_scroll=True,
                raw_scroll_id=False,
                delete_by_query="native",
                string_errors=False,
            )
        return Dialect(
            typed=True,
            scan_search_type=major <= 1,
            sliced_scroll=False,
            raw_scroll_id=major <= 1,
            delete_by_query="query-api" if major <= 1 else "scroll",
            string_errors=major <= 1,
        )


@dataclass(frozen=True)
class Partition:
    """One part of a parallel read: `kind` "slice" (sliced scroll) or "shard" (shard `id` of every
    index the read addresses). The parts `client.partitions(...)` returns cover every document
    exactly once."""

    kind: str
    id: int
    of: int
    indices: str | None = None
    """For a "shard" part of a pattern matching many indices: the few (comma-separated) indices
    this part reads, instead of all the read addresses (see `partitions`)."""
    shards: int | None = field(default=None, compare=False)
    """For a "shard" part planned by `partitions`: how many shards it reads (each of its indices
    that has shard `id`), what its 1.x scan pages are divided by. A planning note, not part of
    what is read (equality ignores it); None: `scan_pages` asks the server."""

    def __post_init__(self) -> None:
        if self.kind not in ("slice", "shard"):
            raise ValueError(f"Partition: kind must be 'slice' or 'shard', not {self.kind!r}")
        if not 0 <= self.id < self.of:
            raise ValueError(f"Partition: id {self.id} not in [0, {self.of})")
        if (self.indices is not None or self.shards is not None) and self.kind != "shard":
            raise ValueError("Partition: only a shard part names its indices and shards")
        if self.shards is not None and self.shards < 1:
            raise ValueError(f"Partition: shards must be at least 1, not {self.shards}")

    def __str__(self) -> str:
        where = f" of {self.indices}" if self.indices else ""
        return f"{self.kind} {self.id + 1}/{self.of}{where}"


@dataclass(frozen=True)
class BulkItemError:
    """One document a bulk request could not write, in logical names."""

    index: str
    doc_type: str
    doc_id: str
    status: int
    reason: str

    def as_tuple(self) -> tuple[str, str, str, int, str]:
        """The shape `BulkLoadError.items` carries."""
        return (self.index, self.doc_type, self.doc_id, self.status, self.reason)


@dataclass
class BulkResult:
    """`failed` holds only permanent failures: items still failing after the retries."""

    succeeded: int = 0
    failed: list[BulkItemError] = field(default_factory=list)

    def merge(self, other: BulkResult) -> None:
        self.succeeded += other.succeeded
        self.failed.extend(other.failed)

    def raise_on_failure(self) -> None:
        """Raise `BulkLoadError` if any item failed."""
        if self.failed:
            raise BulkLoadError([item.as_tuple() for item in self.failed])


_KEYWORD = {"type": "keyword", "ignore_above": 1024}
SAFE_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        **{
            name: _KEYWORD
            for name in (
                "id",
                "blueprint_id",
                "deployment_id",
                "node_id",
                "status",
                "workflow_id",
                "type",
                "event_type",
                "level",
            )
        },
        "@timestamp": {"type": "date", "ignore_malformed": True},
    },
}
"""Typeless physical indices: a few fields to filter on, nothing dynamic. Any `_source` (e.g.
`runtime_properties` whose value types vary between documents) is stored untouched and can never
cause a mapping conflict."""

_INDEX_SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}
_JSON = {"content-type": "application/json", "accept": "application/json"}
_NDJSON = {"content-type": "application/x-ndjson", "accept": "application/json"}
_ACCEPT = {"accept": "application/json"}
_LENIENT = {"ignore_unavailable": "true", "allow_no_indices": "true"}
INDICES_PER_PART = 5
"""At most this many indices in one part of a 1.x/2.x read (see `SearchClient.partitions`)."""
MIN_PAGE_HITS = 1000
"""The fewest hits a page sized by bytes (`scan_pages(page_bytes=…)`) is cut to (or `page_size`,
if smaller): the page every read used before pages were sized by bytes."""
_MATCH_ALL: dict[str, Any] = {"match_all": {}}


@dataclass(frozen=True)
class TLS:
    """How to check the server's certificate and present ours (https URLs)."""

    ca_cert: str | None = None
    """A CA bundle (PEM) to trust instead of the system's."""
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    """False: accept any certificate (`--insecure`)."""


@dataclass(frozen=True)
class Auth:
    """Basic auth or an API key. Its values never appear in a repr, a message or a log."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if bool(self.api_key) == bool(self.username):
            raise ValueError("Auth: give a username (and password) or an API key, not both")

    @property
    def header(self) -> str:
        if self.api_key:
            return f"ApiKey {self.api_key}"
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return f"Basic {token}"

    def __repr__(self) -> str:
        return "Auth(api key)" if self.api_key else "Auth(basic)"


@dataclass(frozen=True)
class SearchTarget:
    """Where a search server is and how to reach it: frozen and picklable, so jobs and
    transforms carry it to workers, where `connect()` makes a client (in `DoFn.setup`).
    `layout` None: chosen from the server's version. `str()` is the URL without credentials."""

    url: str
    layout: Layout | None = None
    tls: TLS | None = None
    auth: Auth | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.layout is not None and not isinstance(self.layout, Layout):
            object.__setattr__(self, "layout", Layout(self.layout))

    @classmethod
    def of(cls, value: SearchTarget | str) -> SearchTarget:
        """`value` itself, or a target for a bare URL."""
        return value if isinstance(value, SearchTarget) else cls(value)

    def connect(self, **options: Any) -> SearchClient:
        """A new client (options: `timeout`, `max_retries`, `retry_backoff`)."""
        return SearchClient(self.url, layout=self.layout, tls=self.tls, auth=self.auth, **options)

    def __str__(self) -> str:
        return _strip_credentials(self.url)

    def __repr__(self) -> str:
        return f"SearchTarget({str(self)!r})"


class RawHit(msgspec.Struct, gc=False):
    """One document of a scroll page: its index, type and id, and its `_source` as the server
    sent it (bytes of one JSON object, unparsed)."""

    index: str = msgspec.field(name="_index")
    type: str | None = msgspec.field(name="_type", default=None)
    id: str = msgspec.field(name="_id", default="")
    source: msgspec.Raw = msgspec.field(name="_source", default=msgspec.Raw(b"{}"))


_INDEX, _TYPE, _SOURCE = (operator.attrgetter(f) for f in ("index", "type", "source"))


class RawPage(list[RawHit]):
    """One scroll page: its `RawHit`s in the server's order, and what two steps of a read ask of
    every page, each worked out once, in C-level loops: the documents per (index, type)
    (`counts`, the read's counters and the lines' counts alike) and about how many bytes it
    holds (`nbytes`, what Beam samples of the elements it passes on). A page is never changed
    once made (a step that leaves hits out makes a new one), so `counts` is kept after its
    first call, and handed out read-only."""

    __slots__ = ("_counts",)

    def counts(self) -> Mapping[tuple[str, str | None], int]:
        """How many documents of each (index, type) the page holds."""
        try:
            return self._counts
        except AttributeError:
            self._counts: Counter[tuple[str, str | None]] = Counter(
                zip(map(_INDEX, self), map(_TYPE, self), strict=True)
            )
            return self._counts

    @property
    def nbytes(self) -> int:
        """The sources' bytes, and about 64 a hit for its index, type and id."""
        return sum(map(len, map(_SOURCE, self))) + 64 * len(self)


class _Hits(msgspec.Struct, gc=False):
    hits: list[RawHit] = msgspec.field(default_factory=list)


class _Page(msgspec.Struct, gc=False):
    hits: _Hits = msgspec.field(default_factory=_Hits)
    scroll_id: str | None = msgspec.field(name="_scroll_id", default=None)
    shards: dict[str, Any] | None = msgspec.field(name="_shards", default=None)


_PAGE_DECODER = msgspec.json.Decoder(_Page)


class _ItemStatus(msgspec.Struct, gc=False):
    status: int = 500


class _BulkStatuses(msgspec.Struct, gc=False):
    items: list[dict[str, _ItemStatus]] = msgspec.field(default_factory=list)
    errors: bool = True


_BULK_STATUSES = msgspec.json.Decoder(_BulkStatuses)


def _all_written(response: Any, expected: int) -> bool:
    """Whether a bulk response (the server's bytes) says every one of its `expected` items was
    written. Read for the items' statuses only (a tenth of a whole parse: a response holds an
    object per document); any other answer is parsed whole by the caller, which names what
    failed."""
    if not isinstance(response, bytes | bytearray | memoryview):
        return False
    try:
        statuses = _BULK_STATUSES.decode(response)
    except msgspec.DecodeError:
        return False
    return (
        not statuses.errors
        and len(statuses.items) == expected
        and all(len(item) == 1 and _item_status(item) < 300 for item in statuses.items)
    )


def _item_status(item: dict[str, _ItemStatus]) -> int:
    return next(iter(item.values())).status


def _parsed(response: Any) -> Any:
    """A response body the raw transport gave as bytes, parsed (text as it is)."""
    if isinstance(response, bytes | bytearray | memoryview):
        return _loads_or_text(response)
    return response


_JSON_DECODE = msgspec.json.decode


def _raw_json() -> Any:
    """A serializer of requests as JSON and responses as the server's bytes."""
    from elastic_transport import JsonSerializer

    class RawJson(JsonSerializer):
        def loads(self, data: bytes) -> Any:
            return data

    return RawJson()


def _loads_or_text(data: Any) -> Any:
    try:
        return json.loads(data)
    except (TypeError, ValueError):
        return bytes(data)[:300].decode("utf-8", "replace") if data else ""


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _strip_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url.rstrip("/")
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/")


def _parse_version(text: str) -> tuple[int, int, int]:
    numbers = []
    for part in text.split("-")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits) if digits else 0)
    while len(numbers) < 3:
        numbers.append(0)
    return (numbers[0], numbers[1], numbers[2])


_VALUE_PREVIEW = re.compile(r"(Preview of field's value:).*", re.DOTALL)
"""Elasticsearch 7+ quotes the rejected field value in parse errors; it may be a broker password
or a key, so it is cut from every reason (the field name and document id stay)."""


def _error_reason(body: Any) -> str:
    """A short reason from an error body: `type: reason` when the server says so. Never holds
    a document's field value (see `_VALUE_PREVIEW` and `_string_error_reason`)."""
    return _VALUE_PREVIEW.sub(r"\1 (withheld)", _raw_error_reason(body))


def _raw_error_reason(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            kind, reason = error.get("type"), error.get("reason")
            if kind or reason:
                return f"{kind}: {reason}" if kind and reason else str(kind or reason)
        elif isinstance(error, str):
            return _string_error_reason(error)
        elif error is not None:
            return str(error)[:300]
    if isinstance(body, str):
        title = _HTML_TITLE.search(body)  # a proxy's error page
        return title.group(1).strip()[:200] if title else _string_error_reason(body)
    return str(body)[:300]


_HTML_TITLE = re.compile(r"<title>([^<]*)</title>", re.IGNORECASE)


_STRING_ERROR = re.compile(r"(\w+(?:Exception|Error))\[")
_SAFE_DETAIL = re.compile(
    r"^(failed to parse \[[^\]]*\]|\[[^\]]*\] missing|document already exists|"
    r"\[[^\]]*\]\[\d+\] \[[^\]]*\]\[[^\]]*\]: (?:document already exists|version conflict.*)|"
    r"No search context found for id.*|Failed to parse source.*|no such index.*|"
    r"no handler found for uri \[[^\] ?]*(?:\?[^\] ]*)?\] and method \[[A-Z]+\]|"
    r"mapper \[[^\]]*\] of different type.*|all shards failed|.*rejected execution.*)$"
)


def _string_error_reason(text: str) -> str:
    """Elasticsearch 1.x errors are strings: `MapperParsingException[failed to parse [n]];
    nested: NumberFormatException[For input string: "<the value>"]; `. The exception names are
    kept, and the detail of the first one only where it is known to name a field, an index or an
    id and never a value; everything else is withheld (it may quote a broker password)."""
    names = _STRING_ERROR.findall(text)
    if not names:
        return text[:300] if _SAFE_DETAIL.match(text) else "(reason withheld)"
    first = text.index(names[0] + "[") + len(names[0]) + 1
    depth, end = 1, first
    while end < len(text) and depth:
        depth += {"[": 1, "]": -1}.get(text[end], 0)
        end += 1
    detail = text[first : end - 1]
    shown = f"{names[0]}: {detail}" if _SAFE_DETAIL.match(detail) else names[0]
    nested = [n for n in names[1:] if n != names[0]]
    return (shown + (f" (nested: {', '.join(nested)})" if nested else ""))[:300]


def _shard_failure_reason(shards: dict[str, Any]) -> str:
    """The first failure a response's `_shards` lists, as `_error_reason` words it (a 1.x string
    or an 8.x object: never a value)."""
    failures = shards.get("failures") or [{}]
    return _error_reason(failures[0].get("reason", failures[0]))


def _hint(status: int) -> str:
    return "credentials" if status in (401, 403) else ""


def _status_reason(status: int, body: Any) -> str:
    """`HTTP <status> <reason>`; 401/403 say that the credentials were refused (a proxy's page
    would say nothing useful, and the credentials themselves are never shown)."""
    if status in (401, 403):
        return f"HTTP {status}: authentication refused (check the credentials given for it)"
    return f"HTTP {status} {_error_reason(body)}"


_TLS_DETAIL = re.compile(r"\[SSL: ([A-Z_]+)\][^(\]]*|certificate verify failed[^(\]]*|"
                         r"hostname [^ ]+ doesn't match [^(\]]*")


def _tls_reason(error: Exception) -> str:
    """The TLS failure in a few words ("certificate verify failed: unable to get local issuer
    certificate"), from the first cause that names one."""
    text = " ".join(str(e) for e in (getattr(error, "errors", ()) or (error,)))
    found = _TLS_DETAIL.search(text)
    return found.group(0).strip(" :,") if found else type(error).__name__


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


class SearchSession(Protocol):
    """What code that only reads and writes a manager's documents needs of a client
    (`SearchClient` is one; a test may pass another)."""

    @property
    def layout(self) -> Layout: ...

    def request(
        self, method: str, path: str, body: Any = None, *, ok: Sequence[int] = (), **how: Any
    ) -> tuple[int, Any]: ...

    def logical_indices(self, pattern: str) -> dict[tuple[str, str], int]: ...

    def index_exists(self, index: str) -> bool: ...

    def scan(
        self, index: str, doc_types: Sequence[str] | None = None, **how: Any
    ) -> Generator[Hit, None, None]: ...

    def get(self, index: str, doc_type: str, doc_id: str) -> Doc | None: ...

    def bulk_all(  # the keywords of SearchClient.bulk_all
        self, hits: Iterable[Hit], *, max_docs: int = ..., max_bytes: int = ...,
        op_type: str = ..., refresh: bool | str = ...,
    ) -> BulkResult: ...


class SearchClient:
    """A search-server client in Cloudify's logical names.

    `url` may carry `user:password@`; `self.url` (used in every message) never does.
    `layout` forces a layout; by default it is TYPED for Elasticsearch ≤ 6, else TYPELESS.
    `max_retries` bounds both transport-level retries (connection errors, 429/502/503/504 of
    whole requests) and the resending of failed bulk items; `retry_backoff` is the first delay
    of the exponential backoff in seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        layout: Layout | None = None,
        tls: TLS | None = None,
        auth: Auth | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_backoff: float = 0.5,
    ) -> None:
        self._raw_url = url
        self.url = _strip_credentials(url)
        self._forced_layout = Layout(layout) if layout is not None else None
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        # elastic_transport is imported by the first client, not with this module: a job that
        # checks an archive before it talks to a server (restore) imports it beside Beam's
        # import, which shares its dependencies (urllib3, requests), not before its check
        from elastic_transport.client_utils import url_to_node_config

        try:
            self._node_config: NodeConfig = url_to_node_config(
                url, use_default_ports_for_scheme=True
            )
        except ValueError:
            raise SearchServerError(self.url, "not a valid server URL") from None
        if tls is not None:
            self._node_config = self._node_config.replace(
                ca_certs=tls.ca_cert,
                client_cert=tls.client_cert,
                client_key=tls.client_key,
                verify_certs=tls.verify,
                ssl_show_warn=tls.verify,
            )
        if auth is not None:
            headers = dict(self._node_config.headers)
            headers["authorization"] = auth.header
            self._node_config = self._node_config.replace(headers=headers)
        self._transport: Transport | None = None
        self._raw_transport: Transport | None = None
        self._info: ServerInfo | None = None
        self._action_prefixes: dict[tuple[str, str, str], bytes] = {}
        self._ensured: set[tuple[str, str]] = set()
        self._native_delete_by_query = True

    # ---- lifecycle -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_transport"] = state["_raw_transport"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"SearchClient({self.url!r})"

    def close(self) -> None:
        for name in ("_transport", "_raw_transport"):
            transport = getattr(self, name)
            if transport is not None:
                transport.close()
                setattr(self, name, None)

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = self._new_transport()
        return self._transport

    @property
    def raw_transport(self) -> Transport:
        """A transport whose JSON responses are the server's bytes (scroll pages)."""
        if self._raw_transport is None:
            self._raw_transport = self._new_transport({"application/json": _raw_json()})
        return self._raw_transport

    def _new_transport(self, serializers: dict[str, Any] | None = None) -> Transport:
        from elastic_transport import Transport

        return Transport(
            [self._node_config.replace(request_timeout=self.timeout)],
            max_retries=self.max_retries,
            retry_on_status=(429, 502, 503, 504),
            retry_on_timeout=False,
            retry_backoff_base=self.retry_backoff,
            retry_backoff_cap=30.0,
            meta_header=False,
            serializers=serializers,
        )

    # ---- raw requests ----------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, *, ok: Sequence[int] = (), **how: Any
    ) -> tuple[int, Any]:
        """Send one request; return `(status, body)`.

        Statuses below 300 and those in `ok` are returned; anything else, and every connection
        failure, raises `SearchServerError`. `how`: `params`, `ndjson`, and `retries` (0 disables
        transport-level retries, for requests that must not be repeated, like scroll
        continuations).
        """
        status, response = self._send(method, path, body, **how)
        if status < 300 or status in ok:
            return status, response
        raise SearchServerError(
            self.url, f"{method} {path}: {_status_reason(status, response)}", _hint(status)
        )

    def _send(self, method: str, path: str, body: Any = None, **how: Any) -> tuple[int, Any]:
        """Send one request and return `(status, body)` whatever the status; raise
        `SearchServerError` only when no answer came back."""
        response = self._perform(method, path, body, **how)
        return response.meta.status, response.body

    def _perform(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        ndjson: bool = False,
        retries: int | None = None,
        raw: bool = False,
    ) -> TransportApiResponse:
        target = path
        if params:
            query = {k: _param(v) for k, v in params.items() if v is not None}
            target += "?" + urllib.parse.urlencode(query)
        headers = (_NDJSON if ndjson else _JSON) if body is not None else _ACCEPT
        kwargs: dict[str, Any] = {}
        if retries is not None:
            kwargs["max_retries"] = retries
        transport = self.raw_transport if raw else self.transport
        from elastic_transport import ConnectionError as TransportConnectionError
        from elastic_transport import ConnectionTimeout, TlsError, TransportError

        try:
            return transport.perform_request(method, target, headers=headers, body=body, **kwargs)
        except ConnectionTimeout:
            raise SearchServerError(
                self.url, f"{method} {path}: timed out after {self.timeout:g}s"
            ) from None
        except TlsError as e:
            reason = _tls_reason(e)
            hint = "certificate" if "verify failed" in reason.lower() else ""
            raise SearchServerError(self.url, f"TLS failed: {reason}", hint) from None
        except TransportConnectionError as e:
            cause = e.errors[0] if e.errors else e
            raise SearchServerError(self.url, f"cannot connect ({type(cause).__name__})") from None
        except TransportError as e:
            raise SearchServerError(self.url, f"{method} {path}: {e.message}") from None

    # ---- server ----------------------------------------------------------------------------

    def info(self) -> ServerInfo:
        """Distribution and version of the server (cached)."""
        if self._info is None:
            self._info = self._fetch_info()
        return self._info

    def _fetch_info(self) -> ServerInfo:
        """`GET /` names the distribution and version on every server but the integ-test
        distributions of Elasticsearch ≥ 7 (405); those answer `GET /_nodes/_local` and send the
        `x-elastic-product` header (7.14+)."""
        status, root = self._send("GET", "/")
        if status >= 400 and status not in (404, 405):  # 405: the integ-test distribution
            raise SearchServerError(self.url, f"GET /: {_status_reason(status, root)}", _hint(status))
        if status == 200 and isinstance(root, dict) and isinstance(root.get("version"), dict):
            v = root["version"]
            if isinstance(v.get("number"), str):
                return ServerInfo(
                    v.get("distribution", "elasticsearch"), _parse_version(v["number"])
                )
        response = self._perform("GET", "/_nodes/_local", params={"filter_path": "nodes.*.version"})
        version: str | None = None
        if (
            response.meta.status == 200
            and isinstance(response.body, dict)
            and response.body.get("nodes")
        ):
            version = next(iter(response.body["nodes"].values())).get("version")
        if not version:
            raise SearchServerError(
                self.url, f"cannot read the server version (HTTP {response.meta.status})"
            )
        parsed = _parse_version(version)
        if response.meta.headers.get("x-elastic-product") == "Elasticsearch":
            return ServerInfo("elasticsearch", parsed)
        # No header and no root endpoint: no Elasticsearch 8+ (it always sends the header).
        return ServerInfo("elasticsearch" if parsed[0] <= 7 else "opensearch", parsed)

    @property
    def dialect(self) -> Dialect:
        return self.info().dialect

    @property
    def layout(self) -> Layout:
        if self._forced_layout is not None:
            return self._forced_layout
        return Layout.TYPED if self.dialect.typed else Layout.TYPELESS

    # ---- names -----------------------------------------------------------------------------

    def physical_index(self, index: str, doc_type: str) -> str:
        if self.layout is Layout.TYPED:
            return index
        return f"{index}-{doc_type}"

    def logical(self, physical_index: str, hit_type: str | None) -> tuple[str, str]:
        """(logical index, type) of a hit read from `physical_index`."""
        if self.layout is Layout.TYPED:
            return physical_index, hit_type or ""
        index, sep, doc_type = physical_index.rpartition("-")
        if not sep:
            return physical_index, hit_type or ""
        return index, doc_type

    def _target(self, index: str, doc_types: Sequence[str] | None) -> str:
        """The path prefix that addresses a logical index (or pattern) and some of its types."""
        if self.layout is Layout.TYPED:
            prefix = "/" + _quote_pattern(index)
            return prefix + ("/" + ",".join(map(_quote, doc_types)) if doc_types else "")
        if doc_types:
            return "/" + ",".join(_quote_pattern(self.physical_index(index, t)) for t in doc_types)
        return "/" + _quote_pattern(f"{index}-*")

    def _doc_path(self, index: str, doc_type: str, doc_id: str) -> str:
        if self.layout is Layout.TYPED:
            return f"/{_quote(index)}/{_quote(doc_type)}/{_quote(doc_id)}"
        return f"/{_quote(self.physical_index(index, doc_type))}/_doc/{_quote(doc_id)}"

    def _physical_mappings(self, pattern: str) -> dict[str, Any]:
        """Physical indices (not starting with ".") of a logical pattern, with their mappings."""
        target = _quote_pattern(pattern if self.layout is Layout.TYPED else f"{pattern}-*")
        status, body = self.request("GET", f"/{target}/_mapping", params=_LENIENT, ok=(404,))
        if status == 404 or not isinstance(body, dict):
            return {}
        found = {}
        for physical, mapping in body.items():
            if physical.startswith("."):
                continue
            if self.layout is Layout.TYPELESS and "-" not in physical:
                continue
            if fnmatch.fnmatchcase(self.logical(physical, None)[0], pattern):
                found[physical] = mapping
        return found

    # ---- reads -----------------------------------------------------------------------------

    def logical_indices(self, pattern: str) -> dict[tuple[str, str], int]:
        """Existing (index, type) pairs of a logical index pattern, with document counts.

        Pairs whose physical index (typeless) or mapping type (typed) exists but holds no
        documents are included with 0. Counts are those of the last refresh.
        """
        mappings = self._physical_mappings(pattern)
        if not mappings:
            return {}
        pairs: dict[tuple[str, str], int] = {}
        typed = self.layout is Layout.TYPED
        for physical, mapping in mappings.items():
            if typed:
                for doc_type in mapping.get("mappings") or {}:
                    if doc_type != "_default_":
                        pairs[(physical, doc_type)] = 0
            else:
                pairs[self.logical(physical, None)] = 0
        aggs: dict[str, Any] = {"by_index": {"terms": {"field": "_index", "size": 10000}}}
        if typed:
            aggs["by_index"]["aggs"] = {"by_type": {"terms": {"field": "_type", "size": 1000}}}
        names = ",".join(_quote(p) for p in sorted(mappings))
        _, body = self.request(
            "POST", f"/{names}/_search", {"size": 0, "aggs": aggs}, params=_LENIENT
        )
        for bucket in body["aggregations"]["by_index"]["buckets"]:
            if typed:
                for sub in bucket["by_type"]["buckets"]:
                    pairs[(bucket["key"], sub["key"])] = sub["doc_count"]
            else:
                pairs[self.logical(bucket["key"], None)] = bucket["doc_count"]
        return pairs

    def index_exists(self, index: str) -> bool:
        """Whether any physical index of the logical index (or pattern) exists."""
        return bool(self._physical_mappings(index))

    def partitions(self, index: str, doc_types: Sequence[str] | None, wanted: int) -> list[Partition]:
        """The parts of a parallel read of a logical index (or pattern): `wanted` slices of a
        sliced scroll where the server has them; otherwise (1.x, 2.x) one part per shard, as
        many as the largest matching index has (`preference=_shards:N` reads shard N of every
        index). An empty list: read it whole (`partition=None`).

        On 1.x/2.x a pattern matching more than `INDICES_PER_PART` indices (a year of daily
        `logstash-*` indices) is read in groups of that many, each group one shard id at a time
        (`Partition.indices`): a scan's page holds `size` hits per shard read, so a part
        reading 365 shards would either make pages 365 times the page size or ask each shard
        for 2 hits a round trip, which leaves one large day to come back 2 hits at a time."""
        if wanted < 1:
            raise ValueError("partitions: wanted must be at least 1")
        if self.dialect.sliced_scroll:
            return [Partition("slice", i, wanted) for i in range(wanted)] if wanted > 1 else []
        shards: dict[str, int] = {}
        for copies in self._shard_groups(index, _LENIENT):
            for copy in copies:
                name = str(copy.get("index", ""))
                shards[name] = max(shards.get(name, 0), int(copy.get("shard", 0)) + 1)
        # each part also says how many shards it reads: its scroll then divides its page size
        # without asking `_search_shards` again
        if len(shards) <= INDICES_PER_PART:
            most = max(shards.values(), default=0)
            if most <= 1:
                return []
            return [
                Partition("shard", i, most, shards=sum(1 for n in shards.values() if n > i))
                for i in range(most)
            ]
        names = sorted(shards)
        parts = []
        for start in range(0, len(names), INDICES_PER_PART):
            group = names[start : start + INDICES_PER_PART]
            most = max(shards[name] for name in group)
            parts += [
                Partition(
                    "shard", i, most, ",".join(group), sum(1 for name in group if shards[name] > i)
                )
                for i in range(most)
            ]
        return parts

    def scan(
        self, index: str, doc_types: Sequence[str] | None = None, **how: Any
    ) -> Generator[Hit, None, None]:
        """Yield every matching document of a logical index (or pattern) as a logical hit
        `{"_index", "_type", "_id", "_source"}`, one page in memory at a time. `how`: the
        keywords of `scan_pages` (`query`, `partition`, `page_size`, `keep_alive`, `source`:
        False reads no `_source`, given as `{}`)."""
        parse = how.get("source", True)
        for page in self.scan_pages(index, doc_types, **how):
            for hit in page:
                yield {
                    "_index": hit.index,
                    "_type": hit.type,
                    "_id": hit.id,
                    "_source": _JSON_DECODE(hit.source) if parse else {},
                }

    def scan_pages(
        self,
        index: str,
        doc_types: Sequence[str] | None = None,
        *,
        query: dict | None = None,
        partition: Partition | None = None,
        page_size: int = 1000,
        keep_alive: str = "5m",
        source: bool = True,
        page_bytes: int | None = None,
    ) -> Generator[RawPage, None, None]:
        """Every matching document of a logical index (or pattern), a scroll page at a time, as
        a `RawPage` of `RawHit`s in logical names whose `source` is the server's own `_source`
        bytes (never parsed here: a caller parses what it needs).

        With `partition` (from `partitions()`) only that part is read. With `page_bytes`, larger
        documents get fewer hits a page: about `page_bytes` of the read's stored bytes per
        document (`stored_bytes_per_document`: compressed, so a page of very compressible
        documents holds a few times that much JSON), never more than `page_size` hits nor fewer
        than `MIN_PAGE_HITS`. Missing indices yield nothing. The scroll is cleared when the
        iterator finishes, fails or is closed. Scroll continuations are never retried (a
        repeated request would skip a page), and a page on which any shard failed is an error,
        never a short read: both raise `SearchServerError`.
        """
        dialect = self.dialect
        params: dict[str, Any] = {"scroll": keep_alive, **_LENIENT}
        body: dict[str, Any] = {"query": query or _MATCH_ALL}
        if dialect.scan_search_type:
            params["search_type"] = "scan"
        else:
            body["sort"] = ["_doc"]
        body["size"] = page_size
        if not source:
            body["_source"] = False
        if partition is not None:
            if partition.kind == "slice":
                if not dialect.sliced_scroll:
                    raise ValueError(f"scan: {self.url} has no sliced scroll; use partitions()")
                body["slice"] = {"id": partition.id, "max": partition.of}
            else:
                params["preference"] = f"_shards:{partition.id}"
        # a part may read one group of the pattern's indices (`partitions`), named as they are
        read = partition.indices if partition is not None and partition.indices else index
        if page_bytes is not None:
            body["size"] = self._page_for_bytes(read, doc_types, page_size, page_bytes)
        if dialect.scan_search_type:
            # 1.x scan pages hold `size` hits *per shard read*: one per index the read matches
            # (a part reads shard N of every daily logstash index), so a fixed size would let a
            # page grow with the manager's age: 5 daily indices made a 5,000-hit page of a
            # 1,000 one, and a year of them 365,000. `partitions` keeps a part to at most
            # INDICES_PER_PART indices, so a shard is asked for at least page_size / 5.
            planned = partition.shards if partition is not None else None
            body["size"] = max(1, body["size"] // (planned or self._shards_read(read, params)))
        typed = self.layout is Layout.TYPED
        for page in self._scroll(self._target(read, doc_types), body, params, keep_alive):
            if typed:
                yield RawPage(page)
                continue
            hits = []
            for hit in page:  # physical "<index>-<type>" names → logical ones
                logical_index, _, doc_type = hit.index.rpartition("-")
                if logical_index and fnmatch.fnmatchcase(logical_index, index):
                    hits.append(RawHit(logical_index, doc_type, hit.id, hit.source))
            if hits:
                yield RawPage(hits)

    def _page_for_bytes(
        self, index: str, doc_types: Sequence[str] | None, page_size: int, page_bytes: int
    ) -> int:
        """Hits a page of about `page_bytes` holds (see `scan_pages`)."""
        per_document = self.stored_bytes_per_document(index, doc_types)
        if per_document is None:
            return page_size
        return min(page_size, max(MIN_PAGE_HITS, int(page_bytes // per_document)))

    def stored_bytes_per_document(
        self, index: str, doc_types: Sequence[str] | None = None
    ) -> float | None:
        """The primary shards' bytes on disk per document of a logical index (or pattern), from
        `_stats`: sources (compressed) and index structures together, a whole-index estimate of
        how large a document is (a small index's fixed overhead makes it larger); None when no
        index or document matches. On 1.x/2.x the figure is the whole index's, all its types."""
        types = None if self.layout is Layout.TYPED else doc_types
        status, body = self.request(
            "GET", self._target(index, types) + "/_stats/docs,store", params=_LENIENT, ok=(404,)
        )
        if status != 200 or not isinstance(body, dict):
            return None
        primaries = (body.get("_all") or {}).get("primaries") or {}
        documents = (primaries.get("docs") or {}).get("count") or 0
        stored = (primaries.get("store") or {}).get("size_in_bytes") or 0
        return stored / documents if documents > 0 and stored > 0 else None

    def _shards_read(self, index: str, params: dict[str, Any]) -> int:
        """How many shards a search of the logical index (or pattern) with `params` (its
        `preference`) reads: one per matching index and shard id (at least 1)."""
        wanted = {k: v for k, v in params.items() if k in ("preference", *_LENIENT)}
        return max(1, len(self._shard_groups(index, wanted)))

    def _shard_groups(self, index: str, params: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """`_search_shards` of a logical index (or pattern): one group of copies per index and
        shard id a search with `params` would read; none when no index matches."""
        path = self._target(index, None) + "/_search_shards"
        status, body = self.request("GET", path, params=params, ok=(404,))
        if status != 200 or not isinstance(body, dict):
            return []
        return list(body.get("shards") or [])

    def _scroll(
        self, target: str, body: dict[str, Any], params: dict[str, Any], keep_alive: str
    ) -> Iterator[list[RawHit]]:
        """Raw (physical) pages of a scroll over `target`; the scroll is always cleared."""
        scan_type = params.get("search_type") == "scan"
        page = self._page(self._raw_request("POST", target + "/_search", body, params), target)
        scroll_id = page.scroll_id
        try:
            first = True
            while True:
                hits = page.hits.hits
                if not hits and not (first and scan_type):
                    return  # 1.x scan: the first page never has hits
                first = False
                if hits:
                    yield hits
                if not scroll_id:
                    return
                page = self._page(self._continue_scroll(scroll_id, keep_alive), target)
                scroll_id = page.scroll_id or scroll_id
        finally:
            if scroll_id:
                self._clear_scroll(scroll_id)

    def _raw_request(
        self, method: str, path: str, body: Any, params: dict[str, Any], retries: int | None = None
    ) -> bytes:
        """`request`, the response body as the server's bytes (scroll pages are decoded by
        `_page`, their `_source`s left as they are)."""
        status, response = self._send(
            method, path, body, params=params, retries=retries, raw=True
        )
        if status < 300:
            return bytes(response)
        raise SearchServerError(
            self.url,
            f"{method} {path}: {_status_reason(status, _loads_or_text(response))}",
            _hint(status),
        )

    def _page(self, data: bytes, target: str) -> _Page:
        try:
            page = _PAGE_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise SearchServerError(
                self.url, f"scroll over {target.lstrip('/')}: not a search response ({exc})"
            ) from None
        self._check_shards(page.shards, target)
        return page

    def _continue_scroll(self, scroll_id: str, keep_alive: str) -> bytes:
        if self.dialect.raw_scroll_id:
            return self._raw_request(
                "POST", "/_search/scroll", scroll_id, {"scroll": keep_alive}, retries=0
            )
        return self._raw_request(
            "POST", "/_search/scroll", {"scroll": keep_alive, "scroll_id": scroll_id}, {},
            retries=0,
        )

    def _check_shards(self, shards: Any, target: str) -> None:
        """A page on which a shard failed, or did not answer (1.x counts an expired scroll
        context as neither successful nor failed), misses that shard's documents."""
        if not isinstance(shards, dict):
            return
        total, ok = int(shards.get("total") or 0), int(shards.get("successful") or 0)
        if ok < total or int(shards.get("failed") or 0):
            raise SearchServerError(
                self.url,
                f"scroll over {target.lstrip('/')}: {total - ok} of {plural(total, 'shard')} did not "
                f"answer ({_shard_failure_reason(shards)})",
            )

    def _clear_scroll(self, scroll_id: str) -> None:
        body: Any = scroll_id if self.dialect.raw_scroll_id else {"scroll_id": [scroll_id]}
        try:
            self._send("DELETE", "/_search/scroll", body, retries=0)
        except Exception:  # noqa: BLE001 - the scroll expires after keep_alive anyway; a
            pass  # cleanup never masks the real outcome (nor prints a traceback at exit)

    def count(self, index: str, doc_type: str | None = None, query: dict | None = None) -> int:
        path = self._target(index, [doc_type] if doc_type else None) + "/_count"
        body = {"query": query} if query else None
        _, response = self.request("POST", path, body, params=_LENIENT)
        return int(response["count"])

    def get(self, index: str, doc_type: str, doc_id: str) -> Doc | None:
        """The `_source` of one document, or None if it (or its index) does not exist."""
        status, body = self.request("GET", self._doc_path(index, doc_type, doc_id), ok=(404,))
        if status == 404 or not body.get("found", False):
            return None
        return body.get("_source", {})

    # ---- writes ----------------------------------------------------------------------------

    def ensure_index(self, index: str, doc_type: str) -> None:
        """Make sure (index, type) can be written; safe under races.

        Typeless: the physical index is created if missing (1 shard, 0 replicas, `SAFE_MAPPING`).
        Typed: an existing index is used as it is, mappings never sent nor changed (the target
        manager owns them); a missing index is created with the server's defaults, as its own
        auto-creation (and logstash, for daily event indices) would do, except `cloudify_storage`:
        a manager's bootstrap creates it with its own mappings, so a missing one raises
        `SearchServerError` rather than being created with the wrong ones.
        """
        physical = self.physical_index(index, doc_type)
        status, _ = self._send("HEAD", f"/{_quote(physical)}")
        if status == 200:
            self._ensured.add((index, doc_type))
            return
        body = None
        if self.layout is Layout.TYPELESS:
            body = {"settings": {"index": _INDEX_SETTINGS}, "mappings": SAFE_MAPPING}
        elif index == STORAGE_INDEX:
            raise SearchServerError(
                self.url,
                f"index {index} does not exist; a manager creates it with its own mappings when "
                "it is installed, and cfysnap does not make them up (is this a Cloudify manager?)",
            )
        status, response = self._send("PUT", f"/{_quote(physical)}", body)
        reason = _error_reason(response)
        already = "already_exists" in reason or "AlreadyExists" in reason
        if status >= 300 and not already:
            raise SearchServerError(self.url, f"create index {physical}: HTTP {status} {reason}")
        self._ensured.add((index, doc_type))

    def bulk(
        self, hits: Sequence[Hit], *, op_type: str = "index", refresh: bool | str = False
    ) -> BulkResult:
        """Write `hits` (logical hits with `_index`, `_type`, `_id`, `_source`) in one `_bulk`
        request; the caller bounds its size. Every document keeps its `_id`.

        Items failing with 429 or 5xx (and the whole request, on connection errors or 429/5xx)
        are resent, only those, with exponential backoff, up to `max_retries` times. Other item
        failures are permanent and returned in `BulkResult.failed`. Indices are created first
        (`ensure_index`) for pairs this client has not seen yet.
        """
        if op_type not in ("index", "create"):
            raise ValueError(f"bulk: op_type must be 'index' or 'create', not {op_type!r}")
        if not hits:
            return BulkResult()
        return self._bulk_entries([self._entry(op_type, hit) for hit in hits], refresh)

    def bulk_all(
        self,
        hits: Iterable[Hit],
        *,
        max_docs: int = 1000,
        max_bytes: int = 5_000_000,
        op_type: str = "index",
        refresh: bool | str = False,
    ) -> BulkResult:
        """`bulk` over chunks bounded by `max_docs` documents and `max_bytes` of request body
        (a single larger document is sent alone). Memory: one chunk."""
        if op_type not in ("index", "create"):
            raise ValueError(f"bulk_all: op_type must be 'index' or 'create', not {op_type!r}")
        result = BulkResult()
        chunk: list[_Entry] = []
        size = 0
        for hit in hits:
            entry = self._entry(op_type, hit)
            if chunk and (len(chunk) >= max_docs or size + entry.size > max_bytes):
                result.merge(self._bulk_entries(chunk, refresh))
                chunk, size = [], 0
            chunk.append(entry)
            size += entry.size
        if chunk:
            result.merge(self._bulk_entries(chunk, refresh))
        return result

    def bulk_entry(self, hit: Hit, *, op_type: str = "index") -> _Entry:
        """`hit` serialised once as a bulk item (its two NDJSON lines; `.size` is their length),
        for callers that bound batches by bytes and then send them with `bulk_entries`."""
        return self.entry_maker(op_type)(hit)

    def entry_maker(self, op_type: str = "index") -> Callable[[Hit], _Entry]:
        """`bulk_entry` with `op_type` fixed, for a writer that makes one per document."""
        if op_type not in ("index", "create"):
            raise ValueError(f"bulk_entry: op_type must be 'index' or 'create', not {op_type!r}")
        return functools.partial(self._entry, op_type)

    def bulk_entries(self, entries: Sequence[_Entry], *, refresh: bool | str = False) -> BulkResult:
        """`bulk` for items made by `bulk_entry` (same checks, retries and index creation)."""
        if not entries:
            return BulkResult()
        return self._bulk_entries(list(entries), refresh)

    def _action_prefix(self, op_type: str, index: str, doc_type: str) -> bytes:
        """`{"<op_type>": {"_index": …, "_type": …, "_id": ` of a bulk action line (cached)."""
        key = (op_type, index, doc_type)
        prefix = self._action_prefixes.get(key)
        if prefix is None:
            meta = {"_index": self.physical_index(index, doc_type)}
            if self.layout is Layout.TYPED:
                meta["_type"] = doc_type
            prefix = json.dumps({op_type: meta})[:-2].encode() + b', "_id": '
            self._action_prefixes[key] = prefix
        return prefix

    def _entry(self, op_type: str, hit: Hit) -> _Entry:
        try:
            index, doc_type, doc_id, source = (
                hit["_index"],
                hit["_type"],
                hit["_id"],
                hit["_source"],
            )
        except KeyError as e:
            # the hit's keys only: its `_source` may hold broker passwords
            raise ValueError(f"bulk: hit without {e.args[0]} (keys: {sorted(hit)})") from None
        if type(doc_id) is not str:
            doc_id = str(doc_id)
        # a source already JSON bytes (msgspec.Raw: the server's, the archive's, or a restored
        # source msgspec encoded) is joined as it is
        body = source if type(source) is msgspec.Raw else json.dumps(source).encode()
        prefix = self._action_prefixes.get((op_type, index, doc_type))
        if prefix is None:
            prefix = self._action_prefix(op_type, index, doc_type)
        lines = b"".join((prefix, encode_basestring_ascii(doc_id).encode(), b"}}\n", body, b"\n"))
        return _Entry(index, doc_type, doc_id, lines, len(lines))

    def _bulk_entries(
        self, entries: list[_Entry], refresh: bool | str, *, ensure: bool = True
    ) -> BulkResult:
        for entry in entries if ensure else ():
            if (entry.index, entry.doc_type) not in self._ensured:
                self.ensure_index(entry.index, entry.doc_type)
        result = BulkResult()
        pending = entries
        last_errors: dict[int, tuple[int, str]] = {}
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(attempt)
            retry: list[_Entry] = []
            try:
                status, response = self._send(
                    "POST",
                    "/_bulk",
                    b"".join(e.lines for e in pending),
                    params={"refresh": refresh},
                    ndjson=True,
                    retries=0,
                    raw=True,
                )
            except SearchServerError:
                if attempt == self.max_retries:
                    raise
                continue  # connection failure: resend everything pending
            if status < 300 and _all_written(response, len(pending)):
                result.succeeded += len(pending)
                return result
            body = _parsed(response)
            if _retryable(status):
                if attempt == self.max_retries:
                    raise SearchServerError(
                        self.url,
                        f"POST /_bulk: HTTP {status} {_error_reason(body)} after {attempt} retries",
                    )
                continue
            if (
                status >= 300
                or not isinstance(body, dict)
                or len(body.get("items", ())) != len(pending)
            ):
                raise SearchServerError(
                    self.url, f"POST /_bulk: HTTP {status} {_error_reason(body)}"
                )
            for entry, item in zip(pending, body["items"], strict=True):
                outcome = next(iter(item.values()))
                item_status = int(outcome.get("status", 500))
                if item_status < 300:
                    result.succeeded += 1
                elif _retryable(item_status):
                    retry.append(entry)
                    last_errors[id(entry)] = (item_status, _error_reason(outcome))
                else:
                    result.failed.append(entry.error(item_status, _error_reason(outcome)))
            pending = retry
            if not pending:
                return result
        for entry in pending:
            status, reason = last_errors.get(id(entry), (503, "not written"))
            result.failed.append(
                entry.error(status, f"{reason} (after {self.max_retries} retries)")
            )
        return result

    def _sleep(self, attempt: int) -> None:
        delay = min(30.0, self.retry_backoff * 2 ** (attempt - 1))
        time.sleep(delay / 2 + random.uniform(0, delay / 2))

    def delete_by_query(
        self, index: str, doc_type: str | None, query: dict | None = None, *, refresh: bool = True
    ) -> int:
        """Delete the matching documents of a logical index (or pattern); return how many.

        1.x: the matching documents are counted, then `DELETE /<index>/<type>/_query` (which
        reports no count), then counted again, which must give 0. 5+: `_delete_by_query` where
        the server has it. Otherwise (2.x, and the integ-test distributions that lack the
        reindex module) a scroll over the matching ids and bulk deletes.
        """
        target = self._target(index, [doc_type] if doc_type else None)
        mode = self.dialect.delete_by_query
        if mode == "query-api":
            return self._delete_by_query_api(index, doc_type, target, query or _MATCH_ALL)
        if mode == "native" and self._native_delete_by_query:
            params = {"refresh": refresh, "conflicts": "proceed", **_LENIENT}
            status, body = self._send(
                "POST", target + "/_delete_by_query", {"query": query or _MATCH_ALL}, params=params
            )
            if status < 300:
                if body.get("failures"):
                    reason = _error_reason(body["failures"][0].get("cause", body["failures"][0]))
                    raise SearchServerError(self.url, f"delete_by_query {index}: {reason}")
                return int(body.get("deleted", 0))
            if status not in (400, 404, 405) or "no handler" not in str(body):
                raise SearchServerError(
                    self.url, f"delete_by_query {index}: HTTP {status} {_error_reason(body)}"
                )
            self._native_delete_by_query = False
        deleted = 0
        chunk: list[_Entry] = []
        for hit in self.scan(index, [doc_type] if doc_type else None, query=query, source=False):
            meta = {"_index": self.physical_index(hit["_index"], hit["_type"]), "_id": hit["_id"]}
            if self.layout is Layout.TYPED:
                meta["_type"] = hit["_type"]
            line = (json.dumps({"delete": meta}) + "\n").encode("utf-8")
            chunk.append(_Entry(hit["_index"], hit["_type"], hit["_id"], line, len(line)))
            if len(chunk) >= 1000:
                deleted += self._bulk_delete(chunk)
                chunk = []
        if chunk:
            deleted += self._bulk_delete(chunk)
        if refresh:
            self.refresh(index)
        return deleted

    def _delete_by_query_api(
        self, index: str, doc_type: str | None, target: str, query: dict[str, Any]
    ) -> int:
        self.refresh(index)
        before = self.count(index, doc_type, query)
        if not before:
            return 0
        _, body = self.request("DELETE", target + "/_query", {"query": query}, params=_LENIENT)
        for name, outcome in (body.get("_indices") or {}).items():
            shards = outcome.get("_shards") or {}
            if int(shards.get("failed") or 0) or int(shards.get("successful") or 0) < int(
                shards.get("total") or 0
            ):
                raise SearchServerError(
                    self.url, f"delete by query in {name}: {plural(int(shards.get('failed') or 0), 'shard')} failed"
                )
        self.refresh(index)
        left = self.count(index, doc_type, query)
        if left:
            raise SearchServerError(
                self.url, f"delete by query in {index}: {left} of {plural(before, 'document')} remain"
            )
        return before

    def _bulk_delete(self, entries: list[_Entry]) -> int:
        result = self._bulk_entries(entries, False, ensure=False)
        failed = [e for e in result.failed if e.status != 404]
        if failed:
            raise BulkLoadError([e.as_tuple() for e in failed])
        return result.succeeded

    def delete(self, index: str, doc_type: str, doc_id: str, *, refresh: bool = False) -> bool:
        """Delete one document; False if it (or its index) did not exist."""
        status, _ = self.request(
            "DELETE",
            self._doc_path(index, doc_type, doc_id),
            params={"refresh": refresh},
            ok=(404,),
        )
        return status != 404

    def update_fields(
        self, index: str, doc_type: str, doc_id: str, partial: Doc, *, refresh: bool = False
    ) -> None:
        """Merge `partial` into the document's `_source` (`_update` with `doc`)."""
        if self.layout is Layout.TYPED:
            path = self._doc_path(index, doc_type, doc_id) + "/_update"
        else:
            path = f"/{_quote(self.physical_index(index, doc_type))}/_update/{_quote(doc_id)}"
        params = {"refresh": refresh, "retry_on_conflict": 3}
        self.request("POST", path, {"doc": partial}, params=params)

    def refresh(self, index: str | None = None) -> None:
        path = "/_refresh" if index is None else self._target(index, None) + "/_refresh"
        self.request("POST", path, params=_LENIENT)

    def flush(self, index: str | None = None) -> None:
        """Make what the server acknowledged durable (a Lucene commit): Elasticsearch 1.x syncs
        its translog only every few seconds, so a server killed right after acknowledging a
        bulk can lose it. `refresh` only makes documents searchable."""
        path = "/_flush" if index is None else self._target(index, None) + "/_flush"
        # waiting for a flush already under way (1.x's default is not to: that shard then fails,
        # and what it was asked to make durable may not be), and every shard's outcome checked
        _, body = self.request("POST", path, params={**_LENIENT, "wait_if_ongoing": "true"})
        shards = body.get("_shards") if isinstance(body, dict) else None
        shards = shards if isinstance(shards, dict) else {}
        failed = int(shards.get("failed") or 0)
        if failed:
            raise SearchServerError(
                self.url, f"flush: {plural(failed, 'shard')} failed ({_shard_failure_reason(shards)})"
            )


@dataclass(slots=True)
class _Entry:
    """One prepared bulk item: logical names and its two NDJSON lines. Never changed once made;
    not frozen, because it is made once per document, and a frozen dataclass's `__init__` costs
    four times a plain one's."""

    index: str
    doc_type: str
    doc_id: str
    lines: bytes
    size: int
    """`len(lines)`."""

    def error(self, status: int, reason: str) -> BulkItemError:
        return BulkItemError(self.index, self.doc_type, self.doc_id, status, reason)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quote_pattern(pattern: str) -> str:
    """Percent-encode an index name or pattern, keeping `*` and `,`."""
    return urllib.parse.quote(pattern, safe="*,")
