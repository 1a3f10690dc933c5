"""The baselines of `bench/run`: what a person would write in a few lines, and the server's own
rate. Each subcommand runs in its own process (the harness measures its time and memory).

    plain.py raw-dump URL              scan/scroll every document, response bytes only
    plain.py dump URL OUT.zip          scroll, json parse, json dump, a deflated zip (es_data)
    plain.py bulk-files ARCHIVE DIR M  ready NDJSON bulk bodies, 5,000 documents each (untimed)
    plain.py curl-bulk URL DIR         curl each ready body to _bulk, 2 at a time
    plain.py load URL ARCHIVE          parse each es_data line, bulk 1,000 at a time
    plain.py convert SRC.zip DST.zip   parse, upgrade 3.2 -> 3.4 (cfysnap's rules), dump, deflate

Reads and writes go through `http.client` on one kept-alive connection: no client library cost.
On Elasticsearch 1.x reads use `search_type=scan` (1,000 a shard a page); on 8.x a scroll sorted
by `_doc`, 5,000 a page. Every bulk response is checked for errors.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

INDICES = "cloudify_storage,logstash-*"
_SCROLL_ID = re.compile(rb'"_scroll_id"\s*:\s*"([^"]+)"')


class Server:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
        self.conn.request("GET", "/")
        response = self.conn.getresponse()
        body = response.read()
        if response.status == 200:
            self.major = int(json.loads(body)["version"]["number"].split(".")[0])
        else:  # the 8.x integ-test distribution has no GET /
            self.major = 8

    def call(self, method: str, path: str, body: bytes | None = None,
             ctype: str = "application/json") -> bytes:
        headers = {"content-type": ctype} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise SystemExit(f"{method} {path}: HTTP {response.status} {data[:300]!r}")
        return data

    def pages(self) -> Iterator[bytes]:
        """Raw scroll pages until the first empty one."""
        target = INDICES if self.major < 7 else "cloudify_storage-*,logstash-*"
        if self.major < 2:
            page = self.call("POST", f"/{target}/_search?search_type=scan&scroll=5m&size=1000",
                             b'{"query":{"match_all":{}}}')
        else:
            page = self.call("POST", f"/{target}/_search?scroll=5m",
                             b'{"size":5000,"sort":["_doc"],"query":{"match_all":{}}}')
            yield page
        while True:
            scroll_id = _SCROLL_ID.search(page).group(1)  # type: ignore[union-attr]
            if self.major < 2:
                page = self.call("POST", "/_search/scroll?scroll=5m", scroll_id, "text/plain")
            else:
                page = self.call("POST", "/_search/scroll",
                                 b'{"scroll":"5m","scroll_id":"' + scroll_id + b'"}')
            if b'"hits":[]' in page:
                return
            yield page


def raw_dump(url: str) -> None:
    hits = sum(page.count(b'"_id"') for page in Server(url).pages())
    print(hits)


def logical(index: str, doc_type: str | None, major: int) -> tuple[str, str]:
    if major < 7:
        return index, str(doc_type)
    base, _, kind = index.rpartition("-")
    return base, kind


def dump(url: str, out: str) -> None:
    server = Server(url)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z, z.open("es_data", "w") as f:
        for page in server.pages():
            for hit in json.loads(page)["hits"]["hits"]:
                index, doc_type = logical(hit["_index"], hit.get("_type"), server.major)
                line = {"_index": index, "_type": doc_type, "_id": hit["_id"], "_score": 0.0,
                        "_source": hit["_source"]}
                f.write(json.dumps(line).encode() + b"\n")


def es_data(archive: str) -> Iterator[bytes]:
    with zipfile.ZipFile(archive) as z, z.open("es_data") as f:
        yield from (line for line in f if line.strip())


def action(hit: dict, major: int) -> bytes:
    meta = {"_index": hit["_index"], "_id": hit["_id"]}
    if major < 7:
        meta["_type"] = hit["_type"]
    else:
        meta["_index"] = f"{hit['_index']}-{hit['_type']}"
    return json.dumps({"index": meta}).encode() + b"\n" + json.dumps(hit["_source"]).encode() + b"\n"


def bulk_files(archive: str, folder: str, major: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    chunk: list[bytes] = []
    n = 0

    def flush() -> None:
        nonlocal chunk, n
        (out / f"{n:05d}.ndjson").write_bytes(b"".join(chunk))
        chunk, n = [], n + 1

    for line in es_data(archive):
        chunk.append(action(json.loads(line), int(major)))
        if len(chunk) == 5000:
            flush()
    if chunk:
        flush()


def curl_bulk(url: str, folder: str) -> None:
    files = sorted(str(p) for p in Path(folder).glob("*.ndjson"))
    script = (f'out=$(curl -sS -XPOST -H "content-type: application/x-ndjson" '
              f'--data-binary @"$0" "{url}/_bulk") && case $out in *\'"errors":false\'*) ;; '
              f'*) echo "bulk errors in $0" >&2; exit 1;; esac')
    subprocess.run(["xargs", "-P2", "-n1", "bash", "-c", script], input="\n".join(files),
                   text=True, check=True)
    Server(url).call("POST", "/_refresh")


def load(url: str, archive: str) -> None:
    server = Server(url)
    batch: list[bytes] = []

    def send() -> None:
        body = server.call("POST", "/_bulk", b"".join(batch), "application/x-ndjson")
        if json.loads(body).get("errors"):
            raise SystemExit("bulk errors")
        batch.clear()

    for line in es_data(archive):
        batch.append(action(json.loads(line), server.major))
        if len(batch) == 1000:
            send()
    if batch:
        send()
    server.call("POST", "/_refresh")


def convert(source: str, output: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from transforms.versions import plan, upgrade_agents, upgrade_hit, upgrade_metadata

    steps = plan("3.2", "3.4")
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename == "es_data":
                with src.open(info) as f, dst.open("es_data", "w") as out:
                    for line in f:
                        if line.strip():
                            out.write(json.dumps(upgrade_hit(json.loads(line), steps)).encode() + b"\n")
            elif info.filename == "metadata.json":
                dst.writestr(info.filename, json.dumps(upgrade_metadata(json.loads(src.read(info)), steps)))
            elif info.filename == "agents.json":
                dst.writestr(info.filename, json.dumps(upgrade_agents(json.loads(src.read(info)), steps)))
            else:
                dst.writestr(info, src.read(info))


COMMANDS: dict[str, Any] = {"raw-dump": raw_dump, "dump": dump, "bulk-files": bulk_files, "curl-bulk": curl_bulk,
            "load": load, "convert": convert}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
