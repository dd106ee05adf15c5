"""Map stores on object storage, against a real S3 server (moto's, on 127.0.0.1).

Everything speaks the S3 protocol over HTTP: s3fs/zarr for the store, boto3 to damage or
inspect objects behind geoflow's back, GDAL's ``/vsis3/`` for inputs. The standard AWS
environment (``AWS_ENDPOINT_URL``, keys, region) points at the server, as a user's would; one
test passes ``storage_options`` instead, with that environment removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from _helpers import archive_items, centre_quarter, kill_midway, untrained_model
from test_store import TIMES, _create, _full_maps, _plan, _write

from geoflow._cluster import aws_gdal_options, gdal_settings
from geoflow.store import LEDGER, MapStore, _Files, open_map

_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
             "AWS_PROFILE", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING",
             "AWS_REQUEST_PAYER", "AWS_NO_SIGN_REQUEST")
_SECRET = "wJalrXUtnFEMI-not-a-real-secret"


def _aws_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": _SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The standard AWS environment, pointed at the test server."""
    for key in _AWS_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in _aws_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    return s3_endpoint


def _new_bucket(endpoint: str) -> str:
    import boto3

    name = f"geoflow-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                 aws_secret_access_key=_SECRET, region_name="us-east-1").create_bucket(
        Bucket=name)
    return name


def _boto(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key=_SECRET, region_name="us-east-1")


@pytest.fixture
def bucket(s3_env: str) -> str:
    return _new_bucket(s3_env)


# --------------------------------------------------------------------------- the store on S3
def test_chunk_writes_and_verify_on_s3_give_the_bytes_of_local_disk(bucket, tmp_path):
    plan = _plan(3)  # 2 chunks: every S3 request costs
    maps = _full_maps(plan)
    url = f"s3://{bucket}/map.zarr"
    s3 = _create(url, plan)
    _write(s3, plan, maps, plan.chunks[:4])
    # A worker's view: a new handle, as MapStore.open on another process.
    _write(MapStore.open(url), plan, maps, plan.chunks[4:])
    s3.finalize({"run": {"seconds": 1.0}})
    local = _create(tmp_path / "map.zarr", plan)
    _write(local, plan, maps)
    local.finalize({"run": {"seconds": 2.0}})

    report = MapStore.open(url).verify()
    assert report["complete"] and report["verified"] == len(plan.chunks), report
    assert MapStore.open(url).digest() == local.digest()
    # Plain xarray on the URL: consolidated metadata, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(url)
    assert set(maps.data_vars) <= set(plain.data_vars)
    opened = open_map(url)
    assert opened["class"].dtype == np.uint8 and opened.rio.crs.to_epsg() == 32632
    np.testing.assert_array_equal(opened["class"].values, maps["class"].values)


def test_done_entries_are_written_once_with_a_conditional_put(bucket):
    from botocore.exceptions import ClientError

    plan = _plan(3)  # 2 chunks: every S3 request costs
    maps = _full_maps(plan)
    url = f"s3://{bucket}/map.zarr"
    store = _create(url, plan)
    chunk = plan.chunks[0]
    _write(store, plan, maps, [chunk])
    key = f"map.zarr/{LEDGER}/done/{chunk.id}.json"
    client = _boto(os.environ["AWS_ENDPOINT_URL"])
    first = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    # The server enforces write-once for the PUT geoflow makes...
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")
    files = _Files(url)
    assert files.create_json(f"{LEDGER}/done/{chunk.id}.json", {"other": 1}) is False
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == first
    # ...and the same chunk written again (a retried write, a task run twice) is accepted
    # with the entry left as it was.
    _write(MapStore.open(url), plan, maps, [chunk])
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == first
    # A stale entry (it records other bytes than those stored) is replaced by the rewrite.
    stale = json.loads(first)
    stale["objects"]["class/c/0/0/0"]["sha256"] = "0" * 64
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(stale).encode())
    assert store.check_chunk(chunk.id) is not None
    _write(MapStore.open(url), plan, maps, [chunk])
    assert store.check_chunk(chunk.id) is None
    assert json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read()) == \
        json.loads(first)


def test_a_damaged_object_on_s3_is_found_by_verify_and_repaired_by_a_rewrite(bucket, tmp_path):
    plan = _plan(3)  # 2 chunks: every S3 request costs
    maps = _full_maps(plan)
    url = f"s3://{bucket}/map.zarr"
    store = _create(url, plan)
    _write(store, plan, maps)
    client = _boto(os.environ["AWS_ENDPOINT_URL"])
    key = "map.zarr/confidence/c/1/0/1"
    good = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=good[:-3] + b"xyz")  # same size, garbled

    report = MapStore.open(url).verify()
    assert not report["ok"] and set(report["damaged"]) == {"r0_c1"}
    assert "confidence/c/1/0/1 differs" in report["damaged"]["r0_c1"]
    # A rerun's view: the damaged chunk loses its done entry (the legitimate rewrite) and is
    # computed again; its new entry is a first write again.
    again = MapStore.open(url)
    assert again.verified_done() == {c.id for c in plan.chunks} - {"r0_c1"}
    _write(again, plan, maps, [c for c in plan.chunks if c.id == "r0_c1"])
    assert again.verify()["complete"]
    local = _create(tmp_path / "map.zarr", plan)
    _write(local, plan, maps)
    assert again.digest() == local.digest()


def test_storage_options_alone_reach_the_store_and_no_secret_is_stored(s3_endpoint,
                                                                        monkeypatch):
    for key in _AWS_VARS:
        monkeypatch.delenv(key, raising=False)
    bucket = _new_bucket(s3_endpoint)
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": _SECRET,
               "client_kwargs": {"region_name": "us-east-1"}}
    plan = _plan(3)  # 2 chunks: every S3 request costs
    maps = _full_maps(plan)
    url = f"s3://{bucket}/opts.zarr"
    store = MapStore.open_or_create(url, map_grid=plan.map_grid, times=TIMES,
                                    chunk_shape=plan.chunk_shape,
                                    attrs={"request": {"bbox": [11, 45, 11.1, 45.1]},
                                           "model_version": "demo-1"},
                                    storage_options=options)
    _write(MapStore.open(url, options), plan, maps)
    store.finalize({"run": {"seconds": 1}})
    assert MapStore.open(url, options).verify()["complete"]
    opened = open_map(url, storage_options=options)
    np.testing.assert_array_equal(opened["summary_class"].values, maps["summary_class"].values)
    client = _boto(s3_endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert not [k for k in keys
                if _SECRET.encode() in client.get_object(Bucket=bucket, Key=k)["Body"].read()]
    assert _SECRET not in repr(store) and _SECRET not in json.dumps(store.attrs)


# --------------------------------------------------------------------------- GDAL reads s3://
def test_the_aws_environment_is_translated_for_gdal():
    import rasterio

    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000/", "AWS_DEFAULT_REGION": "eu-central-1",
           "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": _SECRET,
           "AWS_SESSION_TOKEN": "tok", "AWS_REQUEST_PAYER": "requester"}
    http = aws_gdal_options(env)
    assert http == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000/",
                    "AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO",
                    "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_REGION": "eu-central-1",
                    "AWS_REQUEST_PAYER": "requester"}
    # No credentials: they stay in each process's environment (and rasterio.Env accepts the
    # options as they are, where it refuses keys).
    with rasterio.Env(**http):
        pass
    # The S3-specific endpoint wins; https stays https; GDAL's own settings win over both.
    https = aws_gdal_options({"AWS_ENDPOINT_URL": "http://a:1",
                              "AWS_ENDPOINT_URL_S3": "https://minio.example:9443",
                              "AWS_REGION": "r1", "AWS_DEFAULT_REGION": "r2"})
    assert (https["AWS_S3_ENDPOINT"], https["AWS_HTTPS"], https["AWS_REGION"]) == (
        "minio.example:9443", "YES", "r1")
    own = aws_gdal_options({"AWS_ENDPOINT_URL": "http://a:1", "AWS_VIRTUAL_HOSTING": "TRUE"})
    assert own["AWS_VIRTUAL_HOSTING"] == "TRUE"
    assert aws_gdal_options({}) == {}


def test_gdal_reads_s3_hrefs_from_the_server(bucket, small_archive):
    import rasterio
    from rasterio.windows import Window

    from geoflow.catalog import SceneSet
    from geoflow.cube import build_cube
    from geoflow.grid import GridSpec

    archive = Path(small_archive)

    def first_pair(base: str) -> list[dict]:  # the archive's first S2 and first S1 item
        items = archive_items(archive, base)
        return [next(i for i in items if i["collection"] == c)
                for c in ("sentinel-2-l2a", "sentinel-1-rtc")]

    local, remote = first_pair(f"file://{archive}"), first_pair(f"s3://{bucket}")
    client = _boto(os.environ["AWS_ENDPOINT_URL"])
    for item in local:
        for asset in item["assets"].values():
            rel = asset["href"].removeprefix(f"file://{archive}/")
            client.upload_file(str(archive / rel), bucket, rel)
    s2 = local[0]

    settings = gdal_settings()  # translated from the AWS environment
    assert settings["AWS_S3_ENDPOINT"] == os.environ["AWS_ENDPOINT_URL"].split("://")[1]
    href = remote[0]["assets"]["B04"]["href"]
    with rasterio.Env(**settings), rasterio.open(href) as src:
        got = src.read(1, window=Window(0, 0, 64, 64))
    with rasterio.open(local[0]["assets"]["B04"]["href"]) as src:
        np.testing.assert_array_equal(got, src.read(1, window=Window(0, 0, 64, 64)))

    w, s, e, n = s2["bbox"]
    cx, cy = (w + e) / 2, (s + n) / 2
    grid = GridSpec.from_bbox((cx - 0.004, cy - 0.003, cx + 0.004, cy + 0.003), align=32)
    with rasterio.Env(**settings):
        from_s3 = build_cube(SceneSet(s2=[remote[0]], s1=[remote[1]]), grid).compute()
    from_disk = build_cube(SceneSet(s2=[local[0]], s1=[local[1]]), grid).compute()
    assert int(np.isfinite(from_s3["reflectance"].values).sum()) > 0
    xr.testing.assert_identical(from_s3, from_disk)


# --------------------------------------------------------------------------- whole runs
@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small untrained student checkpoint: the maps need a model, not a good one."""
    return untrained_model(tmp_path_factory.mktemp("model"), 0)


def _classify_cmd(archive: Path, out: str, stac_url: str, model_path: str) -> list[str]:
    bbox, dates = centre_quarter(archive)
    return [sys.executable, "-m", "geoflow.cli", "classify", "--bbox", ",".join(map(str, bbox)),
            "--dates", dates,
            "--out", out, "--catalog", stac_url, "--workers", "2", "--model", model_path,
            "--chunk-patches", "2", "--json"]


@pytest.mark.slow
def test_sigkill_midway_on_s3_then_rerun_gives_the_bytes_of_a_disk_run(
        bucket, small_archive, stac_url, model_path, tmp_path):
    archive = Path(small_archive)
    url = f"s3://{bucket}/map.zarr"
    cmd = _classify_cmd(archive, url, stac_url, model_path)
    # The real command, its LocalCluster and workers, all with the AWS environment.
    done = _Files(url)
    k = 2
    kill_midway(cmd, lambda: len(done.listdir(f"{LEDGER}/done")), k=k, timeout=180,
                env=dict(os.environ))
    done_at_kill = MapStore.open(url).done()

    rerun = subprocess.run(cmd, capture_output=True, timeout=300, env=dict(os.environ))
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    report = json.loads(rerun.stdout)
    assert k <= len(done_at_kill) < report["chunks_total"], "kill came too late to test a resume"
    assert report["chunks_skipped"] == len(done_at_kill)
    assert report["chunks_computed"] == report["chunks_total"] - len(done_at_kill)

    disk = tmp_path / "map.zarr"
    ref = subprocess.run(_classify_cmd(archive, str(disk), stac_url, model_path),
                         capture_output=True, timeout=300, env=dict(os.environ))
    assert ref.returncode == 0, ref.stderr.decode()[-2000:]
    assert MapStore.open(url).verify()["complete"]
    assert MapStore.open(url).digest() == MapStore.open(disk).digest()


@pytest.fixture
def clean_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A 2-worker LocalCluster whose workers have no AWS environment at all."""
    from distributed import Client, LocalCluster

    for key in _AWS_VARS:
        monkeypatch.delenv(key, raising=False)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.mark.slow
def test_classify_region_writes_to_s3_with_storage_options_only(
        s3_endpoint, clean_client, small_archive, stac_url, model_path):
    from geoflow.regional import classify_region

    bucket = _new_bucket(s3_endpoint)
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": _SECRET,
               "client_kwargs": {"region_name": "us-east-1"}}
    bbox, dates = centre_quarter(Path(small_archive))
    url = f"s3://{bucket}/opts.zarr"
    ds = classify_region(bbox, dates, out=url, catalog=stac_url, client=clean_client,
                         model=model_path, storage_options=options)
    assert ds["class"].dtype == np.uint8 and ds.rio.crs is not None
    assert dict(ds.attrs["run"])["failures"] == {}
    opened = open_map(url, storage_options=options)
    np.testing.assert_array_equal(opened["summary_class"].values, ds["summary_class"].values)
    assert (opened["summary_class"].values != 255).mean() > 0.9
    assert MapStore.open(url, options).verify()["complete"]
