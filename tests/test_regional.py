"""classify_region on a real 2-worker LocalCluster against the real local STAC API.

Everything is real: the sample archive (small), pgstac + uvicorn, COGs read by GDAL over HTTP,
Dask worker processes, a Zarr store on disk. Faults are real too: SIGKILL of the client
process and of a worker process, and an HTTP proxy in front of the asset server that answers
500 for chosen assets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from _faulty_proxy import FaultyProxy
from _helpers import centre_quarter, kill_midway

from geoflow.retry import RetryPolicy

pytestmark = pytest.mark.server

CHUNK_PATCHES = 2
MAP_VARS = ("class", "confidence", "sar_weight", "cloud_fraction")
SUMMARY_VARS = ("summary_class", "summary_confidence")
LEDGER = "_geoflow_ledger"


# --------------------------------------------------------------------------- helpers
def _store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store except the ledger (which records timings), by relative path."""
    out = {}
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and not rel.startswith(LEDGER):
            out[rel] = f.read_bytes()
    return out


def _data_files(path: Path) -> dict[str, bytes]:
    """Array chunk files only (metadata carries the creation time)."""
    return {k: v for k, v in _store_files(path).items() if not k.endswith("zarr.json")}


def _assert_same_map(a: Path, b: Path) -> None:
    fa, fb = _data_files(a), _data_files(b)
    assert sorted(fa) == sorted(fb)
    different = [k for k in fa if fa[k] != fb[k]]
    assert not different, f"chunk files differ: {different[:5]}"
    da_, db_ = (_raw(p) for p in (a, b))
    for var in (*MAP_VARS, *SUMMARY_VARS):
        np.testing.assert_array_equal(da_[var].values, db_[var].values)


def _raw(path: Path) -> xr.Dataset:
    """The store's map as written (uint8, 255 = no data), not decoded to float."""
    return xr.open_zarr(path, decode_coords="all", consolidated=False, mask_and_scale=False)


#: Short retries, so that failing assets fail in seconds: GDAL retries twice itself, the chunk
#: task tries three times.
FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.2)


def _classify(region, stac_url, out, client, model_path, **kw):
    from geoflow.regional import classify_region

    bbox, dates = region
    kw.setdefault("retry", FAST_RETRY)
    return classify_region(bbox, dates, out=str(out), catalog=stac_url, client=client,
                           model=model_path, chunk_patches=CHUNK_PATCHES, **kw)


def _run_report(ds: xr.Dataset) -> dict:
    return dict(ds.attrs["run"])


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    cl = Client(cluster)
    yield cl
    cl.close()
    cluster.close()


@pytest.fixture(scope="module")
def model_path(models) -> str:
    """A small untrained student checkpoint: the maps need a model, not a good one."""
    return models[0]


@pytest.fixture(scope="module")
def region(small_archive):
    return centre_quarter(Path(small_archive))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, region, stac_url, client, model_path):
    """An uninterrupted run: the store every other run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "map.zarr"
    ds = _classify(region, stac_url, out, client, model_path)
    return out, ds


@pytest.fixture
def proxy(client):
    """The faulty proxy, in front of the asset server for the workers of ``client``."""
    with FaultyProxy() as p:
        client.run(os.environ.__setitem__, "GDAL_HTTP_PROXY", p.address)
        try:
            yield p
        finally:
            client.run(os.environ.pop, "GDAL_HTTP_PROXY", None)


# --------------------------------------------------------------------------- tests
def test_period_summary_is_a_confidence_weighted_vote():
    from geoflow.infer import period_summary

    cls = np.array([[[1, 255]], [[2, 255]], [[2, 255]], [[1, 255]]], dtype=np.uint8)
    conf = np.array([[[250, 0]], [[40, 0]], [[40, 0]], [[250, 0]]], dtype=np.uint8)
    s_cls, s_conf = period_summary(cls, conf, 10)
    # Two confident votes for class 1 beat two weak ones for class 2.
    assert s_cls.tolist() == [[1, 255]]
    # Mean confidence of the winner over all 4 valid dates: (250 + 250) / 4.
    assert s_conf.tolist() == [[125, 0]]


@pytest.mark.slow  # shares the ~15 s reference run
def test_distributed_map_equals_single_process_run(reference, region, stac_url, model_path):
    """The chunked map from 2 workers equals one process running the model on the whole cube."""
    from geoflow.catalog import search_scenes
    from geoflow.cube import build_cube
    from geoflow.grid import GridSpec
    from geoflow.infer import classify_window, period_summary
    from geoflow.model import load
    from geoflow.request import Request

    ref_out, _ = reference
    ds = _raw(ref_out)
    bbox, dates = region
    model = load(model_path, device="cpu")
    patch = model.patch_size
    scenes = search_scenes(Request.from_user(bbox, dates), stac_url)
    grid = GridSpec.from_bbox(bbox, resolution=10.0, align=patch)
    single = classify_window(build_cube(scenes, grid).compute(), model, patch)
    for var in MAP_VARS:
        np.testing.assert_array_equal(ds[var].values, single[var].values, err_msg=var)
    s_cls, s_conf = period_summary(single["class"].values, single["confidence"].values,
                                   len(model.classes))
    np.testing.assert_array_equal(ds["summary_class"].values, s_cls)
    np.testing.assert_array_equal(ds["summary_confidence"].values, s_conf)
    assert (ds["summary_class"].values != 255).mean() > 0.9  # the map is not empty


@pytest.mark.slow  # shares the ~15 s reference run
def test_store_is_georeferenced_and_describes_itself(reference, region):
    out, ds = reference
    opened = xr.open_zarr(out, decode_coords="all", consolidated=False)
    assert opened.rio.crs is not None and opened.rio.crs.to_epsg() // 100 in (326, 327)
    t = opened.rio.transform()
    assert t.a == -t.e > 0 and t.b == t.d == 0
    # x/y are pixel centres of that transform
    assert float(opened.x[0]) == pytest.approx(t.c + t.a / 2)
    assert opened.attrs["dates"] and len(opened.attrs["classes"]) == 10
    assert opened.attrs["region_bbox"] == pytest.approx(list(region[0]))
    assert "model_version" in opened.attrs
    assert opened["class"].dims == ("time", "y", "x")
    assert opened["summary_class"].dims == ("y", "x")
    assert "Dense Forest" in repr(ds)  # the repr names the classes


@pytest.mark.slow  # shares the ~15 s reference run
def test_without_out_the_map_is_computed_in_memory(reference, region, stac_url, client,
                                                   model_path):
    from geoflow.regional import classify_region

    ref_out, _ = reference
    bbox, dates = region
    ds = classify_region(bbox, dates, catalog=stac_url, client=client, model=model_path,
                         chunk_patches=CHUNK_PATCHES)
    ref = _raw(ref_out)
    for var in (*MAP_VARS, *SUMMARY_VARS):
        assert ds[var].chunks is None  # loaded, not lazy
        np.testing.assert_array_equal(ds[var].values, ref[var].values)
    assert ds.rio.crs == ref.rio.crs


@pytest.mark.slow  # shares the ~15 s reference run
def test_rerun_skips_done_chunks_and_keeps_bytes(reference, region, stac_url, client,
                                                model_path, tmp_path):
    ref_out, ds = reference
    out = tmp_path / "map.zarr"
    shutil.copytree(ref_out, out)
    again = _classify(region, stac_url, out, client, model_path)
    report = _run_report(again)
    assert report["chunks_computed"] == 0
    assert report["chunks_skipped"] == _run_report(ds)["chunks_total"]
    _assert_same_map(ref_out, out)


@pytest.mark.slow  # shares the ~15 s reference run
def test_store_for_another_request_is_refused_untouched(reference, region, stac_url, client,
                                                       model_path, tmp_path):
    from geoflow.errors import StoreMismatchError
    from geoflow.regional import classify_region

    ref_out, _ = reference
    out = tmp_path / "map.zarr"
    shutil.copytree(ref_out, out)
    before = _store_files(out)
    bbox, _ = region
    w, s, e, n = bbox
    with pytest.raises(StoreMismatchError):
        classify_region((w, s, (w + e) / 2, n), region[1], out=str(out), catalog=stac_url,
                        client=client, model=model_path, chunk_patches=CHUNK_PATCHES)
    assert _store_files(out) == before


@pytest.mark.slow
def test_sigkill_midway_then_rerun_resumes_with_same_bytes(reference, region, stac_url,
                                                            client, model_path, tmp_path):
    from geoflow.store import MapStore

    ref_out, ref_ds = reference
    total = _run_report(ref_ds)["chunks_total"]
    out = tmp_path / "map.zarr"
    bbox, dates = region
    cmd = [sys.executable, "-m", "geoflow.cli", "classify", "--bbox", ",".join(map(str, bbox)),
           "--dates", dates, "--out", str(out), "--catalog", stac_url, "--workers", "2",
           "--model", model_path,
           "--chunk-patches", str(CHUNK_PATCHES), "--json"]
    k = 2
    kill_midway(cmd, lambda: len(list((out / LEDGER / "done").glob("*.json"))), k=k,
                env=_env())
    done_at_kill = MapStore.open(str(out)).done()
    assert k <= len(done_at_kill) < total, "kill came too late to test a resume"

    # Rerun the same job (in this process, on the test cluster: the CLI path is shown above).
    report = _run_report(_classify(region, stac_url, out, client, model_path))
    # Only the chunks not yet in the ledger are computed again: at most those in flight at
    # the kill plus those never started; none that was done.
    assert report["chunks_skipped"] == len(done_at_kill)
    assert report["chunks_computed"] == total - len(done_at_kill)
    _assert_same_map(ref_out, out)


@pytest.mark.slow
def test_worker_killed_midway_run_completes_with_same_bytes(reference, region, stac_url,
                                                             client, model_path, tmp_path):
    ref_out, _ = reference
    pids = sorted(client.run(os.getpid).values())
    killed: list[int] = []

    def kill_one(event: dict) -> None:
        if event.get("event") == "chunk" and not killed:
            os.kill(pids[0], signal.SIGKILL)  # the nanny restarts it; its tasks move
            killed.append(pids[0])

    out = tmp_path / "map.zarr"
    ds = _classify(region, stac_url, out, client, model_path, progress=kill_one)
    assert killed and killed[0] not in client.run(os.getpid).values()
    assert _run_report(ds)["failures"] == {}
    _assert_same_map(ref_out, out)


def _asset_of(archive: Path, collection: str, asset: str, pick) -> str:
    items = [json.loads(line) for line in
             (archive / "items" / f"{collection}.ndjson").read_text().splitlines() if line]
    item = pick(items)
    return item["assets"][asset]["href"].split("assets/", 1)[1]


@pytest.mark.slow
def test_http_500_a_few_times_is_retried_to_success(reference, region, stac_url, client,
                                                      model_path, proxy, small_archive,
                                                      tmp_path):
    ref_out, _ = reference
    path = _asset_of(Path(small_archive), "sentinel-2-l2a", "B08", lambda items: items[0])
    # More 500s than GDAL's own tries (3 in these tests): the chunk task must retry.
    proxy.fail(path, 4)
    out = tmp_path / "map.zarr"
    ds = _classify(region, stac_url, out, client, model_path)
    assert proxy.errors[path] == 4 and proxy.hits[path] > 4
    assert _run_report(ds)["failures"] == {}
    _assert_same_map(ref_out, out)


@pytest.mark.slow
def test_always_broken_asset_fails_its_chunks_only_then_rerun_completes(
        reference, region, stac_url, client, model_path, proxy, small_archive, tmp_path):
    from geoflow.store import MapStore

    ref_out, ref_ds = reference
    total = _run_report(ref_ds)["chunks_total"]
    path = _asset_of(Path(small_archive), "sentinel-1-rtc", "vv", lambda items: items[0])
    proxy.fail(path, None)
    out = tmp_path / "map.zarr"
    bbox, dates = region
    cmd = [sys.executable, "-m", "geoflow.cli", "classify", "--bbox", ",".join(map(str, bbox)),
           "--dates", dates, "--out", str(out), "--catalog", stac_url,
           "--scheduler", client.scheduler.address, "--chunk-patches", str(CHUNK_PATCHES),
           "--model", model_path, "--retries", "1", "--backoff", "0.1"]
    env = _env()
    run = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    err = run.stderr.decode()
    assert run.returncode == 1, err[-2000:]
    failures = MapStore.open(str(out)).failures()
    assert failures and len(failures) < total, "the rest of the region must complete"
    assert len(MapStore.open(str(out)).done()) == total - len(failures)
    assert "chunks failed" in err and next(iter(failures)) in err
    assert "500" in next(iter(failures.values()))

    proxy.clear()
    rerun = _run_report(_classify(region, stac_url, out, client, model_path))
    assert rerun["chunks_computed"] == len(failures)
    _assert_same_map(ref_out, out)


def test_local_assets_are_read_with_one_thread_remote_ones_with_several():
    """Loopback and file assets have no latency to hide; remote ones get I/O threads."""
    from geoflow.retry import REMOTE_IO_THREADS, assets_are_local

    def items(*hrefs):
        return [{"assets": {"B04": {"href": h}}} for h in hrefs]

    local = items("http://127.0.0.1:8080/assets/a.tif", "http://localhost/b.tif",
                  "/data/c.tif", "file:///data/d.tif", "http://[::1]:9000/e.tif")
    assert assets_are_local(local)
    assert not assets_are_local(items("http://127.0.0.1/a.tif",
                                      "https://sentinel2l2a01.blob.core.windows.net/x.tif"))
    assert RetryPolicy().threads_for(True) == 1
    assert RetryPolicy().threads_for(False) == REMOTE_IO_THREADS > 1
    assert RetryPolicy(io_threads=3).threads_for(True) == 3


def test_chunks_go_to_workers_in_contiguous_runs_submitted_interleaved():
    from geoflow.regional import _strips

    chunks = [f"r{r}_c{c}" for r in range(3) for c in range(3)]
    order = _strips(chunks, ["tcp://a", "tcp://b"])
    assert sorted(c for c, _ in order) == sorted(chunks)  # each chunk once
    by_worker: dict[str, list[str]] = {}
    for chunk, (worker,) in order:
        by_worker.setdefault(worker, []).append(chunk)
    # Each worker's chunks are a contiguous row-major run (neighbours share COG blocks)...
    assert by_worker == {"tcp://a": chunks[:4], "tcp://b": chunks[4:]}
    # ...and the first submissions reach every worker.
    assert {w for _, (w,) in order[:2]} == {"tcp://a", "tcp://b"}
    assert _strips(chunks, ["tcp://a"]) == [(c, None) for c in chunks]
