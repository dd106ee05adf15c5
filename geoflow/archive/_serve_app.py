"""The child processes behind :mod:`geoflow.archive.server` (private).

``python -m geoflow.archive._serve_app http --fd N --assets DIR`` runs ONE uvicorn serving
stac-fastapi-pgstac and the archive's COG assets (:class:`AssetFiles` at ``/assets``, which
answers HTTP range requests) on a socket the parent already bound. The database
settings come from the environment (``GEOFLOW_PG_*``), never from argv, so the password does
not show in ``ps``. If the parent dies without stopping it (SIGKILL), it stops itself and the
PostgreSQL cluster (``GEOFLOW_PG_STOP``, a JSON argv) so nothing is left running.

``python -m geoflow.archive._serve_app supervise DIR`` is the detached server that
:func:`geoflow.archive.server.ensure_server` starts: it serves DIR until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]

#: URL prefix under which the archive's files are served.
ASSETS_PREFIX = "/assets"


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class AssetFiles:
    """ASGI app: files under a folder by GET and HEAD, with single byte ranges.

    This is what GDAL asks of an object store (a HEAD, then one range per run of blocks),
    answered with one ``pread`` and one body message. Starlette's ``StaticFiles``, which
    answers everything else (multi-range, conditional requests), reads a range in 64 KiB
    pieces through a thread pool: about 3 ms of server CPU per COG range request, which on a
    small machine competes with the workers for the same cores. Paths are resolved and must
    stay inside the folder; anything else is a 404, as from ``StaticFiles``.
    """

    def __init__(self, directory: str, fallback: ASGIApp) -> None:
        self.root = os.path.realpath(directory)
        self.fallback = fallback

    def _file(self, path: str) -> str | None:
        try:
            full = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
        except (ValueError, OSError):  # a NUL byte, a symlink loop: StaticFiles answers
            return None
        if not full.startswith(self.root + os.sep) or not os.path.isfile(full):
            return None
        return full

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        rng = headers.get("range")
        simple = scope["method"] in ("GET", "HEAD") and not any(
            h in headers for h in ("if-range", "if-none-match", "if-modified-since"))
        match = _RANGE.fullmatch(rng.strip()) if rng else None
        full = self._file(scope["path"][len(ASSETS_PREFIX):]) if simple else None
        if full is None or (rng and match is None):  # errors, multi-range: Starlette's answer
            await self.fallback(scope, receive, send)
            return
        with open(full, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            status, start, end = 200, 0, size - 1
            if match is not None:
                first, last = match.groups()
                if first:
                    start, end = int(first), min(int(last), size - 1) if last else size - 1
                elif last:  # a suffix: the last N bytes
                    start = max(0, size - int(last))
                if not (first or last) or start > end or start >= size:
                    await self.fallback(scope, receive, send)  # 416 and its headers
                    return
                status = 206
            body = b"" if scope["method"] == "HEAD" else os.pread(f.fileno(), end - start + 1,
                                                                  start)
        out = [(b"content-length", str(end - start + 1).encode()),
               (b"accept-ranges", b"bytes"),
               (b"content-type", b"image/tiff" if full.endswith((".tif", ".tiff"))
                else b"application/octet-stream")]
        if status == 206:
            out.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})


def create_app(assets_dir: str) -> ASGIApp:
    """The ASGI app: ``/assets/...`` from disk, everything else the STAC API."""
    from fastapi import FastAPI
    from stac_fastapi.pgstac.app import instantiate_api
    from stac_fastapi.pgstac.config import PostgresSettings, Settings
    from stac_fastapi.pgstac.db import close_db_connection, connect_to_db
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    env = os.environ
    pg = PostgresSettings(
        pguser=env["GEOFLOW_PG_USER"], pgpassword=env["GEOFLOW_PG_PASSWORD"],
        pghost="127.0.0.1", pgport=int(env["GEOFLOW_PG_PORT"]),
        pgdatabase=env["GEOFLOW_PG_DATABASE"], db_min_conn_size=1, db_max_conn_size=4)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await connect_to_db(app, postgres_settings=pg)
        yield
        await close_db_connection(app)

    from geoflow import __version__

    settings = Settings(stac_fastapi_title="geoflow sample archive",
                        stac_fastapi_description="geoflow's bundled synthetic Sentinel-1/2 "
                                                 "archive",
                        stac_fastapi_landing_id="geoflow-archive",
                        stac_fastapi_version=__version__,
                        # pgstac's SQL hydration cost ~20 ms per item here (12 S2 items:
                        # 250 ms); merging the base item in Python gives the same items in
                        # 30 ms.
                        use_api_hydrate=True)
    stac = instantiate_api(settings=settings, lifespan=lifespan).app
    # A Starlette app of its own (its exception middleware turns a missing file into a 404),
    # not a mount on the FastAPI app: the STAC app's middlewares (Brotli compression among
    # them) must not touch byte-range answers for COGs.
    static = AssetFiles(assets_dir, Starlette(routes=[
        Mount(ASSETS_PREFIX, app=StaticFiles(directory=assets_dir, check_dir=True))]))

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(ASSETS_PREFIX + "/"):
            await static(scope, receive, send)
        else:
            await stac(scope, receive, send)

    return app


def _watch_parent(parent: int) -> None:
    """Stop this server when the process that started it is gone (it was killed)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.environ["GEOFLOW_ORPHANED"] = "1"
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _http_main(args: argparse.Namespace) -> int:
    import uvicorn

    sock = socket.socket(fileno=args.fd)
    config = uvicorn.Config(create_app(args.assets), log_level=args.log_level,
                            access_log=False, lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    threading.Thread(target=_watch_parent, args=(args.parent,), daemon=True).start()
    # uvicorn re-raises the signal that stopped it once it is done, under the handler that
    # was there before; with the default one that would kill us before PostgreSQL is stopped.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        stop = os.environ.get("GEOFLOW_PG_STOP")
        if os.environ.get("GEOFLOW_ORPHANED") and stop:
            subprocess.run(json.loads(stop), check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
    return 0 if server.started else 1


def _supervise_main(args: argparse.Namespace) -> int:
    from geoflow.archive.server import serve_archive

    stop = threading.Event()

    def _handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    with serve_archive(args.dir, port=args.port) as srv:
        print(f"geoflow archive server: {srv.url}", flush=True)
        while not stop.is_set():
            if not srv.alive():
                print("geoflow archive server: the HTTP server stopped", flush=True)
                return 1
            stop.wait(1.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geoflow.archive._serve_app")
    sub = parser.add_subparsers(dest="cmd", required=True)
    http = sub.add_parser("http")
    http.add_argument("--fd", type=int, required=True)
    http.add_argument("--assets", required=True)
    http.add_argument("--parent", type=int, required=True)
    http.add_argument("--log-level", default="warning")
    sup = sub.add_parser("supervise")
    sup.add_argument("dir")
    sup.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "http":
        return _http_main(args)
    return _supervise_main(args)


if __name__ == "__main__":
    sys.exit(main())
