"""geoflow.reprocess against the real local STAC API, a real Dask cluster and real stores.

A map is made with one untrained model (seed 0), then reprocessed with another (seed 1) and
with the same one. The report is checked against a recount done here with numpy from the two
stores; the previous store's bytes are checked unchanged; pinning is checked by adding a scene
to the running catalog (a fresh search finds it, the reprocess does not use it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from _helpers import file_hashes

from geoflow.errors import CatalogError, StoreError
from geoflow.retry import RetryPolicy

pytestmark = pytest.mark.server

DATES = "2025-06-01/2025-06-10"  # two Sentinel-2 dates of the small archive: a fast run
MAP_VARS = ("class", "confidence", "sar_weight", "cloud_fraction", "summary_class",
            "summary_confidence")
BINS = ((0, 10), (10, 30), (30, 60), (60, 90), (90, 100))
FAST = RetryPolicy(attempts=2, backoff_s=0.1)


def _raw(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, mask_and_scale=False).load()


@pytest.fixture(scope="module")
def previous(tmp_path_factory, small_archive, stac_url, client, models):
    """The map of the first model, and the sha256 of each of its files just after the run."""
    from geoflow.regional import classify_region

    info = json.loads((Path(small_archive) / "archive.json").read_text())
    w, s, e, n = info["demo_bbox"]
    cx, cy, hx, hy = (w + e) / 2, (s + n) / 2, (e - w) / 4, (n - s) / 4
    out = tmp_path_factory.mktemp("prev") / "map.zarr"
    classify_region((cx - hx, cy - hy, cx + hx, cy + hy), DATES, out=str(out),
                    catalog=stac_url, client=client, model=models[0], chunk_patches=2,
                    progress=False, retry=FAST)
    return out, file_hashes(out)


@pytest.fixture(scope="module")
def reprocessed(tmp_path_factory, previous, client, models):
    """The previous map reprocessed with the second model, with a report and its PNG."""
    from geoflow.reprocess import reprocess

    base = tmp_path_factory.mktemp("new")
    out, report = base / "map-v2.zarr", base / "changes.json"
    ds = reprocess(str(previous[0]), model=models[1], out=str(out), report=str(report),
                   client=client, progress=False, retry=FAST)
    return out, report, ds


def _pairs(matrix: np.ndarray, names: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                out.setdefault(names[i], {})[names[j]] = int(matrix[i, j])
    return out


def _recount(prev: xr.Dataset, new: xr.Dataset) -> dict[str, Any]:
    """The report's numbers, counted independently (plain loops over classes and bins)."""
    names = list(new.attrs["classes"])
    k = len(names)
    px = float(new.attrs["map_grid"]["resolution"]) ** 2 / 1e6
    a, b = prev["summary_class"].values, new["summary_class"].values
    both = (a != 255) & (b != 255)
    conf = np.array([[np.sum(both & (a == i) & (b == j)) for j in range(k)] for i in range(k)])
    per_date = {}
    for t, day in enumerate(np.datetime_as_string(new["time"].values, unit="D")):
        ca, cb = prev["class"].values[t], new["class"].values[t]
        ok = (ca != 255) & (cb != 255)
        per_date[str(day)] = _pairs(np.array([[np.sum(ok & (ca == i) & (cb == j))
                                               for j in range(k)] for i in range(k)]), names)
    out: dict[str, Any] = {
        "compared_pixels": int(both.sum()),
        "changed_pixels": int((both & (a != b)).sum()),
        "confusion": {"summary": _pairs(conf, names), "per_date": per_date},
        "area_km2": {"before": {n: np.sum(a == i) * px for i, n in enumerate(names)},
                     "after": {n: np.sum(b == i) * px for i, n in enumerate(names)}},
        "changed": np.where(both, (a != b).astype(np.uint8), 255),
    }
    out["changed_fraction"] = out["changed_pixels"] / out["compared_pixels"]
    pct = {s: ds["cloud_fraction"].values * 100.0 / 255.0 for s, ds in (("p", prev), ("n", new))}
    by_bin = {}
    for lo, hi in BINS:
        row: dict[str, Any] = {}
        for side, key, ds in (("before", "p", prev), ("after", "n", new)):
            cls = ds["class"].values
            inb = (cls != 255) & (pct[key] >= lo) & ((pct[key] < hi) if hi < 100 else True)
            row[side] = {n: np.sum(inb & (cls == i)) * px for i, n in enumerate(names)}
            row[f"conf_{side}"] = (ds["confidence"].values[inb].mean() / 255 if inb.any()
                                   else None)
            row[f"sar_{side}"] = (ds["sar_weight"].values[inb].mean() / 255 if inb.any()
                                  else None)
        ca, cb = prev["class"].values, new["class"].values
        inb = (ca != 255) & (cb != 255) & (pct["n"] >= lo) & ((pct["n"] < hi) if hi < 100
                                                                else True)
        row["compared"] = int(inb.sum())
        row["changed"] = int((inb & (ca != cb)).sum())
        by_bin[f"{lo}-{hi}"] = row
    out["by_bin"] = by_bin
    for side, ds in (("before", prev), ("after", new)):
        valid = ds["class"].values != 255
        out[f"conf_{side}"] = ds["confidence"].values[valid].mean() / 255
        out[f"sar_{side}"] = ds["sar_weight"].values[valid].mean() / 255
    return out


# --------------------------------------------------------------------------- tests
def test_report_equals_an_independent_recount(previous, reprocessed, models):
    out, report_path, ds = reprocessed
    prev, new = _raw(previous[0]), _raw(out)
    report = json.loads(report_path.read_text())
    assert report == json.loads(json.dumps(ds.attrs["change_report"]))
    want = _recount(prev, new)
    assert report["compared_pixels"] == want["compared_pixels"] > 0
    assert report["changed_pixels"] == want["changed_pixels"] > 0  # two different models
    assert report["changed_fraction"] == pytest.approx(want["changed_fraction"])
    assert report["confusion"] == want["confusion"]
    for side in ("before", "after"):
        assert report["area_km2"][side] == pytest.approx(want["area_km2"][side])
        assert report["mean_confidence"][side] == pytest.approx(want[f"conf_{side}"])
        assert report["mean_sar_weight"][side] == pytest.approx(want[f"sar_{side}"])
    for name in report["classes"]:
        assert report["area_km2"]["difference"][name] == pytest.approx(
            want["area_km2"]["after"][name] - want["area_km2"]["before"][name])
    assert list(report["by_cloud_fraction"]) == [f"{lo}-{hi}" for lo, hi in BINS]
    for label, row in want["by_bin"].items():
        got = report["by_cloud_fraction"][label]
        for side in ("before", "after"):
            assert got["area_km2"][side] == pytest.approx(row[side]), label
            assert got["mean_confidence"][side] == pytest.approx(row[f"conf_{side}"])
            assert got["mean_sar_weight"][side] == pytest.approx(row[f"sar_{side}"])
        assert got["compared_observations"] == row["compared"]
        assert got["changed_observations"] == row["changed"]
    # The models: both named, versioned and checksummed, and different.
    assert report["previous_model"]["checksum"] == prev.attrs["model_checksum"]
    assert report["model"]["checksum"] == new.attrs["model_checksum"] != \
        report["previous_model"]["checksum"]
    assert report["model"]["name"] == Path(models[1]).stem
    # The `changed` layer is the recount, and the new store has the map's schema plus it.
    np.testing.assert_array_equal(new["changed"].values, want["changed"])
    assert new["changed"].dtype == np.uint8 and new["changed"].attrs["flag_values"] == [0, 1, 255]


def test_new_store_keeps_grid_request_dates_and_pinned_items(previous, reprocessed):
    out, _, ds = reprocessed
    prev, new = _raw(previous[0]), _raw(out)
    for key in ("request", "stac_items", "stac_inputs", "map_grid", "stac_catalog", "dates",
                "classes"):
        assert new.attrs[key] == prev.attrs[key], key
    assert new.attrs["supersedes"]["store"] == str(previous[0])
    assert new.attrs["supersedes"]["model_checksum"] == prev.attrs["model_checksum"]
    np.testing.assert_array_equal(new["time"].values, prev["time"].values)
    np.testing.assert_array_equal(new["x"].values, prev["x"].values)
    assert "changed" not in prev and set(MAP_VARS) < set(new.data_vars)
    assert ds.attrs["run"]["chunks_total"] == ds.attrs["run"]["chunks_computed"]


def test_both_maps_are_stac_items_and_the_new_one_links_the_old(previous, reprocessed):
    """Every finished map writes its Item beside the store; a reprocessed map's Item points
    at the Item of the map it supersedes."""
    import json

    from geoflow.stac_maps import item_path, validate_offline

    old_item = json.loads(Path(item_path(previous[0])).read_text())
    new_item = json.loads(Path(item_path(reprocessed[0])).read_text())
    assert old_item["properties"]["geoflow:model"]["checksum"] == \
        _raw(previous[0]).attrs["model_checksum"]
    links = [link["href"] for link in new_item["links"] if link["rel"] == "predecessor-version"]
    assert links and links[0].endswith(Path(item_path(previous[0])).name)
    assert new_item["properties"]["geoflow:model"]["checksum"] != \
        old_item["properties"]["geoflow:model"]["checksum"]
    import pystac

    # Invalid Items raise; the core schema (shipped with pystac) must have been checked.
    checked = validate_offline(pystac.Item.from_dict(new_item))
    assert any(uri.endswith("item-spec/json-schema/item.json") and ok
               for uri, ok in checked.items()), checked


def test_png_shows_the_changes(reprocessed):
    _, report_path, ds = reprocessed
    png = Path(ds.attrs["change_report"]["png"])
    assert png == report_path.with_suffix(".png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_same_model_gives_zero_changes_with_the_pinned_items(previous, client, models,
                                                            stac_server, stac_url,
                                                            tmp_path):
    """The catalog gains a scene inside the period; a new search finds it, the reprocess
    still reads exactly the pinned items, so the same model gives the same map."""
    import psycopg
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    from geoflow.catalog import search_scenes
    from geoflow.reprocess import reprocess
    from geoflow.request import Request

    prev = _raw(previous[0])
    pinned = prev.attrs["stac_items"][0]["s2"][0]
    item = json.loads(_get(f"{stac_url}/collections/sentinel-2-l2a/items/{pinned}"))
    extra = {**item, "id": pinned + "_EXTRA", "links": [],
             "properties": {**item["properties"], "datetime": "2025-06-04T10:36:31.024000Z"}}
    dsn = f"{stac_server._dsn_base}/{_database()}"
    db = PgstacDB(dsn=dsn)
    try:
        Loader(db=db).load_items(iter([extra]), Methods.upsert)
    finally:
        db.close()
    try:
        bbox = prev.attrs["request"]["bbox"]
        found = search_scenes(Request.from_user(bbox, DATES), stac_url).ids["S2"]
        assert extra["id"] in found  # a new search would use it (a third date)
        out = tmp_path / "same.zarr"
        ds = reprocess(str(previous[0]), model=models[0], out=str(out), client=client,
                       progress=False, retry=FAST)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET search_path TO pgstac, public")
            conn.execute("SELECT delete_item(%s, %s)", (extra["id"], "sentinel-2-l2a"))
    report = ds.attrs["change_report"]
    assert report["changed_pixels"] == 0 and report["changed_fraction"] == 0.0
    assert report["compared_pixels"] > 0
    new = _raw(out)
    assert new.attrs["stac_items"] == prev.attrs["stac_items"]
    assert new.attrs["stac_inputs"] == prev.attrs["stac_inputs"]
    assert extra["id"] not in json.dumps(new.attrs["stac_inputs"])
    for var in MAP_VARS:
        np.testing.assert_array_equal(new[var].values, prev[var].values, err_msg=var)
    assert set(np.unique(new["changed"].values)) <= {0, 255}
    assert Path(report["png"]) == tmp_path / "same-changes.png"


def test_missing_pinned_item_is_named(previous, client, models, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(previous[0], copy)
    root = json.loads((copy / "zarr.json").read_text())
    attrs = root["attributes"]
    # As if the catalog had dropped one of the pinned items.
    gone = attrs["stac_items"][0]["s2"][0]
    attrs["stac_items"][0]["s2"][0] = "S2Z_GONE_FROM_THE_CATALOG"
    attrs["stac_inputs"]["s2"][attrs["stac_inputs"]["s2"].index(gone)] = \
        "S2Z_GONE_FROM_THE_CATALOG"
    (copy / "zarr.json").write_text(json.dumps(root))
    from geoflow.reprocess import reprocess

    with pytest.raises(CatalogError, match="S2Z_GONE_FROM_THE_CATALOG") as err:
        reprocess(str(copy), model=models[1], out=str(tmp_path / "new.zarr"), client=client,
                  progress=False, retry=FAST)
    assert "--research" in str(err.value)
    assert not (tmp_path / "new.zarr").exists()  # nothing written


def test_rerun_resumes_to_the_same_bytes_and_refuses_the_previous_path(previous, reprocessed,
                                                                      client, models,
                                                                      tmp_path):
    from geoflow.reprocess import reprocess
    from geoflow.store import MapStore

    out, _, _ = reprocessed
    copy = tmp_path / "map-v2.zarr"
    shutil.copytree(out, copy)
    # As if killed midway: a chunk's files and its ledger entry are gone.
    (copy / "_geoflow_ledger" / "done" / "r0_c0.json").unlink()
    for f in copy.glob("*/c/**/0"):
        if f.is_file() and f.parent.name == "0":  # chunk (0, 0) of every layer and date
            f.unlink()
    ds = reprocess(str(previous[0]), model=models[1], out=str(copy), client=client,
                   progress=False, retry=FAST)
    assert ds.attrs["run"]["chunks_computed"] == 1
    assert MapStore.open(copy).digest() != "" and _data(copy) == _data(out)
    with pytest.raises(StoreError, match="overwrite the previous one"):
        reprocess(str(previous[0]), model=models[1], out=str(previous[0]), client=client,
                  progress=False)


def test_previous_store_is_untouched(previous, reprocessed):
    # Runs after every reprocess of this module (file order): the same bytes, file by file.
    path, before = previous
    assert file_hashes(path) == before


# --------------------------------------------------------------------------- helpers
def _data(path: Path) -> dict[str, str]:
    """Chunk files (not metadata or the ledger, which name the path and times)."""
    return {k: v for k, v in file_hashes(path).items()
            if not k.endswith("zarr.json") and not k.startswith("_geoflow_ledger")}


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def _database() -> str:
    from geoflow.archive import server

    return str(server._DATABASE)
