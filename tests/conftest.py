"""Shared fixtures: the real search servers.

Every server test runs on **Elasticsearch 1.7** (what Cloudify 3.x managers run):
`$CFYSNAP_ES_URL`, else the URL `scripts/search-server url` prints (port 9200). Tests marked
`es8` run a second time on **Elasticsearch 8** (the `<index>-<type>` layout):
`$CFYSNAP_ES8_URL`, else `scripts/search-server url --port 9280`. A test that needs a server
fails, never skips, when it does not answer: start it with `scripts/search-server start
[--server elasticsearch-8] [--port N]` (`make test` starts both).
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.errors import SearchServerError
from core.model import Version
from core.search import SearchClient
from pipelines.sample.generate import ManagerSpec
from pipelines.sample.load import load_empty_manager, load_manager

REPO = Path(__file__).resolve().parent.parent
SEARCH_SERVER = REPO / "scripts" / "search-server"


@pytest.fixture(autouse=True)
def _own_environment() -> Iterator[None]:
    """Each test gets the environment it started with: a command run in-process (CliRunner) sets
    variables for Beam's workers, which must not reach the next test's subprocesses."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


SERVERS = {"es1": ("CFYSNAP_ES_URL", 9200), "es8": ("CFYSNAP_ES8_URL", 9280)}
"""Server name → (environment variable with its URL, default port)."""


def configured_url(server: str = "es1") -> str:
    variable, port = SERVERS[server]
    url = os.environ.get(variable)
    if url:
        return url
    out = subprocess.run(
        [str(SEARCH_SERVER), "url", "--port", str(port)], capture_output=True, text=True, check=True
    ).stdout
    return out.strip().splitlines()[-1]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `es8` that use a server run once per server (ids `es1`, `es8`)."""
    if "server" in metafunc.fixturenames and metafunc.definition.get_closest_marker("es8"):
        metafunc.parametrize("server", ["es1", "es8"])


@pytest.fixture
def server() -> str:
    """Which server a test runs on: "es1" (Elasticsearch 1.7) unless parametrized (`es8`)."""
    return "es1"


_ANSWERED: set[str] = set()


def answering(url: str) -> str:
    """`url`, once its server answers; fails the test (never skips) otherwise."""
    if url in _ANSWERED:
        return url
    try:
        with SearchClient(url, timeout=10, max_retries=0) as client:
            client.info()
    except SearchServerError as e:
        pytest.fail(
            f"no search server answers at {e.url} ({e.reason}). Run `scripts/search-server start`"
            " (`--server elasticsearch-8 --port 9280` for the second one), or set CFYSNAP_ES_URL"
            " / CFYSNAP_ES8_URL",
            pytrace=False,
        )
    _ANSWERED.add(url)
    return url


@pytest.fixture
def search_url(server: str) -> str:
    """Base URL of a running search server; fails the test if none answers."""
    return answering(configured_url(server))


@pytest.fixture(scope="session")
def search8_url() -> str:
    """Base URL of the Elasticsearch 8 server (for tests that need both servers at once)."""
    return answering(configured_url("es8"))


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


@pytest.fixture
def search8(search8_url: str) -> Iterator[SearchClient]:
    """A client on the Elasticsearch 8 server, wiped of every non-system index."""
    with SearchClient(search8_url) as client:
        wipe(client)
        yield client


def fresh_manager(client: SearchClient, version: Version = Version.V3_4) -> None:
    """Make the server a freshly installed `version` manager: wiped, then the manager's own
    indices and mappings and its provider context (`load_empty_manager`)."""
    wipe(client)
    load_empty_manager(version, client)


@pytest.fixture
def target(search: SearchClient) -> SearchClient:
    """A client on a freshly installed 3.4 manager (the target of a restore)."""
    fresh_manager(search)
    return search


def load_small_manager(client: SearchClient, folder: Path, events: int) -> Path:
    """A 3.3 manager (its agents.json has broker passwords and certificates) with `events` events
    and as many logs, on a wiped server; its agent keys in `folder/keys`. Its file-server root."""
    spec = replace(ManagerSpec(version=Version.V3_3, events=events, logs=events),
                   keys_dir=str(folder / "keys"))
    wipe(client)
    load_manager(spec, client, folder / "fs")
    return folder / "fs"


def es_data_lines(archive: Path) -> Counter[bytes]:
    """An archive's es_data lines, as a multiset (their order is not defined)."""
    with zipfile.ZipFile(archive) as z:
        return Counter(z.read("es_data").splitlines())
