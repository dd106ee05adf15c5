"""A tiny real HTTP forward proxy on 127.0.0.1 that answers HTTP 500 for chosen paths.

GDAL reaches it through ``GDAL_HTTP_PROXY``; every other request is forwarded to the real
asset server unchanged (range requests included). Used by tests/test_regional.py to show
that transient server errors are retried and a permanently broken asset fails one chunk.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_FORWARD = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "ETag",
            "Last-Modified")


class FaultyProxy:
    """Forward proxy; ``fail(path_suffix, times)`` makes matching URLs answer 500 ``times``
    times (``None``: forever). ``hits`` counts requests per matching rule, ``errors`` 500s sent.
    """

    def __init__(self) -> None:
        self.rules: dict[str, int | None] = {}
        self.hits: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._handle(head=True)

            def do_GET(self) -> None:
                self._handle(head=False)

            def _handle(self, head: bool) -> None:
                url = urllib.parse.urlsplit(self.path)
                rule = proxy._match(url.path)
                if rule is not None:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("range", "accept", "user-agent")}
                target = url.path + (f"?{url.query}" if url.query else "")
                conn.request(self.command, target, headers=headers)
                resp = conn.getresponse()
                body = b"" if head else resp.read()
                self.send_response(resp.status)
                for key in _FORWARD:
                    value = resp.getheader(key)
                    if value is not None:
                        self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                conn.close()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    def fail(self, path_suffix: str, times: int | None) -> None:
        with self._lock:
            self.rules[path_suffix] = times

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.hits.clear()
            self.errors.clear()

    def _match(self, path: str) -> str | None:
        with self._lock:
            for suffix, left in self.rules.items():
                if path.endswith(suffix):
                    self.hits[suffix] += 1
                    if left is None or left > 0:
                        if left is not None:
                            self.rules[suffix] = left - 1
                        self.errors[suffix] += 1
                        return suffix
                    return None
        return None

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
