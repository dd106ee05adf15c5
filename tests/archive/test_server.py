"""The archive's STAC API: a real stac-fastapi-pgstac + PostgreSQL on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import rasterio
from rasterio.windows import Window

from geoflow.archive.server import (
    ArchiveServer,
    cluster_dir,
    ensure_server,
    running_server,
    serve_archive,
    stop_server,
)
from geoflow.errors import ArchiveError, ServerError

pytestmark = pytest.mark.server


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _items(archive: Path, collection: str) -> list[dict[str, Any]]:
    lines = (archive / "items" / f"{collection}.ndjson").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _collections(archive: Path) -> list[str]:
    return sorted(p.stem for p in (archive / "items").glob("*.ndjson"))


def _processes_of(cluster: Path) -> list[psutil.Process]:
    """Running postgres / uvicorn processes that belong to a cluster directory."""
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if str(cluster) in cmd:
            out.append(proc)
    return out


def _http_pid(cluster: Path) -> int:
    return int(json.loads((cluster / "state.json").read_text())["http_pid"])


def _port_closed(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def _wait_until(cond: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return bool(cond())


@pytest.fixture(scope="module")
def archive_copy(small_archive: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A second archive (same items, assets linked) that these tests may start and stop."""
    dst = tmp_path_factory.mktemp("served") / "copy"
    shutil.copytree(small_archive, dst, ignore=shutil.ignore_patterns("db", "server.json",
                                                                      "assets"))
    (dst / "assets").symlink_to(small_archive / "assets", target_is_directory=True)
    yield dst
    stop_server(dst)
    # Its database cluster may live outside tmp (/var/tmp/geoflow-pg): do not leave it there.
    shutil.rmtree(cluster_dir(dst), ignore_errors=True)


# --------------------------------------------------------------------------- the session server


def test_search_returns_every_loaded_item(stac_url: str, small_archive: Path) -> None:
    _, _, body = _get(f"{stac_url}/collections")
    served = sorted(c["id"] for c in json.loads(body)["collections"])
    assert served == _collections(small_archive)
    for collection in served:
        expected = {i["id"] for i in _items(small_archive, collection)}
        found = _post_json(f"{stac_url}/search", {"collections": [collection], "limit": 1000})
        assert {f["id"] for f in found["features"]} == expected


def test_asset_hrefs_are_local_http_urls(stac_url: str, small_archive: Path) -> None:
    for collection in _collections(small_archive):
        found = _post_json(f"{stac_url}/search", {"collections": [collection], "limit": 1000})
        for item in found["features"]:
            for asset in item["assets"].values():
                assert asset["href"].startswith(f"{stac_url}/assets/"), asset["href"]


def _first_asset(stac_url: str, small_archive: Path) -> tuple[str, Path]:
    raw = _items(small_archive, "sentinel-2-l2a")[0]
    key = "B04" if "B04" in raw["assets"] else next(iter(raw["assets"]))
    found = _post_json(f"{stac_url}/search", {"ids": [raw["id"]],
                                              "collections": ["sentinel-2-l2a"]})
    href = found["features"][0]["assets"][key]["href"]
    return href, small_archive / raw["assets"][key]["href"]


def test_assets_answer_range_requests(stac_url: str, small_archive: Path) -> None:
    href, local = _first_asset(stac_url, small_archive)
    data = local.read_bytes()
    status, headers, body = _get(href, {"Range": "bytes=100-1123"})
    assert status == 206
    assert headers["content-range"] == f"bytes 100-1123/{len(data)}"
    assert body == data[100:1124]


def test_assets_answer_every_range_form_like_an_object_store(stac_url: str,
                                                            small_archive: Path) -> None:
    href, local = _first_asset(stac_url, small_archive)
    data = local.read_bytes()
    n = len(data)
    status, headers, body = _get(href)
    assert (status, body, headers["content-length"]) == (200, data, str(n))
    assert headers["accept-ranges"] == "bytes"
    req = urllib.request.Request(href, method="HEAD")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert (resp.status, resp.headers["content-length"], resp.read()) == (200, str(n), b"")
    for rng, part in (("bytes=-100", data[-100:]), (f"bytes={n - 10}-", data[-10:]),
                      (f"bytes=5-{n + 1000}", data[5:])):
        status, headers, body = _get(href, {"Range": rng})
        assert (status, body) == (206, part), rng
        assert headers["content-range"] == f"bytes {n - len(part)}-{n - 1}/{n}", rng
    # Several ranges at once: a multipart answer (handed to Starlette).
    status, headers, body = _get(href, {"Range": "bytes=0-9,20-29"})
    assert status == 206 and headers["content-type"].startswith("multipart/byteranges")
    assert data[:10] in body and data[20:30] in body
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(href, {"Range": f"bytes={n + 5}-{n + 10}"})
    assert err.value.code == 416


def test_gdal_vsicurl_reads_the_same_values_as_disk(stac_url: str, small_archive: Path) -> None:
    href, local = _first_asset(stac_url, small_archive)
    with (rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"),
          rasterio.open(f"/vsicurl/{href}") as remote, rasterio.open(local) as disk):
        assert remote.profile["blockxsize"] == disk.profile["blockxsize"]
        win = Window(3, 5, min(64, disk.width - 3), min(48, disk.height - 5))
        np.testing.assert_array_equal(remote.read(1, window=win), disk.read(1, window=win))
        # An overview level, read through ranges too.
        if disk.overviews(1):
            f = disk.overviews(1)[0]
            shape = (disk.height // f, disk.width // f)
            np.testing.assert_array_equal(remote.read(1, out_shape=shape),
                                          disk.read(1, out_shape=shape))


def test_only_the_assets_folder_is_served(stac_url: str, small_archive: Path) -> None:
    # DIR/db holds the database password: nothing outside DIR/assets may be reachable.
    for path in ("/assets/../archive.json", "/assets/%2e%2e/archive.json", "/db/state.json",
                 "/archive.json", "/assets/%00/archive.json"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(stac_url + path)
        assert err.value.code == 404


def test_serving_an_archive_twice_is_refused(stac_server: ArchiveServer) -> None:
    with pytest.raises(ServerError, match="already being served") as err:
        serve_archive(stac_server.archive)
    assert stac_server.url in str(err.value)
    assert stac_server.alive()


def test_ensure_server_reuses_the_running_server(stac_server: ArchiveServer) -> None:
    assert ensure_server(stac_server.archive) == stac_server.url
    assert running_server(stac_server.archive) == stac_server.url


# --------------------------------------------------------------------------- clear errors


def test_missing_archive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"does not exist.*geoflow archive create"):
        serve_archive(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(ArchiveError, match="not a geoflow archive"):
        serve_archive(tmp_path / "half")


def test_busy_port_is_a_clear_error(archive_copy: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} .* in use"):
            serve_archive(archive_copy, port=port)
    cluster = cluster_dir(archive_copy)
    assert _processes_of(cluster) == []


def test_missing_postgresql_points_to_setup(archive_copy: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOFLOW_PG_BIN", str(tmp_path))
    with pytest.raises(ServerError, match=r"PostgreSQL is not installed.*deploy/local/setup\.sh"):
        serve_archive(archive_copy)


# --------------------------------------------------------------------------- start, stop, restart


@pytest.mark.slow  # a cold start (initdb, migrate, load) of its own, then a warm one
def test_start_stop_restart_and_nothing_left_running(archive_copy: Path) -> None:
    with serve_archive(archive_copy) as srv:
        url, cluster = srv.url, srv.cluster
        pg_pid = int((cluster / "pgdata" / "postmaster.pid").read_text().split()[0])
        http_pid = _http_pid(cluster)
        assert json.loads((archive_copy / "server.json").read_text())["url"] == url
        assert _get(url + "/")[0] == 200
    assert not psutil.pid_exists(http_pid) or psutil.Process(http_pid).status() == "zombie"
    assert not psutil.pid_exists(pg_pid) or psutil.Process(pg_pid).status() == "zombie"
    assert _processes_of(cluster) == []
    assert _port_closed(url)
    assert not (archive_copy / "server.json").exists()

    # Warm restart: same port when it is free, nothing to create or load again.
    t0 = time.perf_counter()
    with serve_archive(archive_copy) as again:
        warm = time.perf_counter() - t0
        assert again.url == url
        assert "initdb" not in again.timings and "load" not in again.timings
        found = _post_json(f"{again.url}/search", {"collections": ["sentinel-2-l2a"]})
        assert found["features"]
    assert warm < 10.0, f"warm restart took {warm:.1f} s"
    assert _processes_of(cluster) == []


def test_new_port_reloads_hrefs(archive_copy: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with serve_archive(archive_copy, port=port) as srv:
        assert srv.url == f"http://127.0.0.1:{port}"
        assert "load" in srv.timings
        found = _post_json(f"{srv.url}/search", {"collections": ["sentinel-1-rtc"]})
        hrefs = [a["href"] for f in found["features"] for a in f["assets"].values()]
        assert hrefs and all(h.startswith(f"{srv.url}/assets/") for h in hrefs)
        status, _, _ = _get(hrefs[0], {"Range": "bytes=0-15"})
        assert status == 206


@pytest.mark.slow
def test_killed_server_leaves_nothing_running(archive_copy: Path) -> None:
    # SIGKILL gives the server no chance to clean up: its watchdog process notices and stops
    # PostgreSQL and the HTTP server (test_server_hardening.py times it).
    code = ("import sys, time; from geoflow.archive.server import serve_archive\n"
            f"s = serve_archive({str(archive_copy)!r}); print(s.url, flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip() if proc.stdout else ""
        assert url.startswith("http://127.0.0.1:")
        cluster = cluster_dir(archive_copy)
        assert _processes_of(cluster)
    finally:
        proc.kill()
        proc.wait()
    assert _wait_until(lambda: _processes_of(cluster) == [], timeout=20)
    assert _port_closed(url)
    # And the next start cleans up after it without complaint.
    with serve_archive(archive_copy) as srv:
        assert _get(srv.url + "/")[0] == 200


def test_sigterm_stops_everything(archive_copy: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "geoflow.cli", "archive", "serve",
                             str(archive_copy)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "http://127.0.0.1:" in line
        cluster = cluster_dir(archive_copy)
        assert _processes_of(cluster)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _processes_of(cluster) == []


def test_ensure_server_starts_a_detached_server_and_stop_server_stops_it(
        archive_copy: Path) -> None:
    url = ensure_server(archive_copy)
    try:
        info = json.loads((archive_copy / "server.json").read_text())
        assert info["url"] == url and info["pid"] != os.getpid()
        assert ensure_server(archive_copy) == url  # reused, not a second server
        assert _get(url + "/")[0] == 200
    finally:
        assert stop_server(archive_copy)
    assert _processes_of(cluster_dir(archive_copy)) == []
    assert running_server(archive_copy) is None
    assert not stop_server(archive_copy)


@pytest.mark.slow  # three database rebuilds
def test_changed_items_are_reloaded_and_a_failed_start_stops_everything(
        archive_copy: Path) -> None:
    items = archive_copy / "items" / "sentinel-1-rtc.ndjson"
    original = items.read_text()
    lines = original.splitlines(keepends=True)
    dropped = json.loads(lines[-1])["id"]
    cluster = cluster_dir(archive_copy)
    try:
        # A broken item file: start fails half way (PostgreSQL is already up) and stops it.
        items.write_text("".join(lines[:-1]) + "{not json\n")
        with pytest.raises(ArchiveError, match=r"sentinel-1-rtc\.ndjson line \d+ is not JSON"):
            serve_archive(archive_copy)
        assert _processes_of(cluster) == []
        assert not (archive_copy / "server.json").exists()

        # Fixed, with one item fewer: the database is rebuilt, the item is gone.
        items.write_text("".join(lines[:-1]))
        with serve_archive(archive_copy) as srv:
            assert "load" in srv.timings
            found = _post_json(f"{srv.url}/search", {"collections": ["sentinel-1-rtc"],
                                                     "limit": 1000})
            assert dropped not in {f["id"] for f in found["features"]}
            assert len(found["features"]) == len(lines) - 1
    finally:
        items.write_text(original)
    with serve_archive(archive_copy) as srv:
        found = _post_json(f"{srv.url}/search", {"ids": [dropped]})
        assert [f["id"] for f in found["features"]] == [dropped]
    assert _processes_of(cluster) == []
