"""GridSpec: one pixel lattice for cubes, chunks and maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from geoflow.errors import RequestError
from geoflow.grid import GridSpec, utm_epsg

# Small bboxes (<= ~20 km) anywhere UTM is defined.
small_bboxes = st.builds(
    lambda lon, lat, dlon, dlat: (lon, lat, lon + dlon, lat + dlat),
    st.floats(-179.5, 179.5 - 0.2),
    st.floats(-79.5, 83.5),
    st.floats(0.0005, 0.2),
    st.floats(0.0005, 0.2),
)
grids = st.builds(
    GridSpec,
    epsg=st.sampled_from([32632, 32733, 3857]),
    resolution=st.sampled_from([10.0, 20.0, 60.0, 2.5]),
    x0=st.integers(-10_000, 10_000).map(lambda v: 500_000.0 + 10.0 * v),
    y0=st.integers(-10_000, 10_000).map(lambda v: 5_000_000.0 + 10.0 * v),
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
)


def test_utm_zone_of_centre() -> None:
    assert utm_epsg(11.0, 45.0) == 32632
    assert utm_epsg(-3.7, 40.4) == 32630
    assert utm_epsg(151.2, -33.9) == 32756
    assert utm_epsg(180.0, 0.0) == 32660  # clamps to zone 60
    assert utm_epsg(-180.0, 0.0) == 32601


@settings(max_examples=50, deadline=None)
@given(small_bboxes, st.sampled_from([1, 8, 32]))
def test_from_bbox_covers_the_bbox_and_is_aligned(bbox, align) -> None:  # type: ignore[no-untyped-def]
    grid = GridSpec.from_bbox(bbox, align=align)
    assert grid.epsg == utm_epsg((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    assert grid.resolution == 10.0
    step = 10.0 * align
    assert grid.x0 % step == 0 and grid.y0 % step == 0
    assert grid.width % align == 0 and grid.height % align == 0
    # Every point of the bbox boundary lies inside the grid.
    to_utm = Transformer.from_crs(4326, grid.epsg, always_xy=True)
    t = np.linspace(0, 1, 50)
    w, s, e, n = bbox
    lon = np.concatenate([w + (e - w) * t, np.full(50, e), e - (e - w) * t, np.full(50, w)])
    lat = np.concatenate([np.full(50, s), s + (n - s) * t, np.full(50, n), n - (n - s) * t])
    x, y = to_utm.transform(lon, lat)
    left, bottom, right, top = grid.bounds
    tol = 1e-6
    assert x.min() >= left - tol and x.max() <= right + tol
    assert y.min() >= bottom - tol and y.max() <= top + tol
    # ...and the grid is the smallest such: it does not waste a whole aligned block per side.
    assert x.min() < left + step and x.max() > right - step
    assert y.min() < bottom + step and y.max() > top - step
    # The lon/lat bbox of the grid contains the request.
    gw, gs, ge, gn = grid.bbox_lonlat
    assert gw <= w + 1e-9 and gs <= s + 1e-9 and ge >= e - 1e-9 and gn >= n - 1e-9


@settings(max_examples=60, deadline=None)
@given(grids, st.integers(-50, 4000), st.integers(-50, 4000), st.integers(1, 500),
       st.integers(1, 500))
def test_window_shares_the_pixel_lattice(grid, row, col, h, w) -> None:  # type: ignore[no-untyped-def]
    win = grid.window(row, col, h, w)
    assert win.shape == (h, w) and win.epsg == grid.epsg and win.resolution == grid.resolution
    assert (win.x0 - grid.x0) / grid.resolution == pytest.approx(col, abs=1e-9)
    assert (grid.y0 - win.y0) / grid.resolution == pytest.approx(row, abs=1e-9)
    # Pixel centres of the window are pixel centres of the (extended) lattice.
    assert np.allclose(win.x_coords[:3], grid.x0 + (col + np.arange(3)[: w] + 0.5) *
                       grid.resolution) if w >= 3 else True
    inside = [i for i in range(w) if 0 <= col + i < grid.width]
    if inside:
        assert np.array_equal(win.x_coords[inside],
                              grid.x_coords[[col + i for i in inside]])
    inside_y = [i for i in range(h) if 0 <= row + i < grid.height]
    if inside_y:
        assert np.array_equal(win.y_coords[inside_y],
                              grid.y_coords[[row + i for i in inside_y]])


@settings(max_examples=60, deadline=None)
@given(grids, st.integers(1, 64))
def test_coarsen_keeps_origin_and_covers_bounds(grid, factor) -> None:  # type: ignore[no-untyped-def]
    coarse = grid.coarsen(factor)
    assert (coarse.x0, coarse.y0) == (grid.x0, grid.y0)
    assert coarse.resolution == grid.resolution * factor
    gl, gb, gr, gt = grid.bounds
    cl, cb, cr, ct = coarse.bounds
    assert cl == gl and ct == gt and cr >= gr and cb <= gb
    assert cr - gr < coarse.resolution and gb - cb < coarse.resolution
    if grid.width % factor == 0 and grid.height % factor == 0:
        assert coarse.bounds == pytest.approx(grid.bounds)


@settings(max_examples=30, deadline=None)
@given(small_bboxes, st.sampled_from([4, 16]))
def test_coarsen_of_aligned_grid_keeps_bounds_exactly(bbox, factor) -> None:  # type: ignore[no-untyped-def]
    grid = GridSpec.from_bbox(bbox, align=factor)
    assert grid.coarsen(factor).bounds == grid.bounds


@settings(deadline=None)
@given(grids)
def test_geometry_is_consistent(grid: GridSpec) -> None:
    left, bottom, right, top = grid.bounds
    t = grid.transform
    assert t @ (0, 0) == (left, top)
    assert t @ (grid.width, grid.height) == pytest.approx((right, bottom))
    assert grid.x_coords.shape == (grid.width,) and grid.y_coords.shape == (grid.height,)
    assert grid.x_coords[0] == left + grid.resolution / 2
    assert grid.y_coords[0] == top - grid.resolution / 2
    assert np.all(np.diff(grid.y_coords) < 0)
    assert grid.area_km2 == pytest.approx((right - left) * (top - bottom) / 1e6)


@settings(deadline=None)
@given(grids)
def test_dict_roundtrip_through_json(grid: GridSpec) -> None:
    again = GridSpec.from_dict(json.loads(json.dumps(grid.to_dict())))
    assert again == grid and hash(again) == hash(grid)


def test_explicit_epsg_and_resolution() -> None:
    grid = GridSpec.from_bbox((11.0, 45.0, 11.1, 45.1), resolution=20, epsg=32633)
    assert grid.epsg == 32633 and grid.resolution == 20.0 and grid.x0 % 20 == 0
    # ~8 km x 11 km at 20 m
    assert 350 < grid.width < 500 and 500 < grid.height < 620
    assert math.isclose(grid.area_km2, grid.width * grid.height * 400 / 1e6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsg": 999999}, "not a known EPSG code"),
        ({"epsg": "32632"}, "epsg must be an integer"),
        ({"resolution": 0}, "resolution must be a positive number"),
        ({"resolution": float("nan")}, "resolution must be a finite number"),
        ({"width": 0}, "width must be at least 1"),
        ({"height": 2.5}, "height must be an integer"),
        ({"x0": float("inf")}, "origin x0 must be a finite number"),
        # Inputs that used to escape as OverflowError, or build absurd grids.
        ({"x0": 10**400}, "origin x0 must be a finite number"),
        ({"resolution": 10**400}, "resolution must be a finite number"),
        ({"resolution": True}, "resolution must be a finite number"),
        ({"y0": None}, "origin y0 must be a number"),
        ({"epsg": True}, "epsg must be an integer"),
        ({"epsg": 2**63}, "epsg must be at most"),
        ({"width": 10**20}, "width must be at most 10000000"),
        ({"width": 1e300}, "width must be at most"),
        ({"width": 2_000_000, "height": 2_000_000}, "larger than 1e\\+12 pixels"),
        ({"x0": 1e308, "width": 10}, "reach beyond"),
        ({"resolution": 1e300}, "reach beyond"),
    ],
)
def test_invalid_grids(kwargs: dict, match: str) -> None:
    base = {"epsg": 32632, "resolution": 10.0, "x0": 0.0, "y0": 0.0, "width": 1, "height": 1}
    with pytest.raises(RequestError, match=match) as info:
        GridSpec(**{**base, **kwargs})
    assert info.value.hint


B = (11.0, 45.0, 11.01, 45.01)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((B,), {"resolution": 0}, r"resolution 0.0 m is outside 0.01..100000 m"),
        ((B,), {"resolution": -10}, "outside 0.01..100000 m"),
        ((B,), {"resolution": 1e-300}, "outside 0.01..100000 m"),
        ((B,), {"resolution": 1e6}, "outside 0.01..100000 m"),
        ((B,), {"resolution": float("inf")}, "resolution must be a finite number"),
        ((B,), {"resolution": 10**400}, "resolution must be a finite number"),
        ((B,), {"resolution": "ten"}, "resolution must be a number"),
        ((B,), {"epsg": 4326}, r"EPSG:4326 \(WGS 84\) is geographic"),
        ((B,), {"epsg": 4978}, "is not projected"),
        ((B,), {"epsg": 2263}, "is in US survey foot"),
        ((B,), {"epsg": 999999}, "not a known EPSG code"),
        ((B,), {"epsg": "32632"}, "epsg must be an integer"),
        ((B,), {"epsg": 32632.5}, "epsg must be an integer"),
        ((B,), {"align": 1.5}, "align must be an integer"),
        ((B,), {"align": 10**30}, "align must be at most"),
        ((B,), {"align": 10**7}, "larger than 1e\\+12 pixels"),
        ((B,), {"resolution": 0.01, "align": 1}, None),  # fine: a 1 km bbox at 1 cm
        (((-10.0, 1.0, 11.0, 50.0),), {"resolution": 0.01}, "more than 10000000 pixels"),
        # Too wide for one UTM zone, or a pole cap reaching far south: no sensible grid.
        (((-180.0, -90.0, 180.0, 90.0),), {}, "too large for one UTM/UPS zone"),
        (((0.0, 0.0, 180.0, 1.0),), {}, "too large for one UTM/UPS zone"),
        (((-10.0, 40.0, 30.0, 50.0),), {}, "too large for one UTM/UPS zone"),
        (((179.0, 0.0, 180.0, 0.0),), {}, "south .* is not less than north"),
        (((179.0, 0.0, -179.0, 1.0),), {}, "crossing the antimeridian"),
        (((0.0, 0.0, 1e-300, 1e-300),), {}, "empty or inverted"),
        ((None,), {}, "bbox must be a string or 4 numbers"),
    ],
)
def test_invalid_from_bbox(args: tuple, kwargs: dict, match: str | None) -> None:
    if match is None:
        assert GridSpec.from_bbox(*args, **kwargs).width > 0
        return
    with pytest.raises(RequestError, match=match) as info:
        GridSpec.from_bbox(*args, **kwargs)
    assert info.value.hint


def test_near_poles_and_antimeridian_get_a_grid() -> None:
    for bbox, epsg in [((179.9, 0.0, 180.0, 0.1), 32660), ((-180.0, 0.0, -179.9, 0.1), 32601),
                       ((0.0, 89.9, 0.1, 90.0), 32661), ((0.0, -90.0, 0.1, -89.9), 32761),
                       ((0.0, 83.9, 0.1, 84.1), 32631), ((-10.0, 50.0, 10.0, 70.0), 32631),
                       # Up to a pole: transverse Mercator holds it.
                       ((0.0, 50.0, 10.0, 90.0), 32631), ((0.0, -90.0, 10.0, -50.0), 32731)]:
        grid = GridSpec.from_bbox(bbox)
        assert grid.epsg == epsg and grid.width > 0 and grid.height > 0


def test_explicit_projected_crs_that_cannot_hold_the_bbox() -> None:
    # Web Mercator stretches towards the pole without end: a grid up to it is refused by size.
    with pytest.raises(RequestError, match="more than 10000000 pixels across"):
        GridSpec.from_bbox((0.0, 89.0, 1.0, 90.0), epsg=3857)


@pytest.mark.parametrize(
    ("bounds", "match"),
    [
        ((0, 0, 1, 1, 1), "need 4 values, got 5"),
        (None, "bounds must be 4 numbers"),
        ("0,0,1,1", "bounds must be 4 numbers"),
        (("a", 0, 1, 1), "bounds must be a number"),
        ((0, 0, float("inf"), 1), "bounds must be a finite number"),
        ((float("nan"), 0, 1, 1), "bounds must be a finite number"),
        ((0, 0, 1e308, 1e308), "more than 10000000 pixels across"),
    ],
)
def test_invalid_from_bounds(bounds: object, match: str) -> None:
    with pytest.raises(RequestError, match=match):
        GridSpec.from_bounds(bounds, 32632)  # type: ignore[arg-type]


def test_from_dict_refuses_a_non_mapping_and_window_far_away() -> None:
    with pytest.raises(RequestError, match="grid dict must be a mapping, got NoneType"):
        GridSpec.from_dict(None)  # type: ignore[arg-type]
    grid = GridSpec(32632, 10.0, 500000.0, 5000000.0, 4, 3)
    with pytest.raises(RequestError, match="reach beyond"):
        grid.window(2**70, 0, 1, 1)
    with pytest.raises(RequestError, match="reach beyond"):
        grid.coarsen(2**70)


def test_from_dict_names_missing_keys_and_from_bbox_checks_bbox() -> None:
    with pytest.raises(RequestError, match="lacks height"):
        GridSpec.from_dict({"epsg": 32632, "resolution": 10, "x0": 0, "y0": 0, "width": 1})
    with pytest.raises(RequestError, match=r"west .* is not less than east"):
        GridSpec.from_bbox((11.1, 45.0, 11.0, 45.1))
    with pytest.raises(RequestError, match="align must be at least 1"):
        GridSpec.from_bbox((11.0, 45.0, 11.1, 45.1), align=0)
