"""Real catalogs' conventions, without the network: Earth Search's archive profile, a pystac
Client and bring-your-own items, and signing that lasts past a token's life.

The maps are compared variable by variable with the map of the generic archive's STAC API.
Signing is tested against a local asset server (tests/_signing_server.py) that issues tokens
living under a second and answers 403 after that.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _helpers import archive_items, centre_quarter

from geoflow import signing
from geoflow.catalog import CatalogSettings, scenes_from_items, search_scenes, split_catalogs
from geoflow.errors import CatalogError, strip_secrets
from geoflow.regional import classify_region
from geoflow.request import Request
from geoflow.retry import RetryPolicy

MAP_VARS = ("class", "confidence", "sar_weight", "cloud_fraction", "summary_class",
            "summary_confidence")
FAST = RetryPolicy(attempts=2, backoff_s=0.1)


def _same(a: Any, b: Any) -> None:
    for var in MAP_VARS:
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)


@pytest.fixture(scope="module")
def region(small_archive: Path) -> tuple[tuple[float, ...], str]:
    return centre_quarter(Path(small_archive))


@pytest.fixture(scope="module")
def model_path(models: tuple[str, str]) -> str:
    return models[0]


@pytest.fixture(scope="module")
def reference(region: Any, stac_url: str, client: Any, model_path: str) -> Any:
    """The map of the generic archive, searched through its STAC API."""
    bbox, dates = region
    return classify_region(bbox, dates, catalog=stac_url, client=client, model=model_path,
                           chunk_patches=2, retry=FAST, progress=False)


def test_pystac_client_and_items_give_the_same_map_as_the_url(
        reference: Any, region: Any, stac_url: str, client: Any, model_path: str,
        tmp_path: Path) -> None:
    from pystac_client import Client

    from geoflow.reprocess import reprocess

    bbox, dates = region
    stac = Client.open(stac_url)
    by_client = classify_region(bbox, dates, catalog=stac, client=client, model=model_path,
                                chunk_patches=2, retry=FAST, progress=False)
    _same(by_client, reference)
    # A notebook user's own search (pystac Items, migrated to STAC 1.1: proj:code).
    found = stac.search(collections=["sentinel-2-l2a", "sentinel-1-rtc"], bbox=list(bbox),
                        datetime=dates).item_collection()
    by_items = classify_region(bbox, dates, items=found, client=client, model=model_path,
                               chunk_patches=2, retry=FAST, progress=False,
                               out=str(tmp_path / "items.zarr"))
    _same(by_items, reference)
    assert by_items.attrs["stac_inputs"] == reference.attrs["stac_inputs"]
    # The items' root links say where they came from: a reprocess fetches them there,
    # without being told the catalog.
    assert by_items.attrs["stac_catalog"] == reference.attrs["stac_catalog"]
    again = reprocess(tmp_path / "items.zarr", model=model_path, out=tmp_path / "again.zarr",
                      client=client, retry=FAST, progress=False)
    _same(again, reference)
    assert again.attrs["stac_inputs"] == reference.attrs["stac_inputs"]


def test_earth_search_archive_gives_the_same_map(
        reference: Any, region: Any, stac_url: str, client: Any, model_path: str,
        tmp_path: Path) -> None:
    from geoflow.cli import main as cli_main

    es = tmp_path / "es"
    assert cli_main(["archive", "create", str(es), "--size", "small", "--profile",
                     "earth-search", "--json"]) in (0, None)
    first = json.loads((es / "items" / "sentinel-2-l2a.ndjson").read_text().splitlines()[0])
    assert {"blue", "rededge1", "nir08", "swir22", "scl"} <= set(first["assets"])
    assert first["properties"]["earthsearch:boa_offset_applied"] is False
    assert first["assets"]["red"]["raster:bands"][0]["offset"] == pytest.approx(-0.1)
    items = archive_items(es, es.as_uri())
    scenes = scenes_from_items(items)
    # Told apart by collection, profile guessed from the Earth Search property, offset
    # taken once from raster:bands (-0.1 / 0.0001 = -1000 DN).
    assert {i["properties"]["geoflow:profile"] for i in scenes.s2} == {"earth-search"}
    assert {i["properties"]["geoflow:offset"] for i in scenes.s2} == {-1000.0}
    assert len(scenes.s1) == 5
    # Served by the real STAC API: Sentinel-2 read with Earth Search's conventions (the
    # profile named, the host being 127.0.0.1), Sentinel-1 RTC from the generic archive.
    from geoflow.archive.server import serve_archive

    bbox, dates = region
    with serve_archive(es) as srv:
        ds = classify_region(bbox, dates, catalog={"s2": srv.url, "s1": stac_url},
                             profile="earth-search", client=client, model=model_path,
                             chunk_patches=2, retry=FAST, progress=False)
    _same(ds, reference)
    assert ds.attrs["stac_catalog"]["profile"] == "earth-search"
    assert ds.attrs["stac_catalog"]["s1_profile"] == "generic"


def test_earth_search_sentinel1_is_refused_with_the_way_out() -> None:
    with pytest.raises(CatalogError, match="GRD") as err:
        CatalogSettings("https://earth-search.aws.element84.com/v1")
    assert "--s1-catalog" in str(err.value) and "planetarycomputer" in str(err.value)
    grd = {"id": "S1A_GRD", "collection": "sentinel-1-grd",
           "properties": {"sar:product_type": "GRD", "proj:epsg": 32632}, "assets": {}}
    s2 = {"id": "S2", "collection": "sentinel-2-l2a", "properties": {"proj:epsg": 32632},
          "assets": {b: {"href": f"file:///{b}.tif"} for b in (
              "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL")}}
    with pytest.raises(CatalogError, match="GRD"):
        scenes_from_items([s2, grd])
    # Earth Search asked for Sentinel-1: refused at once, never "S2 only" then a failure.
    with pytest.raises(CatalogError, match="cannot be the Sentinel-1 catalog"):
        split_catalogs({"s2": "https://planetarycomputer.microsoft.com/api/stac/v1",
                        "s1": "https://earth-search.aws.element84.com/v1"})


def test_cli_search_refuses_earth_search_sentinel1_asked_for(
        capsys: pytest.CaptureFixture[str]) -> None:
    from geoflow.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_:
        cli_main(["search", "--catalog", "https://earth-search.aws.element84.com/v1",
                  "--s1-collection", "sentinel-1-grd", "--bbox", "11.0,45.0,11.01,45.01",
                  "--dates", "2024-06-01/2024-06-30", "--json"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "GRD" in err and "--s1-catalog" in err


def test_one_catalog_per_sensor(stac_url: str, region: Any) -> None:
    bbox, dates = region
    request = Request.from_user(bbox, dates)
    both = search_scenes(request, stac_url)
    split = search_scenes(request, {"s2": stac_url, "s1": CatalogSettings(
        stac_url, s2_collection=None)})
    assert split.ids == both.ids
    assert split.s1_settings is not None and split.settings.s1_collection is None


def test_signing_lasts_past_the_token_life(region: Any, small_archive: Path,
                                           model_path: str, reference: Any,
                                           tmp_path: Path) -> None:
    from _signing_server import SigningServer

    from geoflow._cluster import close_local_cluster, gdal_settings, new_local_cluster

    ttl = 0.6
    # Worker processes, as in a real deployment: the signer travels pickled in the task spec,
    # and each worker keeps its own token cache.
    cluster, cl = new_local_cluster(2, gdal_settings())
    try:
        cl.run(signing.reset)
        # Tokens honoured for 0.6 s but announced for 1 s (a clock that disagrees): the signer
        # renews them before the announced expiry, and meets the rest as HTTP 403, re-signing
        # with a new token.
        with SigningServer(Path(small_archive), ttl_s=ttl, announce_s=1.0) as srv:
            signer = signing.SasTokenSigner(f"{srv.url}/token", hosts=(srv.host,),
                                            margin_s=0.2)
            items = archive_items(Path(small_archive), srv.url)

            def slow(event: dict[str, Any]) -> None:
                time.sleep(0.08)  # keep the run longer than the token's life

            bbox, dates = region
            out = tmp_path / "signed.zarr"
            t0 = time.perf_counter()
            ds = classify_region(bbox, dates, items=items, signer=signer, client=cl,
                                 model=model_path, chunk_patches=2, retry=FAST, progress=slow,
                                 out=str(out))
            took = time.perf_counter() - t0
            counts = dict(srv.counts)
        per_worker = cl.run(signing.stats)
    finally:
        close_local_cluster(cluster, cl)
    resigned = sum(s["resigned"] for s in per_worker.values())
    print(f"run {took:.1f} s, {ds.attrs['run']['chunks_computed']} chunks, server {counts}, "
          f"workers {per_worker}")
    assert took > 2 * ttl
    assert ds.attrs["run"]["failures"] == {}
    _same(ds, reference)
    assert counts["tokens"] >= 2 and counts["forbidden"] >= 1 and resigned >= 1
    # No signature reaches the store or its STAC item.
    written = "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*")
                      if p.is_file() and p.suffix in ("", ".json"))
    assert "stac_inputs" in written and "sig=" not in written and "se=" not in written


def test_secrets_never_reach_the_store_or_its_stac_item(
        region: Any, stac_url: str, client: Any, model_path: str, tmp_path: Path) -> None:
    bbox, dates = region
    url = stac_url.replace("http://", "http://ann:s3cret@")
    out = tmp_path / "m.zarr"
    classify_region(bbox, dates, catalog=url, client=client, model=model_path,
                    chunk_patches=4, retry=FAST, progress=False, out=str(out))
    written = "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*")
                      if p.is_file() and p.suffix in ("", ".json"))
    assert "stac_catalog" in written and "s3cret" not in written and "ann:" not in written
    assert strip_secrets(f"see {url}/search") == f"see {stac_url}/search"
    shown = repr(CatalogSettings(url, headers={"Ocp-Apim-Subscription-Key": "KEY"}))
    assert "s3cret" not in shown and "KEY" not in shown and stac_url in shown


def test_planetary_computer_signer_uses_the_package_and_its_token_endpoint(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("planetary_computer")
    from _signing_server import SigningServer
    from planetary_computer import settings

    with SigningServer(tmp_path, ttl_s=600) as srv:
        # The SDK asks {PC_SDK_SAS_URL}/{account}/{container}; the test server answers any
        # path ending in /token, so point the SDK there.
        monkeypatch.setenv("PC_SDK_SAS_URL", f"{srv.url}/token?x=")
        settings.Settings.get.cache_clear()
        try:
            signing.reset()
            pc = signing.PlanetaryComputerSigner()
            href = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/a/B04.tif"
            signed = pc.sign(href)
            again = pc.sign(href)
            fresh = pc.sign(href, refresh=True)
        finally:
            settings.Settings.get.cache_clear()
    assert signed.startswith(href + "?st=") and "&sig=" in signed
    assert again == signed  # cached until shortly before expiry
    assert fresh != signed and srv.counts["tokens"] == 2
    assert pc.sign("https://example.org/x.tif") == "https://example.org/x.tif"
    assert strip_secrets(signed) == href


def test_cli_search_takes_a_profile_and_a_sentinel1_catalog(
        stac_url: str, region: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from geoflow.cli import main as cli_main

    bbox, dates = region
    args = ["search", "--catalog", stac_url, "--bbox", ",".join(map(str, bbox)), "--dates",
            dates, "--json"]
    assert cli_main([*args, "--s1-catalog", stac_url, "--profile", "generic"]) in (0, None)
    rows = json.loads(capsys.readouterr().out)
    assert {r["sensor"] for r in rows} == {"S1", "S2"}
    # The archive's items have Planetary Computer's keys: the Earth Search profile says so.
    with pytest.raises(SystemExit) as exit_:
        cli_main([*args, "--profile", "earth-search"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "lacks assets" in err and "B02 (blue)" in err


def test_a_signature_that_keeps_failing_fails_its_chunks_without_leaking_it(
        region: Any, small_archive: Path, client: Any, model_path: str, tmp_path: Path) -> None:
    from _signing_server import SigningServer

    from geoflow.errors import RunFailedError

    signing.reset()
    # Every token is born expired: each open is refused, re-signed once, refused again.
    with SigningServer(Path(small_archive), ttl_s=-1.0, announce_s=30.0) as srv:
        signer = signing.SasTokenSigner(f"{srv.url}/token", hosts=(srv.host,))
        bbox, dates = region
        out = tmp_path / "refused.zarr"
        with pytest.raises(RunFailedError) as err:
            classify_region(bbox, dates, items=archive_items(Path(small_archive), srv.url),
                            signer=signer, client=client, model=model_path, chunk_patches=8,
                            retry=FAST, progress=False, out=str(out))
    assert "403" in str(err.value) and err.value.failures
    assert signing.stats()["resigned"] >= 1
    written = "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*")
                      if p.is_file() and p.suffix in ("", ".json"))
    for text in (str(err.value), *err.value.failures.values(), written):
        assert "sig=" not in text and "se=" not in text


def test_the_default_catalog_from_the_environment_gets_its_profile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("planetary_computer")
    from geoflow import session
    from geoflow.catalog import split_catalogs

    monkeypatch.setenv("GEOFLOW_STAC_URL", "https://planetarycomputer.microsoft.com/api/stac/v1")
    cats = split_catalogs(session.get_catalog(None))
    assert cats["s2"].profile_name == "planetary-computer"
    assert isinstance(cats["s2"].href_signer(), signing.PlanetaryComputerSigner)
    monkeypatch.setenv("GEOFLOW_STAC_URL", "https://earth-search.aws.element84.com/v1")
    cats = split_catalogs(session.get_catalog(None))
    assert cats["s2"].profile_name == "earth-search" and cats["s2"].s1_collection is None
    assert cats["s2"].href_signer() is None


def test_reprocess_fetches_from_the_recorded_catalogs() -> None:
    from geoflow.reprocess import _pinned_catalog

    attrs = {"stac_catalog": {"url": "https://earth-search.aws.element84.com/v1",
                              "s2_collection": "sentinel-2-l2a", "profile": "earth-search",
                              "s1_url": "https://planetarycomputer.microsoft.com/api/stac/v1",
                              "s1_collection": "sentinel-1-rtc",
                              "s1_profile": "planetary-computer"}}
    cats = _pinned_catalog(attrs, None)
    assert cats["s2"].profile_name == "earth-search" and cats["s2"].s1_collection is None
    assert cats["s1"].profile_name == "planetary-computer"
    assert cats["s1"].s1_collection == "sentinel-1-rtc"


def test_stackstac_reads_are_signed_too(region: Any, small_archive: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from _signing_server import SigningServer

    from geoflow.cube import build_cube
    from geoflow.grid import GridSpec

    bbox, _ = region
    w, s, e, n = bbox
    grid = GridSpec.from_bbox((w, s, (w + e) / 2, (s + n) / 2), align=32)
    archive = Path(small_archive)
    local = scenes_from_items(archive_items(archive, archive.as_uri()))
    expected = build_cube(local, grid).compute(scheduler="sync")
    monkeypatch.setenv("GEOFLOW_CUBE_READER", "stackstac")  # the general (warped) reader
    signing.reset()
    with SigningServer(Path(small_archive), ttl_s=60.0) as srv:
        remote = scenes_from_items(archive_items(Path(small_archive), srv.url), signer=(
            signing.SasTokenSigner(f"{srv.url}/token", hosts=(srv.host,))))
        with signing.activated(remote.signers):
            got = build_cube(remote, grid).compute(scheduler="sync")
        assert srv.counts["served"] > 0 and srv.counts["forbidden"] == 0
    for var in ("reflectance", "scl", "sar"):
        np.testing.assert_allclose(got[var].values, expected[var].values, rtol=0, atol=1e-6,
                                   err_msg=var)


def test_a_refused_token_is_fetched_once_however_many_threads_were_refused(
        tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from _signing_server import SigningServer

    signing.reset()
    try:
        with SigningServer(tmp_path, ttl_s=600) as srv:
            signer = signing.SasTokenSigner(f"{srv.url}/token", hosts=(srv.host,))
            href = f"{srv.url}/a.tif"
            refused = signer.sign(href)
            with signing.activated((signer,)):
                # Eight readers refused with the same token: one new token, shared by all.
                with ThreadPoolExecutor(8) as pool:
                    urls = set(pool.map(lambda _: signing._resign(href, refused), range(8)))
                assert srv.counts["tokens"] == 2
                assert len(urls) == 1 and urls != {refused}
                # Refused again with the new token: a new one is fetched.
                signing._resign(href, urls.pop())
                assert srv.counts["tokens"] == 3
    finally:
        signing.reset()


class _NoPeekSigner:
    """A signer without the optional peek; counts its sign calls."""

    def __init__(self) -> None:
        self.calls = 0

    def sign(self, href: str, refresh: bool = False) -> str:
        self.calls += 1
        return href + "?sig=x" if "owned.example.org" in href else href


def test_signers_merge_across_runs_and_a_cached_read_never_signs() -> None:
    from types import SimpleNamespace

    signing.reset()
    try:
        pc = signing.SasTokenSigner("http://127.0.0.1:9/token", hosts=("pc.example.org",))
        other = _NoPeekSigner()
        with signing.activated((pc,)):
            # Tasks of a second run on the same worker: both runs' signers are active.
            with signing.activated((other,)), signing.activated((pc,)):
                assert signing._ACTIVE[0] == (pc, other)
                assert signing.sign("https://owned.example.org/a.tif").endswith("?sig=x")
                calls = other.calls
                # A kept-open dataset: the peek-less signer is never asked (sign may be a
                # request); the 403 path re-signs if it was stale.
                src = SimpleNamespace(geoflow_signed="https://owned.example.org/a.tif?sig=x")
                assert signing.current(src, "https://owned.example.org/a.tif") is True
                assert other.calls == calls
            # The second run's tasks ended: its signer is gone, the first run's stays.
            assert signing._ACTIVE[0] == (pc,)
        assert signing._ACTIVE[0] == ()
    finally:
        signing.reset()


def test_a_token_endpoint_that_fails_is_retried_like_a_read() -> None:
    """A failed token request is transient (an OSError, never a GeoflowError): the read's
    retry policy tries again on either reader, and the message keeps no secret."""
    from geoflow.retry import ChunkFailure, attempt

    signing.reset()
    signer = signing.SasTokenSigner("http://127.0.0.1:9/token", hosts=("pc.example.org",),
                                    timeout_s=2.0)
    calls: list[int] = []

    def sign() -> str:
        calls.append(1)
        return signer.sign("https://pc.example.org/c/b04.tif?sig=OLD")

    with pytest.raises(ChunkFailure, match="getting a signing token") as err:
        attempt(sign, "reading the cube", RetryPolicy(attempts=3, backoff_s=0))
    assert len(calls) == 3 and isinstance(err.value.__cause__, signing.TokenFetchError)
    assert "sig=OLD" not in str(err.value)
