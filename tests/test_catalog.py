"""STAC search against the real served archive: exact results, retries, clear errors."""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from geoflow.catalog import CatalogSettings, SceneSet, search_scenes
from geoflow.cli import main as cli_main
from geoflow.errors import CatalogError, NoScenesError, UnknownCollectionError, strip_secrets
from geoflow.request import Request
from geoflow.retry import RetryPolicy

S2, S1 = "sentinel-2-l2a", "sentinel-1-rtc"


# --------------------------------------------------------------------------- expectations


def _items(archive: Path, collection: str) -> list[dict[str, Any]]:
    lines = (archive / "items" / f"{collection}.ndjson").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _segments_cross(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float],
                    s: tuple[float, float]) -> bool:
    def orient(a: Any, b: Any, c: Any) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    d1, d2, d3, d4 = orient(r, s, p), orient(r, s, q), orient(p, q, r), orient(p, q, s)
    return d1 * d2 <= 0 and d3 * d4 <= 0


def _inside(pt: tuple[float, float], ring: list[tuple[float, float]]) -> bool:
    x, y, inside = pt[0], pt[1], False
    for (x1, y1), (x2, y2) in itertools.pairwise(ring):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _intersects(geometry: dict[str, Any], bbox: tuple[float, float, float, float]) -> bool:
    """Whether a (single-ring) polygon intersects a lon/lat box: what the server computes."""
    assert geometry["type"] == "Polygon"
    ring = [tuple(p) for p in geometry["coordinates"][0]]
    w, s, e, n = bbox
    box = [(w, s), (e, s), (e, n), (w, n), (w, s)]
    if any(w <= x <= e and s <= y <= n for x, y in ring):
        return True
    if any(_inside(c, ring) for c in box[:4]):
        return True
    return any(_segments_cross(a, b, c, d) for a, b in itertools.pairwise(ring)
               for c, d in itertools.pairwise(box))


def _expected(archive: Path, collection: str, request: Request) -> list[str]:
    out = []
    for item in _items(archive, collection):
        when = pd.Timestamp(item["properties"]["datetime"])
        if not request.start <= when <= request.end:
            continue
        if not _intersects(item["geometry"], request.bbox):
            continue
        cloud = item["properties"].get("eo:cloud_cover")
        if collection == S2 and request.max_cloud is not None and cloud > request.max_cloud:
            continue
        out.append(item["id"])
    return sorted(out)


def _info(archive: Path) -> dict[str, Any]:
    return json.loads((archive / "archive.json").read_text())  # type: ignore[no-any-return]


def _requests(archive: Path) -> dict[str, Request]:
    """Requests that cut the archive in different ways (all computed from its files)."""
    info = _info(archive)
    w, s, e, n = info["bbox"]
    start, end = info["datetime"].split("/")
    s2 = _items(archive, S2)
    clouds = sorted(i["properties"]["eo:cloud_cover"] for i in s2)
    days = sorted({i["properties"]["datetime"][:10] for i in s2})
    west_tile = min(s2, key=lambda i: i["bbox"][0])["bbox"]
    east_tile = max(s2, key=lambda i: i["bbox"][2])["bbox"]
    # Adjacent UTM tiles overlap a little in lon/lat: a sliver there tests geometry, not bbox.
    overlap_w, overlap_e = east_tile[0], west_tile[2]
    mid_lat = (s + n) / 2
    return {
        "everything": Request((w, s, e, n), start, end),
        "west_interior": Request((west_tile[0] + 0.002, mid_lat - 0.002,
                                  west_tile[0] + 0.004, mid_lat + 0.002), start, end),
        "tile_overlap": Request((overlap_w + 0.1 * (overlap_e - overlap_w), mid_lat,
                                 overlap_w + 0.9 * (overlap_e - overlap_w), mid_lat + 0.001),
                                start, end),
        "two_days": Request.from_user((w, s, e, n), f"{days[1]}/{days[2]}"),
        "cloud_limit_exact": Request((w, s, e, n), start, end, max_cloud=clouds[len(clouds) // 2]),
        "cloud_limit_zero": Request((w, s, e, n), start, end, max_cloud=clouds[0]),
    }


@pytest.fixture(scope="module")
def requests_(small_archive: Path) -> dict[str, Request]:
    return _requests(small_archive)


@pytest.mark.parametrize("name", ["everything", "west_interior", "tile_overlap", "two_days",
                                  "cloud_limit_exact", "cloud_limit_zero"])
def test_search_returns_exactly_the_expected_items(name: str, requests_: dict[str, Request],
                                                   small_archive: Path, stac_url: str) -> None:
    request = requests_[name]
    expected_s2 = _expected(small_archive, S2, request)
    expected_s1 = _expected(small_archive, S1, request)
    assert expected_s2 and expected_s1, "the test request must find something"
    scenes = search_scenes(request, stac_url)
    assert sorted(i["id"] for i in scenes.s2) == expected_s2
    assert sorted(i["id"] for i in scenes.s1) == expected_s1
    for items in (scenes.s2, scenes.s1):
        times = [i["properties"]["datetime"] for i in items]
        assert times == sorted(times)


def test_requests_cut_the_archive(requests_: dict[str, Request], small_archive: Path) -> None:
    # The cases above are only worth something if they select different subsets.
    everything = _expected(small_archive, S2, requests_["everything"])
    for name in ("west_interior", "two_days", "cloud_limit_exact", "cloud_limit_zero"):
        assert 0 < len(_expected(small_archive, S2, requests_[name])) < len(everything), name


def test_items_are_raw_dicts_with_proj_epsg_and_http_assets(requests_: dict[str, Request],
                                                            stac_url: str) -> None:
    scenes = search_scenes(requests_["two_days"], stac_url)
    item = scenes.s2[0]
    assert isinstance(item, dict)
    assert isinstance(item["properties"]["proj:epsg"], int)  # what stackstac reads
    assert all(a["href"].startswith(stac_url + "/assets/") for a in item["assets"].values())


def test_pinned_items_are_fetched_with_one_client_per_catalog(
        requests_: dict[str, Request], stac_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import geoflow.catalog as catalog_mod
    from geoflow.catalog import fetch_scenes

    scenes = search_scenes(requests_["two_days"], stac_url)
    opened: list[str] = []
    real_open = catalog_mod._open_client

    def counting_open(call: Any) -> Any:
        opened.append(call.settings.url)
        return real_open(call)

    monkeypatch.setattr(catalog_mod, "_open_client", counting_open)
    again = fetch_scenes(stac_url, scenes.ids["S2"], scenes.ids["S1"])
    assert again.ids == scenes.ids and scenes.ids["S1"]
    assert opened == [stac_url]  # one catalog serves both sensors: opened once


def test_summary_rows(requests_: dict[str, Request], stac_url: str) -> None:
    scenes = search_scenes(requests_["everything"], stac_url)
    rows = scenes.summary()
    assert len(rows) == len(scenes) == len(scenes.s2) + len(scenes.s1)
    assert [r["datetime"] for r in rows] == sorted(r["datetime"] for r in rows)
    by_id = {i["id"]: i for i in scenes.s2}
    for row in rows:
        if row["sensor"] == "S2":
            assert row["cloud_cover"] == by_id[row["id"]]["properties"]["eo:cloud_cover"]
        else:
            assert row["sensor"] == "S1" and row["cloud_cover"] is None


# --------------------------------------------------------------------------- errors


def test_unknown_collection_lists_the_available_ones(requests_: dict[str, Request],
                                                     stac_url: str) -> None:
    settings = CatalogSettings(stac_url, s2_collection="sentinel-2-l1c")
    with pytest.raises(UnknownCollectionError) as err:
        search_scenes(requests_["everything"], settings)
    msg = str(err.value)
    assert "'sentinel-2-l1c'" in msg and S2 in msg and S1 in msg


def test_no_scenes_names_collection_bbox_and_dates(small_archive: Path, stac_url: str) -> None:
    w, s, e, n = _info(small_archive)["bbox"]
    request = Request.from_user((w, s, e, n), "2019-01-01/2019-01-31")
    with pytest.raises(NoScenesError) as err:
        search_scenes(request, stac_url)
    msg = str(err.value)
    assert S2 in msg and "2019-01-01" in msg and "2019-01-31" in msg and f"{w}" in msg
    # Far away: nothing either.
    with pytest.raises(NoScenesError, match="bbox"):
        search_scenes(Request.from_user("-60,-10,-59.9,-9.9", "2025-06-01/2025-06-30"), stac_url)


def test_no_scenes_under_the_cloud_limit_says_so(small_archive: Path, stac_url: str) -> None:
    info = _info(small_archive)
    by_day: dict[str, list[float]] = {}
    for item in _items(small_archive, S2):
        props = item["properties"]
        by_day.setdefault(props["datetime"][:10], []).append(props["eo:cloud_cover"])
    day, clouds = max(by_day.items(), key=lambda kv: min(kv[1]))
    assert min(clouds) > 0
    request = Request.from_user(info["bbox"], f"{day}/{day}", max_cloud=min(clouds) / 2)
    with pytest.raises(NoScenesError, match=f"{S2} scenes with cloud cover <= .*{day}"):
        search_scenes(request, stac_url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_api_names_the_url(requests_: dict[str, Request]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(CatalogError) as err:
        search_scenes(requests_["everything"], CatalogSettings(url),
                      retry=RetryPolicy(attempts=2, backoff_s=0.01, timeout_s=2))
    assert url in str(err.value) and "connection refused" in str(err.value)
    assert time.perf_counter() - t0 < 10


def test_static_catalog_is_not_an_api(tmp_path: Path, requests_: dict[str, Request]) -> None:
    import functools
    from http.server import SimpleHTTPRequestHandler

    (tmp_path / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "static", "description": "files",
        "links": []}))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/catalog.json"
        with pytest.raises(CatalogError, match="without item search"):
            search_scenes(requests_["everything"], CatalogSettings(url),
                          retry=RetryPolicy(attempts=1))
    finally:
        server.shutdown()
        server.server_close()


def test_bad_settings_are_clear() -> None:
    with pytest.raises(CatalogError, match="not an http"):
        CatalogSettings("ftp://example.org/stac")
    with pytest.raises(CatalogError, match="unknown signer"):
        CatalogSettings("http://127.0.0.1:1", signer="aws")


# --------------------------------------------------------------------------- signing, tokens


class _Suffix:
    """A picklable HrefSigner that appends a fixed signature."""

    def sign(self, href: str, refresh: bool = False) -> str:
        return href + "?se=2030&sig=SECRET"


def test_items_stay_unsigned_and_carry_the_signer(requests_: dict[str, Request],
                                                  stac_url: str) -> None:
    signer = _Suffix()
    scenes = search_scenes(requests_["two_days"], CatalogSettings(stac_url, signer=signer))
    hrefs = [a["href"] for i in scenes.s2 + scenes.s1 for a in i["assets"].values()]
    # Signing happens on the workers just before a read, never in the items.
    assert hrefs and not any("sig=" in h for h in hrefs)
    assert scenes.signers == (signer,)
    assert {i["properties"]["geoflow:profile"] for i in scenes.s2} == {"generic"}


class _LeakySigner:
    """A third-party signer whose failure is a plain RuntimeError quoting a signed URL."""

    def sign(self, href: str, refresh: bool = False) -> str:
        if "/sentinel-2-l2a/" in href or "S2" in href:
            raise RuntimeError(f"token service refused {href}?sig=SECRET&se=2030 (sig=SECRET)")
        return href


def test_signer_errors_do_not_leak_tokens(small_archive: Path, models: tuple[str, str],
                                          client: Any, tmp_path: Path) -> None:
    from _helpers import archive_items, centre_quarter

    from geoflow.errors import RunFailedError
    from geoflow.regional import classify_region

    # A real read whose signer raises a plain RuntimeError with the signature in it.
    archive = Path(small_archive)
    items = archive_items(archive, archive.as_uri())
    bbox, dates = centre_quarter(archive)
    out = tmp_path / "leak.zarr"
    with pytest.raises(RunFailedError) as failed:
        classify_region(bbox, dates, items=items, signer=_LeakySigner(), client=client,
                        model=models[0], chunk_patches=16, progress=False, out=str(out),
                        retry=RetryPolicy(attempts=1, backoff_s=0.0))
    reasons = list(failed.value.failures.values())
    assert reasons and all("token service refused" in r for r in reasons)  # the signer's
    written = "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*")
                      if p.is_file() and p.suffix in ("", ".json"))
    for text in (str(failed.value), *failed.value.failures.values(), written):
        assert "SECRET" not in text


def test_signer_and_profile_are_not_ignored_beside_a_catalog() -> None:
    from geoflow import classify_region
    from geoflow.catalog import split_catalogs
    from geoflow.errors import RequestError

    with pytest.raises(RequestError, match="signer= applies to items="):
        classify_region("11.0,45.0,11.01,45.01", "2024-06-01/2024-06-30",
                        catalog="http://127.0.0.1:9", signer="planetary-computer")
    ready = CatalogSettings("http://127.0.0.1:9")
    with pytest.raises(CatalogError, match="profile='earth-search' does not apply") as err:
        split_catalogs(ready, profile="earth-search")
    assert "CatalogSettings(url, profile='earth-search')" in err.value.hint
    with pytest.raises(CatalogError, match="does not apply"):
        split_catalogs({"s2": ready}, profile="earth-search")
    assert split_catalogs(ready, profile="generic")["s2"] is ready


def test_reprs_do_not_show_a_signer_endpoint() -> None:
    from geoflow.signing import SasTokenSigner

    signer = SasTokenSigner("https://u:pw@tok.example.com/token?code=SECRET",
                            hosts=("data.example.com",))
    settings = CatalogSettings("http://127.0.0.1:9", signer=signer)
    scenes = SceneSet(s2=[], s1=[], settings=settings, signers=(signer,))
    for text in (repr(signer), repr(settings), repr(scenes), str(scenes)):
        assert "SECRET" not in text and "pw" not in text and "tok.example.com" not in text
    assert "SasTokenSigner" in repr(settings) and "SasTokenSigner" in repr(scenes)


def test_strip_secrets_removes_tokens_from_urls() -> None:
    text = "GET https://a.b/c.tif?st=1&sig=XYZ#f and http://127.0.0.1:9/x?token=T failed"
    assert strip_secrets(text) == "GET https://a.b/c.tif and http://127.0.0.1:9/x failed"


def test_planetary_computer_signer_without_the_package_is_clear(
        requests_: dict[str, Request], stac_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # as if not installed
    with pytest.raises(CatalogError, match=r"pip install 'geoflow\[planetary-computer\]'"):
        search_scenes(requests_["two_days"],
                      CatalogSettings(stac_url, signer="planetary-computer"))


# --------------------------------------------------------------------------- retries


class _FlakyProxy:
    """A real reverse proxy on 127.0.0.1 that fails the first N matching requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.split("://", 1)[1]
        self.plan: list[tuple[str, int, float]] = []  # (path part, status or 0 = delay, secs)
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                step = proxy._next(self.path)
                if step is not None:
                    status, secs = step
                    if status:
                        self.send_response(status)
                        if status == 429:
                            self.send_header("Retry-After", "0")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    time.sleep(secs)  # too slow: the client times out and retries
                host, port = proxy.upstream.split(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("accept-encoding", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                try:
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.getheader("Content-Type") or "")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)
                conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail(self, part: str, status: int, times: int, secs: float = 0.0) -> None:
        with self.lock:
            self.plan = [(part, status, secs)] * times

    def _next(self, path: str) -> tuple[int, float] | None:
        with self.lock:
            for part in {p for p, _, _ in self.plan} | {"/search"}:
                if part in path:
                    self.seen[part] += 1
            for k, (part, status, secs) in enumerate(self.plan):
                if part in path:
                    del self.plan[k]
                    return status, secs
        return None


@pytest.fixture
def flaky(stac_url: str) -> Iterator[_FlakyProxy]:
    proxy = _FlakyProxy(stac_url)
    proxy.thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried_to_success(status: int, flaky: _FlakyProxy,
                                                 requests_: dict[str, Request],
                                                 stac_url: str) -> None:
    request = requests_["two_days"]
    direct = search_scenes(request, stac_url)
    flaky.fail("/search", status, times=2)
    via_proxy = search_scenes(request, flaky.url, retry=RetryPolicy(attempts=4, backoff_s=0.01))
    assert via_proxy.ids == direct.ids
    assert flaky.plan == []  # both failures were served, and retried past
    assert flaky.seen["/search"] == 2 + 2  # two failed + one good search per collection


def test_timeouts_are_retried_to_success(flaky: _FlakyProxy, requests_: dict[str, Request],
                                         stac_url: str) -> None:
    request = requests_["two_days"]
    flaky.fail("/search", 0, times=1, secs=1.0)
    policy = RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=0.3)
    assert search_scenes(request, flaky.url, retry=policy).ids == \
        search_scenes(request, stac_url).ids


def test_persistent_errors_give_up_with_the_status(flaky: _FlakyProxy,
                                                   requests_: dict[str, Request]) -> None:
    flaky.fail("/search", 500, times=100)
    with pytest.raises(CatalogError, match="HTTP 500 after 2 retries") as err:
        search_scenes(requests_["two_days"], flaky.url,
                      retry=RetryPolicy(attempts=3, backoff_s=0.01))
    assert flaky.url in str(err.value)
    assert flaky.seen["/search"] == 3  # one try + two retries, then it gave up


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    """Run the geoflow command in-process; its exit status."""
    try:
        cli_main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def _bbox_dates(request: Request) -> tuple[str, str]:
    bbox = ",".join(repr(v) for v in request.bbox)
    return bbox, f"{request.start.date()}/{request.end.date()}"


def test_cli_search_json_lists_both_sensors(requests_: dict[str, Request], stac_url: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bbox, dates = _bbox_dates(requests_["two_days"])
    assert _cli(["search", "--catalog", stac_url, "--bbox", bbox, "--dates", dates,
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = search_scenes(Request.from_user(bbox, dates), stac_url).summary()
    assert rows == expected
    assert {r["sensor"] for r in rows} == {"S1", "S2"}


def test_cli_search_table_and_errors(requests_: dict[str, Request], stac_url: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bbox, dates = _bbox_dates(requests_["two_days"])
    assert _cli(["search", "--catalog", stac_url, "--bbox", bbox, "--dates", dates,
                 "--max-cloud", "100"]) == 0
    out = capsys.readouterr().out
    for row in search_scenes(Request.from_user(bbox, dates), stac_url).summary():
        assert row["id"][:20] in out
    assert _cli(["search", "--catalog", stac_url, "--bbox", bbox, "--dates", dates,
                 "--s1-collection", "nope"]) == 2
    assert "collection 'nope' does not exist" in capsys.readouterr().err


def test_sceneset_of_nothing() -> None:
    assert SceneSet(s2=[], s1=[]).summary() == []
