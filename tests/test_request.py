"""Request validation: every bad input gives a RequestError that names the problem and the fix."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoflow.errors import GeoflowError, RequestError
from geoflow.request import (
    DEFAULT_MAX_AREA_KM2,
    MAX_AREA_ENV,
    Request,
    bbox_area_km2,
    parse_bbox,
    parse_dates,
)

lons = st.floats(-180, 180, allow_nan=False)
lats = st.floats(-90, 90, allow_nan=False)


@st.composite
def valid_bboxes(draw: st.DrawFn) -> tuple[float, float, float, float]:
    w, e = sorted(draw(st.lists(lons, min_size=2, max_size=2, unique=True)))
    s, n = sorted(draw(st.lists(lats, min_size=2, max_size=2, unique=True)))
    return (w, s, e, n)


@settings(deadline=None)
@given(valid_bboxes())
def test_parse_bbox_roundtrips_strings_and_sequences(bbox: tuple[float, ...]) -> None:
    assert parse_bbox(bbox) == bbox
    assert parse_bbox(",".join(repr(v) for v in bbox)) == bbox
    assert parse_bbox(" ".join(repr(v) for v in bbox)) == bbox


@settings(deadline=None)
@given(valid_bboxes())
def test_swapped_bbox_says_which_pair_is_out_of_order(bbox: tuple[float, ...]) -> None:
    w, s, e, n = bbox
    with pytest.raises(RequestError, match=r"west .* is not less than east"):
        parse_bbox((e, s, w, n))
    with pytest.raises(RequestError, match=r"south .* is not less than north"):
        parse_bbox((w, n, e, s))


@settings(deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: abs(v) > 180))
def test_longitude_out_of_range(lon: float) -> None:
    with pytest.raises(RequestError, match=r"longitude .* outside -180..180") as info:
        parse_bbox((lon, 0, 179.5, 1) if lon < 0 else (-1, 0, lon, 1))
    assert "W,S,E,N" in str(info.value)


@settings(deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: abs(v) > 90))
def test_latitude_out_of_range(lat: float) -> None:
    with pytest.raises(RequestError, match=r"latitude .* outside -90..90"):
        parse_bbox((0, lat, 1, 89.5) if lat < 0 else (0, -1, 1, lat))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("1,2,3", "needs 4 values.*got 3"),
        ([1, 2, 3, 4, 5], "needs 4 values.*got 5"),
        ("a,2,3,4", "west value 'a' is not a number"),
        ((0, None, 1, 1), "south value None is not a number"),
        ((0, 0, float("nan"), 1), "east value nan is not a finite number"),
        ((0, 0, 1, True), "north value True is not a number"),
        (42, "must be a string or 4 numbers"),
        ("", "needs 4 values"),
    ],
)
def test_malformed_bbox(value: object, match: str) -> None:
    with pytest.raises(RequestError, match=match) as info:
        parse_bbox(value)  # type: ignore[arg-type]
    assert info.value.hint and "W,S,E,N" in info.value.hint
    assert isinstance(info.value, GeoflowError) and isinstance(info.value, ValueError)


@settings(deadline=None)
@given(valid_bboxes())
def test_area_is_positive_and_at_most_the_whole_earth(bbox: tuple[float, ...]) -> None:
    area = bbox_area_km2(bbox)
    assert 0 <= area <= 4 * math.pi * 6371.0072**2 * 1.0001


def test_area_of_one_degree_at_equator_and_60n() -> None:
    assert bbox_area_km2((0, 0, 1, 1)) == pytest.approx(12364, rel=2e-3)
    # 1°x1° at 60°N is about half the equatorial cell.
    assert bbox_area_km2((0, 59.5, 1, 60.5)) / bbox_area_km2((0, -0.5, 1, 0.5)) == (
        pytest.approx(0.5, abs=0.005))


days = st.dates(min_value=pd.Timestamp("1990-01-01").date(),
                max_value=pd.Timestamp("2090-01-01").date())


@settings(deadline=None)
@given(days, days)
def test_dates_are_utc_and_end_day_inclusive(a, b) -> None:  # type: ignore[no-untyped-def]
    start_day, end_day = sorted((a, b))
    start, end = parse_dates(f"{start_day.isoformat()}/{end_day.isoformat()}")
    assert start == pd.Timestamp(start_day, tz="UTC")
    assert end.floor("D") == pd.Timestamp(end_day, tz="UTC")
    assert end + pd.Timedelta(microseconds=1) == pd.Timestamp(end_day, tz="UTC") + pd.Timedelta(
        days=1)
    assert parse_dates((start_day, end_day)) == (start, end)


@settings(deadline=None)
@given(days, days)
def test_start_after_end_is_rejected(a, b) -> None:  # type: ignore[no-untyped-def]
    if a == b:
        return
    late, early = max(a, b), min(a, b)
    with pytest.raises(RequestError, match="is after end") as info:
        parse_dates(f"{late}/{early}")
    assert "swap" in (info.value.hint or "")


def test_dates_with_times_and_zones() -> None:
    start, end = parse_dates("2024-06-01T10:00:00+02:00/2024-06-01T12:00:00Z")
    assert start == pd.Timestamp("2024-06-01T08:00:00Z")
    assert end == pd.Timestamp("2024-06-01T12:00:00Z")
    single = parse_dates("2024-06-01")
    assert single[1] - single[0] == pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("2024-13-01/2024-12-01", "start date '2024-13-01' is not a date"),
        ("2024-06-01/June", "end date 'June' is not a date"),
        ("2024-06-01/2024-06-02/2024-06-03", "start and an end, got 3"),
        ("../2024-06-01", "start date is missing"),
        ("2024-06-01/", "end date is missing"),
        (("2024-06-01",), "start and an end, got 1"),
        (20240601, "must be a 'START/END' string"),
    ],
)
def test_bad_dates(value: object, match: str) -> None:
    with pytest.raises(RequestError, match=match) as info:
        parse_dates(value)  # type: ignore[arg-type]
    assert "2024-06-01/2024-06-30" in (info.value.hint or "")


def test_area_limit_default_argument_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_AREA_ENV, raising=False)
    big = "10,45,13,47"  # ~52,000 km2
    assert bbox_area_km2(parse_bbox(big)) > DEFAULT_MAX_AREA_KM2
    with pytest.raises(RequestError, match="more than the limit of 25000 km²") as info:
        Request.from_user(big, "2024-06-01/2024-06-30")
    assert "max_area_km2=" in str(info.value) and MAX_AREA_ENV in str(info.value)
    assert Request.from_user(big, "2024-06-01/2024-06-30", max_area_km2=60_000).bbox == (
        10.0, 45.0, 13.0, 47.0)
    monkeypatch.setenv(MAX_AREA_ENV, "60000")
    assert Request.from_user(big, "2024-06-01/2024-06-30").area_km2 < 60_000
    monkeypatch.setenv(MAX_AREA_ENV, "1")
    with pytest.raises(RequestError, match="limit of 1 km²"):
        Request.from_user("10,45,10.1,45.1", "2024-06-01/2024-06-30")
    monkeypatch.setenv(MAX_AREA_ENV, "lots")
    with pytest.raises(RequestError, match=f"{MAX_AREA_ENV}='lots' is not a number"):
        Request.from_user("10,45,10.1,45.1", "2024-06-01/2024-06-30")


@settings(deadline=None)
@given(st.floats(allow_nan=False).filter(lambda v: not 0 <= v <= 100))
def test_max_cloud_outside_0_100(value: float) -> None:
    with pytest.raises(RequestError, match=r"max_cloud .* outside 0..100"):
        Request.from_user("10,45,10.1,45.1", "2024-06-01/2024-06-30", max_cloud=value)


@settings(max_examples=30, deadline=None)
@given(valid_bboxes(), days, days, st.none() | st.floats(0, 100))
def test_request_is_a_normalised_value(bbox, a, b, cloud) -> None:  # type: ignore[no-untyped-def]
    start_day, end_day = sorted((a, b))
    req = Request(list(bbox), str(start_day), pd.Timestamp(end_day), cloud)  # type: ignore[arg-type]
    same = Request(bbox, pd.Timestamp(start_day, tz="UTC"), str(end_day), cloud)
    assert req == same and hash(req) == hash(same)
    assert req.start.tz is not None and str(req.start.tz) == "UTC"
    d = req.to_dict()
    assert d["bbox"] == list(bbox) and d["datetime"] == req.datetime
    assert d["datetime"].count("Z") == 2


def test_request_is_frozen() -> None:
    req = Request.from_user("10,45,10.1,45.1", "2024-06-01/2024-06-30")
    with pytest.raises(AttributeError):
        req.max_cloud = 5  # type: ignore[misc]
