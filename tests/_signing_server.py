"""A local asset server that signs like a cloud store: tokens with a short life, 403 after it.

``GET /token`` answers ``{"token": "st=..&se=..&sig=..", "msft:expiry": ISO}`` (the Planetary
Computer token API's form); the announced expiry is ``announce_s`` from now, but the server
honours a token for ``ttl_s`` only, so a client that trusts the announced time also meets a
403 (as with a revoked key) and must re-sign. Assets (files under ``root``) are served with
HTTP range requests, only with a valid token; counts of tokens and 403s are kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_KEY = b"test-key"


class SigningServer:
    """Start with ``with SigningServer(root, ttl_s=1.0) as srv:``; ``srv.url`` is the base."""

    def __init__(self, root: Path, ttl_s: float, announce_s: float | None = None) -> None:
        self.root, self.ttl_s = Path(root), ttl_s
        self.announce_s = ttl_s if announce_s is None else announce_s
        self.counts = {"tokens": 0, "forbidden": 0, "served": 0}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/token":
                    now = time.time()
                    expiry = now + server.ttl_s
                    sig = hmac.new(_KEY, f"{expiry:.3f}".encode(), hashlib.sha256).hexdigest()
                    announced = datetime.fromtimestamp(now + server.announce_s, UTC)
                    data = json.dumps({"token": f"st={now:.3f}&se={expiry:.3f}&sig={sig}",
                                       "msft:expiry": announced.isoformat()}).encode()
                    with server._lock:
                        server.counts["tokens"] += 1
                    return self._answer(200, data, "application/json", body)
                query = parse_qs(parts.query)
                se = (query.get("se") or [""])[0]
                good = hmac.new(_KEY, se.encode(), hashlib.sha256).hexdigest()
                if (not se or (query.get("sig") or [""])[0] != good
                        or float(se) < time.time()):
                    with server._lock:
                        server.counts["forbidden"] += 1
                    return self._answer(403, b"AuthenticationFailed", "text/plain", body)
                path = (server.root / parts.path.lstrip("/")).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    return self._answer(404, b"not found", "text/plain", body)
                data = path.read_bytes()
                rng = self.headers.get("Range")
                with server._lock:
                    server.counts["served"] += 1
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                    self.send_header("Content-Length", str(end - start + 1))
                    self.send_header("Accept-Ranges", "bytes")
                    self.end_headers()
                    if body:
                        self.wfile.write(data[start:end + 1])
                    return None
                return self._answer(200, data, "image/tiff", body)

            def _answer(self, status: int, data: bytes, ctype: str, body: bool) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        self.url = f"http://{self.host}"

    def __enter__(self) -> SigningServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
