"""The archive's local servers under hostile input and hard kills ("Hardening").

Malformed requests go over a real socket to the real server and must get a 4xx, never a 500;
the STAC API must connect to PostgreSQL as a role that can only read; a SIGKILLed supervisor
must not leave PostgreSQL or the HTTP server running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg import errors

from geoflow.archive._serve_app import MAX_RANGES, parse_range
from geoflow.archive.server import ArchiveServer, cluster_dir, ensure_server, stop_server

# --------------------------------------------------------------------------- helpers


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.rsplit("/", 1)[-1].split(":")
    return host, int(port)


def _raw(url: str, target: bytes, headers: list[tuple[bytes, bytes]] | None = None,
         method: bytes = b"GET", body: bytes = b"") -> tuple[int, bytes, bytes]:
    """Send one request as bytes (nothing normalised by a client library): status, head, body."""
    host, port = _host_port(url)
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + f"{host}:{port}".encode(),
             b"Connection: close", *(k + b": " + v for k, v in headers or [])]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def _wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` seconds pass (an event, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _port_closed(url: str) -> bool:
    with socket.socket() as s:
        return s.connect_ex(_host_port(url)) != 0


def _postmaster_pid(cluster: Path) -> int | None:
    try:
        pid = int((cluster / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def _http_procs(archive: Path) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "_serve_app http" in cmd and str(archive / "assets") in cmd and _alive(proc.pid):
            out.append(proc)
    return out


def _state(cluster: Path) -> dict[str, Any]:
    return json.loads((cluster / "state.json").read_text())


def _asset(archive: Path) -> tuple[str, bytes]:
    path = next(iter(sorted((archive / "assets").rglob("*.tif"))))
    return "/assets/" + path.relative_to(archive / "assets").as_posix(), path.read_bytes()


# --------------------------------------------------------------------------- the Range parser


def test_parse_range_answers_every_form() -> None:
    big = "9" * 5000
    cases = {
        "bytes=0-9": [(0, 9)], "bytes=90-": [(90, 99)], "bytes=-10": [(90, 99)],
        "bytes=5-500": [(5, 99)], "bytes=-500": [(0, 99)], "BYTES = 1-1": 400,
        "bytes=0-0, 5-6": [(0, 0), (5, 6)], "bytes=0-1,,": [(0, 1)],
        f"bytes={big}-": 416, f"bytes=0-{big}": 416, f"bytes=-{big}": 416,
        "bytes=100-": 416, "bytes=100-200": 416, "bytes=-0": 416, "bytes=10-5": 400,
        "bytes=-5-10": 400, "bytes=a-b": 400, "bytes=": 400, "bytes=-": 400, "bytes=,": 400,
        "bytes 0-1": 400, "items=0-1": 400, "": 400, "bytes=\u0660-\u0669": 400,
        "bytes=" + ",".join(f"{i}-{i}" for i in range(MAX_RANGES + 1)): 416,
    }
    for header, expected in cases.items():
        got = parse_range(header, 100)
        if header == "BYTES = 1-1":  # the unit is case-insensitive, spaces around it too
            assert got == [(1, 1)]
            continue
        assert got == expected, header[:40]
    assert parse_range("bytes=0-", 0) == 416  # nothing to send of an empty file


# --------------------------------------------------------------------------- the asset server

_BIG = b"9" * 5000


def _malformed(size: int) -> list[tuple[str, bytes, list[tuple[bytes, bytes]], int | None]]:
    """(name, target, headers, expected status; None: any 4xx) for the asset file ``F``."""
    many = b",".join(b"%d-%d" % (i, i) for i in range(2000))
    s = str(size).encode()
    return [
        ("huge start", b"F", [(b"Range", b"bytes=" + _BIG + b"-")], 416),
        ("huge end", b"F", [(b"Range", b"bytes=0-" + _BIG)], 416),
        ("huge suffix", b"F", [(b"Range", b"bytes=-" + _BIG)], 416),
        ("huge with If-Range", b"F", [(b"Range", b"bytes=" + _BIG + b"-"),
                                      (b"If-Range", b'"x"')], 416),
        ("negative", b"F", [(b"Range", b"bytes=-5-10")], 400),
        ("reversed", b"F", [(b"Range", b"bytes=10-5")], 400),
        ("start at size", b"F", [(b"Range", b"bytes=" + s + b"-")], 416),
        ("beyond size", b"F", [(b"Range", b"bytes=" + s + b"5-" + s + b"9")], 416),
        ("empty suffix", b"F", [(b"Range", b"bytes=-0")], 416),
        ("other unit", b"F", [(b"Range", b"items=0-1")], 400),
        ("no equals", b"F", [(b"Range", b"bytes 0-1")], 400),
        ("letters", b"F", [(b"Range", b"bytes=a-b")], 400),
        ("only a dash", b"F", [(b"Range", b"bytes=-")], 400),
        ("no ranges", b"F", [(b"Range", b"bytes=,,")], 400),
        ("empty header", b"F", [(b"Range", b"")], 400),
        ("non-ASCII digits", b"F", [(b"Range", "bytes=\u0660-\u0669".encode())], 400),
        ("2000 ranges", b"F", [(b"Range", b"bytes=" + many)], 416),
        (f"{MAX_RANGES + 1} ranges", b"F",
         [(b"Range", b"bytes=" + b",".join(b"%d-%d" % (2 * i, 2 * i)
                                           for i in range(MAX_RANGES + 1)))], 416),
        ("two Range headers", b"F", [(b"Range", b"bytes=0-1"), (b"Range", b"bytes=2-3")], 400),
        ("dot-dot", b"/assets/../archive.json", [], 404),
        ("encoded dot-dot", b"/assets/%2e%2e/db/state.json", [], 404),
        ("encoded dot-dot, deeper", b"/assets/x/%2E%2E/%2e%2e/archive.json", [], 404),
        ("NUL", b"/assets/%00", [], 404),
        ("NUL in a name", b"F%00.tif", [], 404),
        ("bad UTF-8", b"/assets/%ff%fe.tif", [], 404),
        ("raw non-ASCII", "/assets/\u00e9t\u00e9.tif".encode(), [], None),
        ("long name", b"/assets/" + b"a" * 5000, [], None),
        ("deep path", b"/assets/" + b"a/" * 3000 + b"x.tif", [], None),
        ("a folder", b"/assets/", [], 404),
        ("POST", b"F", [(b"Content-Length", b"0")], 405),
        ("bad Content-Length", b"F", [(b"Content-Length", b"x" + _BIG[:50])], None),
    ]


def test_asset_server_answers_malformed_requests_with_4xx(stac_server: ArchiveServer) -> None:
    url = stac_server.url
    target, data = _asset(stac_server.archive)
    failures = []
    for name, raw_target, headers, expected in _malformed(len(data)):
        path = raw_target.replace(b"F", target.encode(), 1) if raw_target.startswith(b"F") \
            else raw_target
        method = b"POST" if name == "POST" else b"GET"
        status, _, body = _raw(url, path, headers, method)
        ok = status == expected if expected else 400 <= status < 500
        if not ok or b"Traceback" in body:
            failures.append(f"{name}: {status} {body[:80]!r}")
        if status == 416:  # says what would be satisfiable
            _, head, _ = _raw(url, path, headers, method)
            assert f"content-range: bytes */{len(data)}".encode() in head.lower(), name
    assert failures == []
    # And the server still answers a good request, with the right bytes.
    status, head, body = _raw(url, target.encode(), [(b"Range", b"bytes=100-1123")])
    assert (status, body) == (206, data[100:1124])
    assert f"bytes 100-1123/{len(data)}".encode() in head


def test_asset_server_keeps_the_single_range_and_head_answers(
        stac_server: ArchiveServer) -> None:
    url = stac_server.url
    target, data = _asset(stac_server.archive)
    n = len(data)
    assert _raw(url, target.encode())[::2] == (200, data)
    status, head, body = _raw(url, target.encode(), method=b"HEAD")
    assert (status, body) == (200, b"") and f"content-length: {n}".encode() in head.lower()
    for rng, part in ((b"bytes=-100", data[-100:]), (b"bytes=%d-" % (n - 10), data[-10:]),
                      (b"bytes=5-%d" % (n + 1000), data[5:]), (b"bytes=0-0", data[:1])):
        assert _raw(url, target.encode(), [(b"Range", rng)])[::2] == (206, part), rng
    status, head, body = _raw(url, target.encode(), [(b"Range", b"bytes=0-9,20-29")])
    assert status == 206 and b"multipart/byteranges" in head
    assert data[:10] in body and data[20:30] in body


# --------------------------------------------------------------------------- the STAC API


@pytest.mark.parametrize("query", [
    "/search?token=garbage", "/search?token=next:" + "9" * 5000, "/search?ids=%00",
    "/search?collections=%00", "/search?sortby=%00", "/search?fields=%00",
    "/search?query=%7Bbad", "/search?intersects=%7B", "/collections/%00",
    "/search?limit=" + "9" * 5000, "/search?bbox=a,b,c,d", "/search?datetime=garbage",
])
def test_stac_api_answers_malformed_queries_with_4xx(stac_url: str, query: str) -> None:
    status, _, body = _raw(stac_url, query.encode())
    assert 400 <= status < 500, (status, body[:200])
    assert b"Traceback" not in body


def test_stac_api_answers_a_malformed_search_body_with_4xx(stac_url: str) -> None:
    for body in (b"{not json", b'{"collections": ["\\u0000"]}', b'{"token": "garbage"}',
                 b'{"limit": ' + b"9" * 5000 + b"}", b'{"intersects": {"type": "Point"}}'):
        status, _, answer = _raw(stac_url, b"/search", [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(body)).encode())], method=b"POST", body=body)
        assert 400 <= status < 500, (body[:40], status, answer[:300])
        assert b"Traceback" not in answer


# --------------------------------------------------------------------------- the database role


def _admin(srv: ArchiveServer) -> psycopg.Connection[Any]:
    state = _state(srv.cluster)
    return psycopg.connect(host="127.0.0.1", port=state["pg_port"], user="postgres",
                           password=state["password"], dbname="geoflow", autocommit=True)


def _api_credentials(srv: ArchiveServer) -> dict[str, str]:
    """The database settings the running HTTP server was given (its environment)."""
    env = psutil.Process(_state(srv.cluster)["http_pid"]).environ()
    return {k: env[k] for k in ("GEOFLOW_PG_USER", "GEOFLOW_PG_PASSWORD", "GEOFLOW_PG_PORT")}


def test_stac_api_connects_as_a_role_that_can_only_read(stac_server: ArchiveServer) -> None:
    url = stac_server.url
    status, _, body = _raw(url, b"/search?limit=1")
    assert status == 200 and json.loads(body)["features"]
    pid = _state(stac_server.cluster)["http_pid"]
    pg_port = _state(stac_server.cluster)["pg_port"]
    ports = [c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
             if c.raddr and c.raddr.port == pg_port]
    assert ports, "the HTTP server holds no database connection"
    with _admin(stac_server) as admin:
        rows = admin.execute(
            "SELECT DISTINCT a.usename, r.rolsuper, r.rolcreaterole, r.rolcreatedb "
            "FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename "
            "WHERE a.client_port = ANY(%s)", (ports,)).fetchall()
        n_items = admin.execute("SELECT count(*) FROM pgstac.items").fetchone()
    assert len(rows) == 1, rows
    role, superuser, createrole, createdb = rows[0]
    assert role != "postgres" and not (superuser or createrole or createdb)

    creds = _api_credentials(stac_server)
    assert creds["GEOFLOW_PG_USER"] == role
    with psycopg.connect(host="127.0.0.1", port=int(creds["GEOFLOW_PG_PORT"]), user=role,
                         password=creds["GEOFLOW_PG_PASSWORD"], dbname="geoflow",
                         autocommit=True) as api:
        for statement in ("CREATE TABLE pgstac.evil (x int)", "CREATE TABLE public.evil (x int)",
                          "CREATE SCHEMA evil", "DROP TABLE pgstac.items",
                          "DROP TABLE pgstac.collections", "DELETE FROM pgstac.items",
                          "TRUNCATE pgstac.items", "CREATE ROLE evil",
                          "UPDATE pgstac.collections SET content = '{}'",
                          "SELECT pgstac.delete_collection('sentinel-2-l2a')"):
            with pytest.raises(errors.InsufficientPrivilege):
                api.execute(statement)
        # What the API does: pgstac's search, which writes to its search cache.
        found = api.execute("SELECT pgstac.search(%s::jsonb)",
                            (json.dumps({"collections": ["sentinel-2-l2a"], "limit": 2}),)
                            ).fetchone()
        assert found is not None and len(found[0]["features"]) == 2
    with _admin(stac_server) as admin:
        assert admin.execute("SELECT count(*) FROM pgstac.items").fetchone() == n_items
    status, _, body = _raw(url, b"/search?collections=sentinel-1-rtc&limit=3")
    assert status == 200 and len(json.loads(body)["features"]) == 3


@pytest.mark.parametrize("content", ['{"url": "http://127.0.0.1:1", "pid": "abc"}',
                                     '{"url": 5, "pid": 1}', '{"url": "x", "pid": -1}',
                                     '[1, 2]', '{"url": "x", "pid": true}', "{not json"])
def test_a_damaged_server_file_reads_as_no_server(tmp_path: Path, content: str) -> None:
    from geoflow.archive.server import running_server

    (tmp_path / "server.json").write_text(content)
    assert running_server(tmp_path) is None
    assert not stop_server(tmp_path)


def test_passwords_are_not_in_argv_or_logs(stac_server: ArchiveServer) -> None:
    state = _state(stac_server.cluster)
    secrets_ = [state["password"].encode(),
                _api_credentials(stac_server)["GEOFLOW_PG_PASSWORD"].encode()]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or []).encode()
        assert not any(s in cmd for s in secrets_), proc.pid
    logs = [p for p in stac_server.cluster.iterdir() if p.suffix == ".log"]
    logs += [stac_server.archive / "server.json"]
    assert any(p.name == "postgres.log" for p in logs)
    for path in logs:
        if path.is_file():
            text = path.read_bytes()
            assert not any(s in text for s in secrets_), path


# --------------------------------------------------------------------------- SIGKILL


@pytest.fixture(scope="module")
def killable(small_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An archive of its own (same items, assets linked) whose servers these tests kill."""
    dst = tmp_path_factory.mktemp("killable") / "copy"
    shutil.copytree(small_archive, dst, ignore=shutil.ignore_patterns("db", "server.json",
                                                                      "assets"))
    (dst / "assets").symlink_to(small_archive / "assets", target_is_directory=True)
    yield dst
    with contextlib.suppress(Exception):
        stop_server(dst)
    cluster = cluster_dir(dst)
    pid = _postmaster_pid(cluster)
    if pid is not None:  # a failed test left it: do not leave it to the rest of the session
        os.kill(pid, signal.SIGQUIT)
        _wait_for(lambda: not _alive(pid), 10)
    shutil.rmtree(cluster, ignore_errors=True)


def _serve(archive: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "geoflow.cli", "archive", "serve",
                             str(archive)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)


def _assert_all_stopped(cluster: Path, archive: Path, pg: int | None, url: str | None,
                        timeout: float = 8.0) -> float:
    t0 = time.monotonic()

    def stopped() -> bool:
        return ((pg is None or not _alive(pg)) and _postmaster_pid(cluster) is None
                and not _http_procs(archive) and (url is None or _port_closed(url)))

    assert _wait_for(stopped, timeout), (
        f"still running {timeout} s after the kill: postgres {_postmaster_pid(cluster)}, "
        f"http {[p.pid for p in _http_procs(archive)]}")
    return time.monotonic() - t0


@pytest.mark.slow  # starts a server of its own (the first one creates its database)
def test_sigkilled_serve_stops_postgres_and_http(killable: Path) -> None:
    proc = _serve(killable)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "http://127.0.0.1:" in line, line
        url = line.split()[2]
        cluster = cluster_dir(killable)
        pg = _postmaster_pid(cluster)
        assert pg is not None and _http_procs(killable)
    finally:
        proc.kill()
        proc.wait()
    took = _assert_all_stopped(cluster, killable, pg, url)
    assert took < 5.0, f"stopping took {took:.1f} s"


@pytest.mark.slow  # starts a server of its own (the first one creates its database)
def test_sigkilled_detached_supervisor_stops_postgres_and_http(killable: Path) -> None:
    url = ensure_server(killable)
    cluster = cluster_dir(killable)
    supervisor = int(json.loads((killable / "server.json").read_text())["pid"])
    assert "supervise" in " ".join(psutil.Process(supervisor).cmdline())
    pg = _postmaster_pid(cluster)
    assert pg is not None
    os.kill(supervisor, signal.SIGKILL)
    took = _assert_all_stopped(cluster, killable, pg, url)
    assert took < 5.0, f"stopping took {took:.1f} s"
    assert not stop_server(killable)  # nothing left to stop; the stale server.json goes


@pytest.mark.slow  # a database reload (migrate, load), killed half way
def test_sigkill_while_loading_stops_postgres(killable: Path) -> None:
    # Before the HTTP server exists only the watchdog can stop PostgreSQL.
    cluster = cluster_dir(killable)
    if (cluster / "state.json").exists():  # force a reload: PostgreSQL runs a second or two
        state = _state(cluster)
        state.pop("fingerprint", None)
        (cluster / "state.json").write_text(json.dumps(state))
    proc = _serve(killable)
    try:
        assert _wait_for(lambda: _postmaster_pid(cluster) is not None or proc.poll() is not None,
                         60)
        pg = _postmaster_pid(cluster)
        assert pg is not None and not _http_procs(killable), "PostgreSQL did not start first"
    finally:
        proc.kill()
        proc.wait()
    took = _assert_all_stopped(cluster, killable, pg, None)
    assert took < 5.0, f"stopping took {took:.1f} s"
