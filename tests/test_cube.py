"""Lazy S2 + S1 cubes: values, grid, mosaics, pairing; hand-made COGs and the served archive."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine

from geoflow.cube import POLARIZATIONS, _finish, _pair_s1, build_cube, s2_offset, solar_day
from geoflow.errors import CubeError
from geoflow.grid import GridSpec

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
S2_10M = ("B02", "B03", "B04", "B08")
EPSG = 32632
X0, Y0 = 600_000.0, 5_000_000.0
N = 40  # tile size in 10 m pixels


def _write(path: Path, data: np.ndarray, x0: float, res: float, nodata: float) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=data.dtype, crs=f"EPSG:{EPSG}", nodata=nodata,
                       transform=Affine(res, 0, x0, 0, -res, Y0), tiled=True,
                       blockxsize=16, blockysize=16) as dst:
        dst.write(data, 1)
    return str(path)


def _asset(href: str, x0: float, res: float, shape: tuple[int, int]) -> dict[str, Any]:
    return {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"], "proj:shape": list(shape),
            "proj:transform": [res, 0, x0, 0, -res, Y0]}


def _lonlat_bbox(x0: float, width_m: float) -> list[float]:
    from pyproj import Transformer

    t = Transformer.from_crs(EPSG, 4326, always_xy=True)
    return list(t.transform_bounds(x0, Y0 - N * 10, x0 + width_m, Y0))


def _s2_dn(tile: int, band: int, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.indices(shape)
    # Distinct per tile, band and pixel, all valid DNs (> 0).
    return (1000 + 2000 * tile + 100 * band + 30 * rows + 10 * cols).astype("uint16")


def make_s2(root: Path, item_id: str, tile: int, x0: float, when: str, baseline: str,
            hole: bool = False, scl_value: int | None = None) -> dict[str, Any]:
    assets: dict[str, Any] = {}
    for b, band in enumerate(S2_BANDS):
        res = 10.0 if band in S2_10M else 20.0
        shape = (int(N * 10 / res),) * 2
        dn = _s2_dn(tile, b, shape)
        if hole:  # left quarter of the tile is nodata
            dn[:, : shape[1] // 4] = 0
        href = _write(root / item_id / f"{band}.tif", dn, x0, res, 0)
        assets[band] = _asset(href, x0, res, shape)
    scl = np.full((N // 2, N // 2), 4, dtype="uint8")
    scl[:5, :] = 9 if scl_value is None else scl_value  # top 100 m cloudy
    scl[5:8, :] = 6
    if hole:
        scl[:, : N // 8] = 0
    assets["SCL"] = _asset(_write(root / item_id / "SCL.tif", scl, x0, 20.0, 0), x0, 20.0,
                           scl.shape)
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "bbox": _lonlat_bbox(x0, N * 10), "geometry": None,
            "properties": {"datetime": when, "proj:epsg": EPSG, "s2:processing_baseline": baseline,
                           "eo:cloud_cover": 10.0},
            "assets": assets, "links": []}


def make_s1(root: Path, item_id: str, when: str, value: float, orbit: str = "ascending"
            ) -> dict[str, Any]:
    shape = (N, 2 * N)
    assets = {}
    for p, pol in enumerate(("vv", "vh")):
        rows, cols = np.indices(shape)
        lin = (value / (p + 1) * (1 + 0.01 * cols + 0.001 * rows)).astype("float32")
        lin[-3:, :] = -32768.0  # bottom rows nodata
        href = _write(root / item_id / f"{pol}.tif", lin, X0, 10.0, -32768.0)
        assets[pol] = _asset(href, X0, 10.0, shape)
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "bbox": _lonlat_bbox(X0, 2 * N * 10), "geometry": None,
            "properties": {"datetime": when, "proj:epsg": EPSG, "sat:orbit_state": orbit},
            "assets": assets, "links": []}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two overlapping S2 tiles on two days (one day also has a third item), three S1 passes."""
    root = tmp_path_factory.mktemp("tiny")
    x_b = X0 + 300.0  # tile B overlaps tile A by 10 pixels
    s2 = [
        make_s2(root, "A_d1", 0, X0, "2024-06-03T10:30:00Z", "05.10", hole=True),
        make_s2(root, "B_d1", 1, x_b, "2024-06-03T10:30:05Z", "05.10"),
        make_s2(root, "A_d2", 0, X0, "2024-06-13T10:30:00Z", "03.01"),
        make_s2(root, "B_d2", 1, x_b, "2024-06-13T10:30:05Z", "03.01", scl_value=3),
        make_s2(root, "A_d3", 0, X0, "2024-06-30T10:30:00Z", "04.00"),
    ]
    s1 = [
        make_s1(root, "S1_0601", "2024-06-01T05:00:00Z", 0.10),
        make_s1(root, "S1_0606", "2024-06-06T17:00:00Z", 0.05, "descending"),  # 3.3 d after d1
        make_s1(root, "S1_0618", "2024-06-18T17:00:00Z", 0.02, "descending"),
    ]
    grid = GridSpec(EPSG, 10.0, X0, Y0, 2 * N - 10, N)
    return SimpleNamespace(scenes=SimpleNamespace(s2=s2, s1=s1), grid=grid, root=root)


def _read(href: str, x: float, y: float) -> float:
    with rasterio.open(href) as src:
        row, col = src.index(x, y)
        return float(src.read(1)[row, col])


def test_s2_offset_follows_the_processing_baseline() -> None:
    assert s2_offset("05.10") == s2_offset("04.00") == s2_offset(4.0) == -1000.0
    assert s2_offset("03.01") == s2_offset("02.14") == s2_offset(None) == 0.0
    with pytest.raises(CubeError, match="not a version number"):
        s2_offset("new")


def test_s2_offset_boundary_is_baseline_04_00() -> None:
    # The offset starts exactly at 04.00: the last baseline before it has none.
    assert s2_offset("03.99") == s2_offset(3.999) == 0.0
    assert s2_offset("04.00") == s2_offset("4") == s2_offset("04.01") == -1000.0
    assert s2_offset("") == 0.0  # an empty property is a missing one, not an error
    with pytest.raises(CubeError) as info:
        s2_offset("v4")
    assert info.value.hint == "items must carry baselines like '05.10'"


def test_finish_scales_reflectance_with_the_offset_and_masks_dn_0() -> None:
    raw = np.array([0, 1000, 1001, 11000], dtype="float32")
    # Baseline >= 04.00: (DN - 1000) / 10000 -> [no data, 0, 0.0001, 1]; DN 1000 is a
    # valid 0 reflectance, only DN 0 is no data.
    got = _finish(raw.copy(), "reflectance", -1000.0)
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1:], [0.0, 0.0001, 1.0], rtol=0, atol=1e-7)
    # Older baseline: DN / 10000 -> [no data, 0.1, 0.1001, 1.1].
    got = _finish(raw.copy(), "reflectance", 0.0)
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1:], [0.1, 0.1001, 1.1], rtol=0, atol=1e-7)
    assert got.dtype == np.float32


def test_finish_converts_linear_sar_to_db_and_masks_non_positive() -> None:
    # 10 log10: 1 -> 0 dB, 0.1 -> -10, 0.01 -> -20, 10 -> 10; 0 and the -32768 nodata have
    # no dB value -> NaN (not -inf).
    raw = np.array([1.0, 0.1, 0.01, 10.0, 0.0, -32768.0], dtype="float32")
    got = _finish(raw, "db", 0.0)
    np.testing.assert_allclose(got[:4], [0.0, -10.0, -20.0, 10.0], atol=1e-5)
    assert np.isnan(got[4:]).all()
    scl = np.array([0, 4, 9], dtype="uint8")
    np.testing.assert_array_equal(_finish(scl, "scl", -1000.0), [0, 4, 9])  # codes untouched


T0 = pd.Timestamp("2024-06-10T10:30:00")
DAY = pd.Timedelta(days=1)
SEC = pd.Timedelta(seconds=1)


def _acq(*times: pd.Timestamp) -> list[tuple[pd.Timestamp, list[str]]]:
    return [(t, [f"s1_{k}"]) for k, t in enumerate(times)]


def test_pairing_tolerance_is_inclusive() -> None:
    tol = 6 * DAY
    # Exactly 6 days away (either side) pairs; one second more does not.
    assert _pair_s1([T0], _acq(T0 + tol), tol) == [0]
    assert _pair_s1([T0], _acq(T0 - tol), tol) == [0]
    assert _pair_s1([T0], _acq(T0 - tol - SEC, T0 + tol + SEC), tol) == [None]
    # Tolerance 0: only the same instant.
    assert _pair_s1([T0], _acq(T0 - SEC, T0), pd.Timedelta(0)) == [1]
    assert _pair_s1([T0], _acq(T0 + SEC), pd.Timedelta(0)) == [None]
    assert _pair_s1([T0], [], tol) == [None]


def test_pairing_takes_the_nearest_and_the_earlier_on_a_tie() -> None:
    tol = 6 * DAY
    # Nearest wins whichever comes first in the list: 3 d before vs 1 d after -> after (1).
    assert _pair_s1([T0], _acq(T0 - 3 * DAY, T0 + DAY), tol) == [1]
    # ... and 1 d before vs 3 d after -> before (0); the list's third, 5 d after, loses too.
    assert _pair_s1([T0], _acq(T0 - DAY, T0 + 3 * DAY, T0 + 5 * DAY), tol) == [0]
    # Two at the same distance (2 d before and after): the earlier one.
    assert _pair_s1([T0], _acq(T0 - 2 * DAY, T0 + 2 * DAY), tol) == [0]
    # A tie exactly at the tolerance: still paired, with the earlier one.
    assert _pair_s1([T0], _acq(T0 - tol, T0 + tol), tol) == [0]
    # Each S2 date is paired on its own; one S1 acquisition may serve several dates.
    s2 = [T0, T0 + 4 * DAY, T0 + 20 * DAY]
    assert _pair_s1(s2, _acq(T0 + 2 * DAY, T0 + 9 * DAY), tol) == [0, 0, None]


def test_solar_day_uses_local_longitude() -> None:
    item = {"properties": {"datetime": "2024-06-01T22:00:00Z"}, "bbox": [-120, 0, -118, 1]}
    assert solar_day(item) == pd.Timestamp("2024-06-01")
    item["bbox"] = [150, 0, 152, 1]  # 22:00 UTC is the next morning at 151°E
    assert solar_day(item) == pd.Timestamp("2024-06-02")


def test_cube_layout_and_grid(tiny: SimpleNamespace) -> None:
    cube = build_cube(tiny.scenes, tiny.grid, chunksize=16)
    assert dict(cube.sizes) == {"time": 3, "band": 10, "pol": 2, "y": N, "x": 2 * N - 10}
    assert list(cube.band.values) == list(S2_BANDS)
    assert tuple(cube.pol.values) == POLARIZATIONS == ("VV", "VH")
    assert np.array_equal(cube.x.values, tiny.grid.x_coords)
    assert np.array_equal(cube.y.values, tiny.grid.y_coords)
    assert cube.rio.crs.to_epsg() == EPSG
    gt = [float(v) for v in cube.spatial_ref.attrs["GeoTransform"].split()]
    assert gt == list(tiny.grid.transform.to_gdal())
    assert list(cube.time.values) == list(pd.to_datetime(["2024-06-03", "2024-06-13",
                                                          "2024-06-30"]))
    assert (cube.reflectance.dtype, cube.scl.dtype, cube.cloud.dtype, cube.sar.dtype) == (
        np.float32, np.uint8, np.float32, np.float32)
    assert cube.reflectance.data.chunksize[-2:] == (16, 16)
    assert cube.sar.data.chunksize[-2:] == (16, 16)
    # Everything is serialisable: no object coordinates or stackstac attrs left.
    assert all(cube[c].dtype != object for c in cube.coords)
    assert all(isinstance(v, str | int | float) for v in cube.attrs.values())
    assert list(cube.s2_ids.values) == ["A_d1,B_d1", "A_d2,B_d2", "A_d3"]


def test_nothing_is_read_until_computed(tiny: SimpleNamespace, tmp_path: Path) -> None:
    """Hrefs that cannot be opened do not matter until the cube is computed."""
    def broken(items: list[dict]) -> list[dict]:
        out = []
        for it in items:
            it = {**it, "assets": {k: {**a, "href": f"http://127.0.0.1:9/nope/{k}.tif"}
                                   for k, a in it["assets"].items()}}
            out.append(it)
        return out

    scenes = SimpleNamespace(s2=broken(tiny.scenes.s2), s1=broken(tiny.scenes.s1))
    cube = build_cube(scenes, tiny.grid)
    assert cube.reflectance.shape == (3, 10, N, 2 * N - 10)
    with pytest.raises(Exception):  # noqa: B017 - any read error proves the read is deferred
        cube.reflectance.isel(time=0, band=0).compute()


def test_reflectance_equals_scaled_cog_values(tiny: SimpleNamespace) -> None:
    cube = build_cube(tiny.scenes, tiny.grid).compute()
    items = {it["id"]: it for it in tiny.scenes.s2}
    x, y = float(cube.x[45]), float(cube.y[7])  # inside tile B only (A ends at col 40)
    for t, (item_id, offset) in enumerate([("B_d1", -1000), ("B_d2", 0)]):
        for band in ("B04", "B08"):
            dn = _read(items[item_id]["assets"][band]["href"], x, y)
            got = float(cube.reflectance.sel(band=band).isel(time=t, x=45, y=7))
            assert got == pytest.approx((dn + offset) / 10000, abs=1e-7)
    # Where tile A has nodata (DN 0) and B does not cover: NaN; SCL 0; cloud NaN.
    assert np.isnan(cube.reflectance.isel(time=0, x=2, y=20)).all()
    assert int(cube.scl.isel(time=0, x=2, y=20)) == 0
    assert np.isnan(cube.cloud.isel(time=0, x=2, y=20))
    # Day 3 has only tile A: east of it is NaN.
    assert np.isnan(cube.reflectance.isel(time=2, x=60)).all()
    assert not np.isnan(cube.reflectance.isel(time=2, x=10)).any()


def test_20m_bands_are_resampled_bilinear_and_scl_nearest(tiny: SimpleNamespace) -> None:
    cube = build_cube(tiny.scenes, tiny.grid).isel(time=1).compute()
    b05 = cube.reflectance.sel(band="B05").values
    # The 20 m DN ramp (+10 per 20 m column) becomes a smooth 10 m ramp with steps of 5 in
    # the interior of tile A (GDAL rounds to the uint16 DN); nearest would repeat each value.
    row = b05[10, 4:30]
    steps = np.diff(row) * 10000
    assert np.allclose(steps, 5, atol=1.01)
    scl = cube.scl.values
    assert set(np.unique(scl)) <= {3, 4, 6, 9}  # codes are never blended
    assert (scl[:10, :] != 4).all() and (scl[16:, :] == 4).all()


def test_cloud_layer_from_scl(tiny: SimpleNamespace) -> None:
    cube = build_cube(tiny.scenes, tiny.grid).compute()
    scl, cloud = cube.scl.values, cube.cloud.values
    assert np.array_equal(np.isnan(cloud), scl == 0)
    assert np.array_equal(cloud == 1, np.isin(scl, (3, 8, 9, 10)))
    assert np.array_equal(cloud == 0, np.isin(scl, (1, 2, 4, 5, 6, 7, 11)))


def test_mosaic_per_solar_day_first_valid_pixel_wins(tiny: SimpleNamespace) -> None:
    cube = build_cube(tiny.scenes, tiny.grid).compute()
    items = {it["id"]: it for it in tiny.scenes.s2}
    b02 = cube.reflectance.sel(band="B02")
    # Overlap columns 30..39: tile A (first item of the day) wins where it is valid.
    x, y = float(cube.x[35]), float(cube.y[3])
    dn_a = _read(items["A_d1"]["assets"]["B02"]["href"], x, y)
    assert float(b02.isel(time=0, x=35, y=3)) == pytest.approx((dn_a - 1000) / 10000, abs=1e-7)
    # Tile A's nodata hole does not hide tile B where B has data... and both tiles give
    # one time step per solar day.
    assert cube.sizes["time"] == 3
    assert np.isfinite(b02.isel(time=0, x=slice(12, None))).all()
    assert np.isfinite(b02.isel(time=1)).all()
    # SCL mosaic: day 2's tile B has shadow (3) in its cloudy rows, tile A cloud (9).
    assert int(cube.scl.isel(time=1, y=0, x=5)) == 9
    assert int(cube.scl.isel(time=1, y=0, x=65)) == 3


def test_sar_is_db_of_linear_and_paired_within_tolerance(tiny: SimpleNamespace) -> None:
    cube = build_cube(tiny.scenes, tiny.grid).compute()
    s1 = {it["id"]: it for it in tiny.scenes.s1}
    # d1 (06-03 10:30): 06-01 05:00 is 2.2 d away, 06-06 17:00 is 3.3 d -> 06-01.
    # d2 (06-13): 06-18 is 5.3 d -> paired; d3 (06-30): 12 d from 06-18 -> none.
    assert list(cube.s1_ids.values) == ["S1_0601", "S1_0618", ""]
    assert list(cube.s1_available.values) == [True, True, False]
    assert pd.isna(cube.s1_time.values[2])
    assert cube.s1_time.values[0] == np.datetime64("2024-06-01T05:00:00")
    assert np.isnan(cube.sar.isel(time=2)).all()
    for t, item_id in ((0, "S1_0601"), (1, "S1_0618")):
        for pol in ("vv", "vh"):
            x, y = float(cube.x[17]), float(cube.y[11])
            lin = _read(s1[item_id]["assets"][pol]["href"], x, y)
            got = float(cube.sar.sel(pol=pol.upper()).isel(time=t, x=17, y=11))
            assert got == pytest.approx(10 * np.log10(lin), abs=1e-4)
    # -32768 nodata rows are NaN, not -inf or a number.
    assert np.isnan(cube.sar.isel(time=0, y=slice(-3, None))).all()
    assert np.isfinite(cube.sar.isel(time=0, y=slice(None, -3))).all()

    tight = build_cube(tiny.scenes, tiny.grid, s1_tolerance_days=2)
    assert list(tight.s1_available.values) == [False, False, False]
    wide = build_cube(tiny.scenes, tiny.grid, s1_tolerance_days=30)
    assert list(wide.s1_ids.values) == ["S1_0601", "S1_0618", "S1_0618"]


def test_window_cube_is_a_window_of_the_full_cube(tiny: SimpleNamespace) -> None:
    full = build_cube(tiny.scenes, tiny.grid).compute()
    win = tiny.grid.window(5, 30, 20, 25)
    part = build_cube(tiny.scenes, win, chunksize=(10, 13)).compute()
    expected = full.isel(y=slice(5, 25), x=slice(30, 55))
    assert np.array_equal(part.x.values, expected.x.values)
    for var in ("reflectance", "scl", "cloud", "sar"):
        np.testing.assert_array_equal(part[var].values, expected[var].values)


@pytest.mark.parametrize("window", [None, (-3, -5, 17, 41), (1, 37, 30, 33), (7, 2, 9, 77)])
def test_aligned_reads_equal_the_gdal_warp(tiny: SimpleNamespace, window: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Assets on the grid's lattice are read without a warp; every value matches the warp.

    Windows at odd 10 m offsets (20 m pixels split 1/4 : 3/4), past the tiles' edges, across
    the nodata hole and the tile overlap, with blocks smaller than the window.
    """
    grid = tiny.grid if window is None else tiny.grid.window(*window)
    def layers(cube: Any) -> str:
        return " ".join(cube.reflectance.data.dask.layers)

    lazy = build_cube(tiny.scenes, grid, chunksize=(11, 16))
    assert "geoflow-read" in layers(lazy)
    fast = lazy.compute()
    monkeypatch.setenv("GEOFLOW_CUBE_READER", "stackstac")
    lazy = build_cube(tiny.scenes, grid, chunksize=(11, 16))
    assert "geoflow-read" not in layers(lazy)
    warped = lazy.compute()
    for var in ("reflectance", "scl", "cloud", "sar"):
        np.testing.assert_array_equal(fast[var].values, warped[var].values, err_msg=var)
    assert list(fast.s2_ids.values) == list(warped.s2_ids.values)


def test_grid_off_the_asset_lattice_is_warped(tiny: SimpleNamespace) -> None:
    """Half a pixel off the assets' lattice: GDAL resamples (no fast path), values between."""
    g = tiny.grid
    shifted = GridSpec(g.epsg, g.resolution, g.x0 + 5.0, g.y0, g.width - 1, g.height)
    a = build_cube(tiny.scenes, g).reflectance.sel(band="B04").isel(time=2, y=20).values
    b = build_cube(tiny.scenes, shifted).reflectance.sel(band="B04").isel(time=2, y=20).values
    # Tile A's DN ramp rises 10 per column: the shifted grid sees the half-way values.
    np.testing.assert_allclose(b[5:30], (a[5:30] + a[6:31]) / 2, atol=1.5e-4)


def test_rewritten_local_asset_is_read_afresh(tmp_path: Path) -> None:
    """In a read session datasets stay open, but a file replaced on disk is opened again."""
    from geoflow.cube import close_datasets, read_session

    read_session("test-session")
    try:
        _rewrite_and_read(tmp_path)
    finally:
        close_datasets()
        read_session(None)


def _rewrite_and_read(tmp_path: Path) -> None:
    root = tmp_path / "a"
    item = make_s2(root, "A", 0, X0, "2024-06-03T10:30:00Z", "05.10")
    grid = GridSpec(EPSG, 10.0, X0, Y0, N, N)
    scenes = SimpleNamespace(s2=[item], s1=[])
    first = build_cube(scenes, grid).reflectance.sel(band="B04").compute(scheduler="sync")
    time_ns = Path(item["assets"]["B04"]["href"]).stat().st_mtime_ns
    again = make_s2(tmp_path / "b", "A", 1, X0, "2024-06-03T10:30:00Z", "05.10")
    Path(again["assets"]["B04"]["href"]).replace(item["assets"]["B04"]["href"])
    os.utime(item["assets"]["B04"]["href"], ns=(time_ns + 10**9, time_ns + 10**9))
    second = build_cube(scenes, grid).reflectance.sel(band="B04").compute(scheduler="sync")
    # Tile index 1 adds 2000 DN to every pixel.
    np.testing.assert_allclose(second.values - first.values, 0.2, atol=1e-6)


def test_cube_round_trips_through_zarr(tiny: SimpleNamespace, tmp_path: Path) -> None:
    """No stackstac attrs or object coordinates left: the cube writes to Zarr v3 as is."""
    import xarray as xr

    cube = build_cube(tiny.scenes, tiny.grid.window(0, 0, 16, 16))
    with warnings.catch_warnings():
        # zarr-python calls fixed-width unicode (band/pol/id labels) "unstable" in v3.
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        cube.to_zarr(tmp_path / "cube.zarr", mode="w", consolidated=False)
    back = xr.open_zarr(tmp_path / "cube.zarr", decode_coords="all", consolidated=False)
    assert back.rio.crs.to_epsg() == EPSG
    xr.testing.assert_identical(back.compute(), cube.compute())


def test_no_warnings_escape(tiny: SimpleNamespace) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cube = build_cube(tiny.scenes, tiny.grid)
        cube.sar.compute()


def test_errors_name_the_fix(tiny: SimpleNamespace) -> None:
    with pytest.raises(CubeError, match="no Sentinel-2 scenes") as info:
        build_cube(SimpleNamespace(s2=[], s1=tiny.scenes.s1), tiny.grid)
    assert "max_cloud" in (info.value.hint or "")
    with pytest.raises(CubeError, match="must be a SceneSet"):
        build_cube([tiny.scenes.s2], tiny.grid)
    as_dict = build_cube({"s2": tiny.scenes.s2[:1]}, tiny.grid)  # no S1 at all is fine
    assert list(as_dict.s1_available.values) == [False]
    no_epsg = [{**it, "properties": {k: v for k, v in it["properties"].items()
                                     if k != "proj:epsg"}} for it in tiny.scenes.s2]
    with pytest.raises(CubeError, match="has no proj:epsg"):
        build_cube(SimpleNamespace(s2=no_epsg, s1=[]), tiny.grid)
    # STAC 1.1 items carry proj:code instead: accepted.
    coded = [{**it, "properties": {**it["properties"], "proj:code": f"EPSG:{EPSG}"}}
             for it in no_epsg]
    assert build_cube(SimpleNamespace(s2=coded, s1=[]), tiny.grid).sizes["time"] == 3
    no_scl = [{**it, "assets": {k: a for k, a in it["assets"].items() if k != "SCL"}}
              for it in tiny.scenes.s2]
    with pytest.raises(CubeError, match=r"lacks assets \['SCL'\]"):
        build_cube(SimpleNamespace(s2=no_scl, s1=[]), tiny.grid)
    far = GridSpec(EPSG, 10.0, X0 + 100_000, Y0, 10, 10)  # a chunk past the archive's edge
    empty = build_cube(tiny.scenes, far).compute()
    assert empty.sizes["time"] == 3 and list(empty.s2_ids.values) == ["", "", ""]
    assert np.isnan(empty.reflectance).all() and (empty.scl == 0).all()
    assert not empty.s1_available.any()
    with pytest.raises(CubeError, match="geographic"):
        build_cube(tiny.scenes, GridSpec(4326, 0.001, 9.0, 45.0, 10, 10))
    with pytest.raises(CubeError, match="chunksize"):
        build_cube(tiny.scenes, tiny.grid, chunksize=0)
    with pytest.raises(CubeError, match="s1_tolerance_days"):
        build_cube(tiny.scenes, tiny.grid, s1_tolerance_days=-1)


def test_no_s1_at_all_gives_the_explicit_marker(tiny: SimpleNamespace) -> None:
    cube = build_cube(SimpleNamespace(s2=tiny.scenes.s2, s1=[]), tiny.grid)
    assert not cube.s1_available.any()
    assert cube.s1_time.isnull().all()
    assert bool(np.isnan(cube.sar).all().compute())


# --------------------------------------------------------------------------- served archive
@pytest.fixture(scope="module")
def served(small_archive: Path, stac_url: str) -> SimpleNamespace:
    """The small archive's scenes searched through the real STAC API, and its lazy cube."""
    import json

    from geoflow.catalog import search_scenes
    from geoflow.request import Request

    info = json.loads((small_archive / "archive.json").read_text())
    scenes = search_scenes(Request.from_user(info["bbox"], info["datetime"]), stac_url)
    grid = GridSpec.from_dict(info["grid"])  # the archive's own UTM grid
    with rasterio.open(small_archive / info["truth"]) as src:
        assert src.transform.to_gdal() == grid.transform.to_gdal() and src.shape == grid.shape
        truth = src.read(1)
    return SimpleNamespace(info=info, scenes=scenes, grid=grid, truth=truth,
                           cube=build_cube(scenes, grid, chunksize=128))


def test_served_cube_mosaics_both_tiles_per_solar_day(served: SimpleNamespace) -> None:
    cube = served.cube
    assert served.scenes.s2[0]["assets"]["B02"]["href"].startswith("http://127.0.0.1:")
    dates = sorted({pd.Timestamp(it["properties"]["datetime"]).tz_convert(None).normalize()
                    for it in served.scenes.s2})
    assert len(served.scenes.s2) == 2 * len(dates)  # one item per tile and date
    assert list(cube.time.values) == [np.datetime64(d) for d in dates]
    tiles = served.info["tiles"]
    for ids in cube.s2_ids.values:
        assert sorted(t for t in tiles for i in ids.split(",") if f"_T{t}_" in i) == sorted(tiles)
    # The clear date has data on both sides of the tile boundary, no seam.
    clear = int(np.argmin([float(it["properties"]["eo:cloud_cover"])
                           for it in served.scenes.s2[::2]]))
    b08 = cube.reflectance.sel(band="B08").isel(time=clear).compute()
    assert bool(np.isfinite(b08).all())
    assert float(b08.min()) > 0 and float(b08.max()) < 1


def test_served_pixels_equal_their_cogs(served: SimpleNamespace) -> None:
    cube, grid = served.cube, served.grid
    t = 1
    ids = str(cube.s2_ids.values[t]).split(",")
    items = {it["id"]: it for it in served.scenes.s2}
    s1 = {it["id"]: it for it in served.scenes.s1}
    pixels = [(17, 30), (200, 100), (120, grid.width - 40), (5, grid.width - 3)]
    refl = cube.reflectance.isel(time=t).sel(band=["B02", "B08"]).compute()
    sar = cube.sar.isel(time=t).compute()
    checked = 0
    for row, col in pixels:
        x, y = float(grid.x_coords[col]), float(grid.y_coords[row])
        for item_id in ids:  # the tile that contains the pixel
            with rasterio.open(items[item_id]["assets"]["B08"]["href"]) as src:
                left, bottom, right, top = src.bounds
            if not (left < x < right and bottom < y < top):
                continue
            assert items[item_id]["properties"]["s2:processing_baseline"] >= "04.00"
            for band in ("B02", "B08"):
                dn = _read(items[item_id]["assets"][band]["href"], x, y)
                got = float(refl.sel(band=band).isel(y=row, x=col))
                assert got == pytest.approx((dn - 1000) / 10000, abs=1e-7)
                checked += 1
        s1_item = s1[str(cube.s1_ids.values[t])]
        for pol in ("vv", "vh"):
            lin = _read(s1_item["assets"][pol]["href"], x, y)
            got = float(sar.sel(pol=pol.upper()).isel(y=row, x=col))
            assert got == pytest.approx(10 * np.log10(lin), abs=1e-4)
    assert checked == 2 * len(pixels)


def test_served_s1_and_s2_edges_line_up_with_truth(served: SimpleNamespace) -> None:
    """Water is dark in NIR and in VH: both correlate best with the truth at zero shift.

    (VH, not VV: the calibrated world's wind-roughened sea reaches -12.5 dB in VV, as bright as
    land, on some dates, as real sea does; VH moves a third as much and stays dark.)"""
    water = (served.truth == 8).astype("float64")
    assert 0.05 < water.mean() < 0.95  # the window has a coastline
    clear = int(np.argmin(served.cube.cloud.mean(("y", "x")).values))
    layers = {
        "B08": -served.cube.reflectance.sel(band="B08").isel(time=clear).values,
        "VH": -served.cube.sar.sel(pol="VH").isel(time=clear).values,
    }
    m = 3
    for name, layer in layers.items():
        grid = np.zeros((5, 5))
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = np.roll(layer, (dy, dx), axis=(0, 1))[m:-m, m:-m]
                ok = np.isfinite(shifted)
                grid[dy + 2, dx + 2] = np.corrcoef(shifted[ok], water[m:-m, m:-m][ok])[0, 1]
        assert np.unravel_index(np.argmax(grid), grid.shape) == (2, 2), (name, grid.round(3))
        assert grid[2, 2] > 0.6, name


def test_served_pairing_is_nearest_within_tolerance(served: SimpleNamespace) -> None:
    s1_times = sorted(pd.Timestamp(it["properties"]["datetime"]).tz_convert(None)
                      for it in served.scenes.s1)
    for tol in (6, 2):
        cube = served.cube if tol == 6 else build_cube(served.scenes, served.grid,
                                                       s1_tolerance_days=tol)
        for s2_time, s1_time, ok in zip(cube.s2_time.values, cube.s1_time.values,
                                        cube.s1_available.values, strict=True):
            gaps = [abs(pd.Timestamp(s2_time) - t) for t in s1_times]
            best = min(gaps)
            if best <= pd.Timedelta(days=tol):
                assert ok and pd.Timestamp(s1_time) == s1_times[gaps.index(best)]
            else:
                assert not ok and pd.isna(s1_time)
        if tol == 2:
            assert not cube.s1_available.all()  # the archive has dates with no pair then
            missing = int(np.flatnonzero(~cube.s1_available.values)[0])
            assert bool(np.isnan(cube.sar.isel(time=missing)).all())
            assert cube.s1_ids.values[missing] == ""


def test_a_read_session_opens_each_asset_once_across_threads(
        tiny: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """I/O threads of a worker share its open datasets (one open per asset), same values."""
    from geoflow.cube import close_datasets, read_session

    opened: list[str] = []
    real_open = rasterio.open

    def counting_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    expected = build_cube(tiny.scenes, tiny.grid, chunksize=(11, 16)).compute(scheduler="sync")
    monkeypatch.setattr(rasterio, "open", counting_open)
    read_session("threads")
    try:
        for _ in range(2):  # a second chunk of the run reuses the handles
            got = build_cube(tiny.scenes, tiny.grid, chunksize=(11, 16)).compute(
                scheduler="threads", num_workers=4)
    finally:
        close_datasets()
        read_session(None)
    assert opened and len(opened) == len(set(opened))
    for var in ("reflectance", "scl", "cloud", "sar"):
        np.testing.assert_array_equal(got[var].values, expected[var].values, err_msg=var)


def test_an_item_under_a_filled_block_is_not_read(
        tiny: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """First valid pixel wins: where the day's first tile fills the block, the next is skipped."""
    import geoflow.cube as cube_mod

    read: list[str] = []
    real = cube_mod._read_aligned

    def spy(href: str, *args: Any) -> Any:
        read.append(href)
        return real(href, *args)

    monkeypatch.setattr(cube_mod, "_read_aligned", spy)
    # Columns 32-39: tile B starts at column 30, so both tiles reach the window; on day 2
    # tile A has no hole there and fills every pixel.
    window = tiny.grid.window(0, 32, N, 8)
    cube = build_cube(tiny.scenes, window).isel(time=1).compute(scheduler="sync")
    assert cube.s2_ids.item() == "A_d2,B_d2"
    assert np.isfinite(cube.reflectance.values).all()
    assert any("/A_d2/" in h for h in read) and not any("/B_d2/" in h for h in read)


def test_finish_in_place_equals_the_cube_arithmetic_bit_for_bit() -> None:
    """_finish works in place on its block; the values are exactly xarray's float32
    ``(DN + offset) / 10000`` and ``10 * log10(linear)`` with their masks (NaN fill kept)."""
    import xarray as xr

    rng = np.random.default_rng(3)
    dn = rng.integers(0, 12_000, 5_000).astype("float32")
    dn[::7] = 0
    dn[::11] = np.nan  # fill of pixels outside the raster
    want = ((xr.DataArray(dn) + np.float32(-1000.0)) / np.float32(10_000.0)).where(dn != 0)
    raw = dn.copy()
    got = _finish(raw, "reflectance", -1000.0)
    assert got is raw and got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype("float32").values)
    lin = rng.uniform(-0.01, 0.5, 5_000).astype("float32")
    lin[::13] = np.nan
    lin[::17] = -32768.0
    with np.errstate(invalid="ignore", divide="ignore"):
        want_db = np.where(lin > 0, np.float32(10.0) * np.log10(lin), np.float32(np.nan))
    np.testing.assert_array_equal(_finish(lin.copy(), "db", 0.0), want_db.astype("float32"))


def test_a_block_the_asset_does_not_cover_is_fill_without_a_read(
        tiny: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    import geoflow.cube as cube_mod

    item = tiny.scenes.s2[0]
    asset = item["assets"]["B05"]
    tf = tuple(float(v) for v in asset["proj:transform"][:6])
    shape = (int(asset["proj:shape"][0]), int(asset["proj:shape"][1]))
    monkeypatch.setattr(cube_mod, "_read_window", lambda *a: pytest.fail("read"))
    # A block east of the raster: no pixel centre falls inside it.
    east = tf[2] + shape[1] * tf[0] + 100.0
    block = (east, tf[5], 10.0, 4, 6)
    for bilinear, dtype, fill in ((True, "float32", np.float32(np.nan)),
                                  (False, "uint8", np.uint8(0))):
        got = cube_mod._read_aligned(asset["href"], tf, shape, block, bilinear, dtype, fill)
        assert got.shape == (1, 1, 4, 6) and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, np.full((1, 1, 4, 6), fill, dtype=dtype))


@pytest.mark.parametrize("session", ["refused", None])
def test_a_refused_signed_read_is_retried_once_not_twice_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session: str | None) -> None:
    """Retries live in one place, the reader: a refused signed read reopens once with a new
    token (one open and one token more), in a read session or outside one."""
    from geoflow import signing
    from geoflow.cube import _read_window, close_datasets, read_session

    item = make_s2(tmp_path, "A", 0, X0, "2024-06-03T10:30:00Z", "05.10")
    href = str(item["assets"]["B04"]["href"])
    opened: list[str] = []
    real_open = rasterio.open

    class Refusing:
        """A real dataset whose block reads are refused, as with a revoked signature."""

        def __init__(self, url: str) -> None:
            self.src = real_open(url.partition("?")[0])

        def __getattr__(self, name: str) -> Any:
            return getattr(self.src, name)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.src.close()

        def read(self, *args: Any, **kwargs: Any) -> Any:
            raise rasterio.errors.RasterioIOError("Read failed")

    def refusing_open(url: str) -> Refusing:
        opened.append(url)
        return Refusing(url)

    class Signer:
        n = 0

        def sign(self, h: str, refresh: bool = False) -> str:
            Signer.n += refresh
            return f"{h}?sig={Signer.n}"

    monkeypatch.setattr(signing, "_rasterio_open", refusing_open)
    signing.reset()
    read_session(session)
    try:
        with signing.activated([Signer()]), pytest.raises(RuntimeError, match="Read failed"):
            _read_window(href, rasterio.windows.Window(0, 0, 4, 4))
    finally:
        close_datasets()
        read_session(None)
    assert opened == [f"{href}?sig=0", f"{href}?sig=1"]
    assert signing.stats()["resigned"] == 1
