"""A fault-injecting HTTP proxy in front of the real search server (tests only: the faults a real
server will not make on demand). Every request is forwarded, byte for byte, unless the plan says
otherwise for it:

- "429", "503": answered by the proxy with that status, never forwarded;
- "drop": the connection closed before the request reaches the server;
- "drop-after": forwarded, the server's answer thrown away and the connection closed (the
  server did the work; the client cannot know);
- "items-429": forwarded, then every other item of a `_bulk` answer rewritten to a 429 failure
  (the server did index them: a resend overwrites, by `_id`);
- "slow": forwarded, answered after `SLOW_SECONDS`;
- "pass": forwarded.

    with FaultProxy(upstream_url, {"bulk": ["429", "pass", "drop-after"]}) as proxy:
        ... proxy.url ...
        proxy.counts  # Counter of (kind, action) actually applied

A plan maps a request kind ("bulk", "scroll" for scroll continuations, "search", "other") to
the actions applied in turn to the requests of that kind (cycling; an empty list means "pass").
A request sent again (same method, path and body: a client's retry) passes: each request fails
at most once, whatever the order in which concurrent requests draw their actions (`persistent`
plans apply to retries too: a server that keeps refusing).
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import threading
import time
from collections import Counter
from itertools import cycle
from typing import Any
from urllib.parse import urlsplit

SLOW_SECONDS = 1.5


def kind_of(method: str, path: str) -> str:
    if "_bulk" in path:
        return "bulk"
    if path.startswith("/_search/scroll"):
        return "scroll"
    if "_search" in path:
        return "search"
    return "other"


class FaultProxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, upstream: str, plan: dict[str, list[str]], *, persistent: bool = False
    ) -> None:
        parts = urlsplit(upstream)
        self._persistent, self._seen = persistent, set[tuple[str, str, str]]()
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 9200)
        self._plans = {kind: cycle(actions) for kind, actions in plan.items() if actions}
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def action(self, kind: str, request: tuple[str, str, str]) -> str:
        with self._lock:
            if not self._persistent and request in self._seen:
                self.counts[(kind, "pass")] += 1
                return "pass"  # a retry
            self._seen.add(request)
            plan = self._plans.get(kind)
            action = next(plan) if plan is not None else "pass"
            self.counts[(kind, action)] += 1
            return action

    def set_plan(self, plan: dict[str, list[str]]) -> None:
        with self._lock:
            self._plans = {kind: cycle(actions) for kind, actions in plan.items() if actions}

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection", "content-length")}
            conn.request(self.command, self.path, body=body if body else None, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = (self.command, self.path, hashlib.sha1(body).hexdigest())
        action = self.server.action(kind_of(self.command, self.path), request)
        if action in ("429", "503"):
            reason = {"429": "too many requests", "503": "unavailable"}[action]
            payload = json.dumps({"error": f"injected {reason}", "status": int(action)}).encode()
            self._answer(int(action), [("Content-Type", "application/json")], payload)
            return
        if action == "drop":
            self.close_connection = True
            return
        status, headers, answer = self._forward(body)
        if action == "drop-after":
            self.close_connection = True
            return
        if action == "items-429" and status == 200:
            answer = _fail_every_other_item(answer)
        if action == "slow":
            time.sleep(SLOW_SECONDS)
        self._answer(status, headers, answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


def _fail_every_other_item(answer: bytes) -> bytes:
    result = json.loads(answer)
    for n, item in enumerate(result.get("items", [])):
        if n % 2:
            for outcome in item.values():
                outcome["status"] = 429
                outcome["error"] = "EsRejectedExecutionException[rejected execution (queue full)]"
    result["errors"] = True
    return json.dumps(result).encode()
