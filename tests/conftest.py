"""Shared fixtures: the real search server.

`search_url` is `$CFYSNAP_ES_URL`, else the URL `scripts/search-server url` prints (port 9200 by
default). A test that needs the server fails, never skips, when it does not answer: start one
with `scripts/search-server start [--port N]`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.errors import SearchServerError
from pipelines.io.search import SearchClient

REPO = Path(__file__).resolve().parent.parent
SEARCH_SERVER = REPO / "scripts" / "search-server"


def _configured_url() -> str:
    url = os.environ.get("CFYSNAP_ES_URL")
    if url:
        return url
    out = subprocess.run(
        [str(SEARCH_SERVER), "url"], capture_output=True, text=True, check=True
    ).stdout
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def search_url() -> str:
    """Base URL of a running search server; fails the test if none answers."""
    url = _configured_url()
    try:
        with SearchClient(url, timeout=10, max_retries=0) as client:
            client.info()
    except SearchServerError as e:
        pytest.fail(
            f"no search server answers at {e.url} ({e.reason}). Run `scripts/search-server start`"
            " (or `scripts/search-server start --port N` and set CFYSNAP_ES_URL)",
            pytrace=False,
        )
    return url


def wipe(client: SearchClient) -> None:
    """Delete every index except system ones (names starting with ".")."""
    _, mappings = client.request("GET", "/_mapping")
    names = sorted(name for name in mappings or {} if not name.startswith("."))
    for start in range(0, len(names), 50):
        client.request(
            "DELETE",
            "/" + ",".join(names[start : start + 50]),
            params={"ignore_unavailable": "true"},
            ok=(404,),
        )


@pytest.fixture
def search(search_url: str) -> Iterator[SearchClient]:
    """A client on a server wiped of every non-system index."""
    with SearchClient(search_url) as client:
        wipe(client)
        yield client
