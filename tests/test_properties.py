"""Property tests: any bbox, date or grid input gives a valid value or a GeoflowError, only."""

from __future__ import annotations

import math
from datetime import UTC, timedelta, timezone

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from geoflow.errors import GeoflowError
from geoflow.grid import GridSpec
from geoflow.request import DEFAULT_MAX_AREA_KM2, Request, parse_bbox, parse_dates

FAST = settings(max_examples=200, deadline=None)

# Near-valid bboxes: four floats (NaN and inf included) written in a few ways.
any_float = st.floats(allow_nan=True, allow_infinity=True)
float_text = st.one_of(any_float.map(repr), any_float.map(str), any_float.map(lambda v: f"{v:g}"),
                       st.integers(-10**30, 10**30).map(str))
bbox_texts = st.one_of(
    st.text(),
    st.lists(float_text, min_size=3, max_size=5).map(",".join),
    st.lists(float_text, min_size=4, max_size=4).map(" ".join),
    st.lists(st.floats(-200, 200), min_size=4, max_size=4).map(
        lambda v: ",".join(f"{x:.3f}" for x in v)),
)
bbox_values = st.one_of(bbox_texts, st.lists(any_float, min_size=4, max_size=4),
                        st.lists(st.one_of(any_float, st.integers(), st.none(), st.booleans(),
                                           st.text(max_size=5)), min_size=0, max_size=5))

# Near-valid dates: wide-ranging dates and datetimes formatted several ways, years of 1..5+
# digits, odd time parts and UTC offsets.
wide_dates = st.dates()
wide_datetimes = st.datetimes(timezones=st.none() | st.just(UTC) | st.builds(
    lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60 - 59, 23 * 60 + 59)))
date_text = st.one_of(
    wide_dates.map(lambda d: d.isoformat()),
    wide_datetimes.map(lambda d: d.isoformat()),
    wide_datetimes.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")),
    wide_datetimes.map(lambda d: d.strftime("%Y-%m-%d %H:%M")),
    st.tuples(st.integers(0, 99999), st.integers(0, 13), st.integers(0, 32)).map(
        lambda t: f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"),
    st.tuples(st.integers(2014, 2100), st.integers(0, 99), st.integers(-30, 30)).map(
        lambda t: f"{t[0]}-06-01T{t[1]:02d}:00:00{t[2]:+03d}:00"),
    st.text(max_size=30),
)
date_values = st.one_of(
    st.text(),
    st.tuples(date_text, date_text).map("/".join),
    date_text,
    st.tuples(st.one_of(date_text, wide_dates, wide_datetimes),
              st.one_of(date_text, wide_dates, wide_datetimes)),
)
limits = st.one_of(st.none(), any_float, st.text(max_size=8), st.integers(-10, 10**6))


def _check_request(req: Request, max_area: float) -> None:
    west, south, east, north = req.bbox
    assert all(math.isfinite(v) for v in req.bbox)
    assert -180 <= west < east <= 180 and -90 <= south < north <= 90
    assert req.start <= req.end
    for ts in (req.start, req.end):
        assert isinstance(ts, pd.Timestamp) and str(ts.tz) == "UTC"
    assert req.area_km2 <= max_area
    if req.max_cloud is not None:
        assert 0 <= req.max_cloud <= 100


@FAST
@given(bbox_values, date_values)
def test_from_user_gives_a_valid_request_or_a_geoflow_error(bbox, dates) -> None:  # type: ignore[no-untyped-def]
    try:
        req = Request.from_user(bbox, dates, max_area_km2=1e9)
    except GeoflowError as err:
        assert err.hint  # every refusal says how to fix it
        return
    _check_request(req, 1e9)


@FAST
@given(bbox_texts, date_values, limits, limits)
def test_from_user_limits_never_escape(bbox, dates, cloud, area) -> None:  # type: ignore[no-untyped-def]
    try:
        req = Request.from_user(bbox, dates, max_cloud=cloud, max_area_km2=area)
    except GeoflowError:
        return
    _check_request(req, DEFAULT_MAX_AREA_KM2 if area is None else float(area))


lons = st.floats(-180, 180)
lats = st.floats(-90, 90)


@st.composite
def valid_bboxes(draw: st.DrawFn) -> tuple[float, float, float, float]:
    w, e = sorted(draw(st.lists(lons, min_size=2, max_size=2, unique=True)))
    s, n = sorted(draw(st.lists(lats, min_size=2, max_size=2, unique=True)))
    return (w, s, e, n)


@FAST
@given(valid_bboxes(), st.sampled_from([repr, str, lambda v: f"{v!r} "]), st.sampled_from(
    [",", " ", ", "]))
def test_bbox_text_round_trip(bbox, fmt, sep) -> None:  # type: ignore[no-untyped-def]
    assert parse_bbox(sep.join(fmt(v) for v in bbox)) == bbox
    assert parse_bbox(np.array(bbox)) == bbox


supported_times = st.datetimes(min_value=pd.Timestamp("2014-01-01").to_pydatetime(),
                               max_value=pd.Timestamp("2100-12-31 23:59:59").to_pydatetime())


@FAST
@given(supported_times, supported_times, st.booleans())
def test_date_range_round_trips_through_the_stac_datetime(a, b, whole_days) -> None:  # type: ignore[no-untyped-def]
    a, b = sorted((a, b))
    text = f"{a.date()}/{b.date()}" if whole_days else f"{a.isoformat()}Z/{b.isoformat()}Z"
    req = Request.from_user("11,45,11.1,45.1", text)
    assert parse_dates(req.datetime) == (req.start, req.end)
    assert Request.from_user("11,45,11.1,45.1", req.datetime) == req


# Modest bboxes (< ~50 km across) anywhere a UTM or UPS zone holds them.
modest_bboxes = st.builds(
    lambda lon, lat, dx, dy: (lon, lat, min(lon + dx / max(math.cos(math.radians(lat)), 0.05),
                                            180.0), min(lat + dy, 90.0)),
    st.floats(-180, 179.99), st.floats(-90, 89.99), st.floats(1e-4, 0.4), st.floats(1e-4, 0.4))


@FAST
@given(modest_bboxes, st.floats(1.0, 1000.0), st.sampled_from([1, 2, 8, 16, 32, 64]))
def test_from_bbox_covers_and_aligns(bbox, resolution, align) -> None:  # type: ignore[no-untyped-def]
    grid = GridSpec.from_bbox(bbox, resolution=resolution, align=align)
    assert grid.width > 0 and grid.height > 0
    assert grid.width % align == 0 and grid.height % align == 0
    step = resolution * align
    for origin in (grid.x0, grid.y0):
        assert abs(origin / step - round(origin / step)) < 1e-6
    to_grid = Transformer.from_crs(4326, grid.epsg, always_xy=True)
    w, s, e, n = bbox
    x, y = to_grid.transform([w, e, e, w], [s, s, n, n])
    left, bottom, right, top = grid.bounds
    half = resolution / 2
    assert np.all((left - half <= np.asarray(x)) & (np.asarray(x) <= right + half))
    assert np.all((bottom - half <= np.asarray(y)) & (np.asarray(y) <= top + half))


grid_args = st.one_of(any_float, st.integers(-10**20, 10**20), st.none(), st.booleans(),
                      st.text(max_size=6), st.just(np.float32(10)))


@FAST
@given(st.one_of(bbox_values, valid_bboxes()), grid_args,
       st.one_of(st.none(), st.integers(-5, 10**6), st.sampled_from([4326, 3857, 4978, 2263])),
       st.one_of(st.integers(-5, 10**8), any_float, st.text(max_size=3)))
def test_from_bbox_gives_a_grid_or_a_geoflow_error(bbox, resolution, epsg, align) -> None:  # type: ignore[no-untyped-def]
    try:
        grid = GridSpec.from_bbox(bbox, resolution=resolution, epsg=epsg, align=align)
    except GeoflowError as err:
        assert err.hint
        return
    assert grid.width > 0 and grid.height > 0 and grid.width * grid.height <= 10**12
    assert all(math.isfinite(v) for v in grid.bounds)
