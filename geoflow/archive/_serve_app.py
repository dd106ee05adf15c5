"""The child processes behind :mod:`geoflow.archive.server` (private).

``python -m geoflow.archive._serve_app http --fd N --assets DIR`` runs ONE uvicorn serving
stac-fastapi-pgstac and the archive's COG assets (:class:`AssetFiles` at ``/assets``, which
answers HTTP range requests) on a socket the parent already bound. The database
settings come from the environment (``GEOFLOW_PG_*``), never from argv, so the password does
not show in ``ps``; the role is a login role with ``pgstac_read`` rights only.

``python -m geoflow.archive._serve_app watchdog --fd N --pgdata DIR`` stops PostgreSQL and the
HTTP server when the process that started them is killed (SIGKILL), so nothing is left running.

``python -m geoflow.archive._serve_app supervise DIR`` is the detached server that
:func:`geoflow.archive.server.ensure_server` starts: it serves DIR until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]

log = logging.getLogger(__name__)

#: URL prefix under which the archive's files are served.
ASSETS_PREFIX = "/assets"


#: More byte ranges than this in one request are refused (416): GDAL asks for one, and a long
#: list only makes the server work (RFC 9110 lets a server refuse many small ranges).
MAX_RANGES = 16
#: A byte position with more digits than this (beyond 10**18 bytes) is absurd; refusing it
#: before ``int()`` also keeps Python's 4300-digit conversion limit (a ValueError) out.
_MAX_DIGITS = 18
#: Longer request paths are a 404 before touching the file system.
_MAX_PATH = 4096
# ASCII digits only: ``\d`` and ``int()`` would also take other scripts' digits.
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


def parse_range(value: str, size: int) -> list[tuple[int, int]] | int:
    """The byte ranges ``(first, last)`` (inclusive) of a ``Range`` header, or a 4xx status.

    400 for a malformed header (another unit, no ``=``, a part that is not ``A-B``, ``A-`` or
    ``-N``, a reversed range), 416 when nothing is satisfiable in a file of ``size`` bytes,
    for absurd positions (over 18 digits) and for more than :data:`MAX_RANGES` ranges.

    Examples
    --------
    >>> parse_range("bytes=0-9", 100), parse_range("bytes=-10", 100)
    ([(0, 9)], [(90, 99)])
    >>> parse_range("bytes=200-", 100), parse_range("items=0-1", 100)
    (416, 400)
    """
    unit, sep, specs = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return 400
    parts = [p.strip() for p in specs.split(",")]
    parts = [p for p in parts if p]  # RFC 9110 lists may hold empty elements
    if not parts:
        return 400
    if len(parts) > MAX_RANGES:
        return 416
    ranges: list[tuple[int, int]] = []
    for part in parts:
        match = _RANGE_SPEC.fullmatch(part)
        if match is None or match.group(0) == "-":
            return 400
        first, last = match.groups()
        if len(first) > _MAX_DIGITS or len(last) > _MAX_DIGITS:
            return 416
        if first:
            start = int(first)
            if last and int(last) < start:
                return 400
            end = min(int(last), size - 1) if last else size - 1
        else:  # a suffix: the last N bytes (none of them for N = 0)
            if int(last) == 0:
                continue
            start, end = max(0, size - int(last)), size - 1
        if start < size:
            ranges.append((start, end))
    return ranges or 416


class AssetFiles:
    """ASGI app: files under a folder by GET and HEAD, with byte ranges.

    This is what GDAL asks of an object store (a HEAD, then one range per run of blocks),
    answered with one ``pread`` and one body message. Starlette's ``StaticFiles``, which
    answers everything else (multi-range, conditional requests, other methods), reads a range
    in 64 KiB pieces through a thread pool: about 3 ms of server CPU per COG range request,
    which on a small machine competes with the workers for the same cores. Paths are resolved
    and must stay inside the folder; anything else is a 404. Every ``Range`` header is checked
    here first (:func:`parse_range`), so no request reaches Starlette's parsing unchecked and
    any malformed one is answered with a 4xx, never a 500.
    """

    def __init__(self, directory: str, fallback: ASGIApp) -> None:
        self.root = os.path.realpath(directory)
        self.fallback = fallback

    def _file(self, path: str) -> str | None:
        if len(path) > _MAX_PATH:
            return None
        try:
            full = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
            if not full.startswith(self.root + os.sep) or not os.path.isfile(full):
                return None
        except (ValueError, OSError):  # a NUL byte, a name too long, a symlink loop
            return None
        return full

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await self.fallback(scope, receive, send)  # 405, as from StaticFiles
            return
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1"))
                   for k, v in scope.get("headers", [])]
        ranges_sent = [v for k, v in headers if k == "range"]
        full = self._file(scope["path"][len(ASSETS_PREFIX):])
        if full is None:
            await _plain(send, method, 404, b"Not Found")
            return
        try:
            fd = os.open(full, os.O_RDONLY)
        except OSError:  # removed or unreadable since the check
            await _plain(send, method, 404, b"Not Found")
            return
        try:
            size = os.fstat(fd).st_size
            ranges: list[tuple[int, int]] | int = [(0, size - 1)] if size else []
            if len(ranges_sent) > 1:  # which one would count? Starlette reads the first
                ranges = 400
            elif ranges_sent:
                ranges = parse_range(ranges_sent[0], size)
            if isinstance(ranges, int):
                extra = [(b"content-range", f"bytes */{size}".encode())] if ranges == 416 else []
                await _plain(send, method, ranges, b"Range Not Satisfiable" if ranges == 416
                             else b"Bad Request: malformed Range header", extra)
                return
            if len(ranges) > 1 or any(k in ("if-range", "if-none-match", "if-modified-since")
                                      for k, _ in headers):
                # Checked above, so Starlette's own parsing only sees sound ranges.
                await self.fallback(scope, receive, send)
                return
            start, end = ranges[0] if ranges else (0, -1)
            body = b"" if method == "HEAD" else os.pread(fd, end - start + 1, start)
        finally:
            os.close(fd)
        status = 206 if ranges_sent else 200
        out = [(b"content-length", str(end - start + 1).encode()),
               (b"accept-ranges", b"bytes"),
               (b"content-type", b"image/tiff" if full.endswith((".tif", ".tiff"))
                else b"application/octet-stream")]
        if status == 206:
            out.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})


async def _plain(send: Any, method: str, status: int, text: bytes,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A short text/plain answer (errors)."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(text)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else text})


def _client_errors() -> tuple[type[Exception], ...]:
    """Errors that a request's own content causes in stac-fastapi-pgstac: answered 400.

    Found by sending malformed queries: a NUL byte or a bad escape in ``ids``, ``sortby``,
    ``fields`` or a path reaches PostgreSQL, which rejects it (SQLSTATE class 22, "data
    exception"); pgstac's own checks (a garbage paging ``token``) RAISE (P0001); bad JSON in
    ``query`` or ``intersects`` fails to decode. Left to FastAPI, each is a 500.
    """
    import asyncpg

    return (asyncpg.exceptions.DataError, asyncpg.exceptions.RaiseError, json.JSONDecodeError)


async def _bad_request(request: Any, exc: Exception) -> Any:
    from starlette.responses import JSONResponse

    # One line, no traceback: these are the client's mistakes, and a long token echoed in
    # full would bloat the log.
    description = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    log.warning("400 for %s %s: %s", request.method, request.url.path[:200], description)
    return JSONResponse({"code": "BadRequest", "description": description}, status_code=400)


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
    for exc in _client_errors():
        stac.add_exception_handler(exc, _bad_request)
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
    """Stop this server when the process that started it is gone (it was killed).

    The watchdog (:func:`_watchdog_main`) stops us at once; this covers a supervisor killed
    before it could tell the watchdog our pid.
    """
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
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
    # was there before; with the default one the exit status would be the signal's.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    server.run(sockets=[sock])
    return 0 if server.started else 1


# --------------------------------------------------------------------------- the watchdog


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: reparented, it waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _postmaster(pgdata: str) -> int | None:
    """The live postmaster of ``pgdata`` (checked by its command line: pids are reused)."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid"), "rb") as fh:
            pid = int(fh.readline())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) and pgdata.encode() in _cmdline(pid) else None


def _pg_ctl_running(pgdata: str) -> bool:
    """Whether a ``pg_ctl`` for ``pgdata`` runs (the supervisor died while it started one)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            args = _cmdline(int(name)).split(b"\0")
            if any(a.endswith(b"pg_ctl") for a in args) and pgdata.encode() in args:
                return True
    return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):  # gone meanwhile
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def _watchdog_main(args: argparse.Namespace) -> int:
    """Stop PostgreSQL and the HTTP server when the supervisor dies without stopping them.

    The supervisor (the process running :class:`geoflow.archive.server.ArchiveServer`) holds
    the only write end of the pipe ``--fd`` and writes ``pg PID`` and ``http PID`` lines as it
    starts them, and ``done`` once it has stopped them. End of file without ``done`` means it
    was killed (SIGKILL, the OOM killer): read() returns at that moment, with no polling, also
    during start-up, before the HTTP server exists. PDEATHSIG would not do: the postmaster is
    no child of ours (pg_ctl daemonizes it), and it fires when the creating *thread* exits.
    """
    # Ctrl-C in a terminal reaches the whole process group; the supervisor handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pids: dict[str, int] = {}
    buf = b""
    with os.fdopen(args.fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                kind, _, value = line.decode("ascii", "replace").partition(" ")
                if kind == "done":
                    return 0
                if kind in ("pg", "http") and value.isdigit():
                    pids[kind] = int(value)
    pgdata = args.pgdata
    pg = pids.get("pg")
    if pg is None or pgdata.encode() not in _cmdline(pg):
        # Killed while pg_ctl was starting PostgreSQL: wait for it, then stop what it started.
        deadline = time.monotonic() + 90
        while _postmaster(pgdata) is None and _pg_ctl_running(pgdata) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        pg = _postmaster(pgdata)
    http = pids.get("http")
    if http is not None and b"geoflow.archive._serve_app" in _cmdline(http):
        _signal(http, signal.SIGTERM)
    else:
        http = None
    if pg is not None:
        _signal(pg, signal.SIGINT)  # PostgreSQL's "fast" shutdown, as pg_ctl stop -m fast
    print(f"geoflow watchdog: the server was killed; stopping PostgreSQL (pid {pg}) and the "
          f"HTTP server (pid {http})", flush=True)
    running = [p for p in (pg, http) if p is not None]
    for pid in _wait_gone(running, 30):
        _signal(pid, signal.SIGQUIT if pid == pg else signal.SIGKILL)  # "immediate"
    _wait_gone(running, 10)
    return 0


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
    dog = sub.add_parser("watchdog")
    dog.add_argument("--fd", type=int, required=True)
    dog.add_argument("--pgdata", required=True)
    sup = sub.add_parser("supervise")
    sup.add_argument("dir")
    sup.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "http":
        return _http_main(args)
    if args.cmd == "watchdog":
        return _watchdog_main(args)
    return _supervise_main(args)


if __name__ == "__main__":
    sys.exit(main())
