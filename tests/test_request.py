"""Request validation: every bad input gives a RequestError that names the problem and the fix."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoflow.errors import GeoflowError, RequestError
from geoflow.request import (
    DEFAULT_MAX_AREA_KM2,
    FIRST_DATE,
    LAST_DATE,
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
        # Inputs that used to escape as OverflowError or be read as numbers nobody meant.
        ((10**400, 0, 1, 1), "west value 1000.* is not a finite number"),
        ("1e400,0,1,1", "west value '1e400' is not a finite number"),
        ("nan,0,1,1", "west value 'nan' is not a finite number"),
        ("0x10,0,1,1", "west value '0x10' is not a number"),
        ("1_0,0,11,1", "west value '1_0' is not a number"),
        ("\u0661,0,2,1", "west value '\u0661' is not a number"),
        ("   ", "needs 4 values.*got 0"),
        (None, "must be a string or 4 numbers, got NoneType"),
        (b"1,2,3,4", "must be text or 4 numbers, got bytes"),
        (memoryview(b"1234"), "must be text or 4 numbers, got memoryview"),
        ({1, 2, 3, 4}, "4 numbers in order, got set"),
        ({"w": 1, "s": 2, "e": 3, "n": 4}, "4 numbers in order, got dict"),
        (np.float64(1.0), "must be a string or 4 numbers"),
        (np.array(1.0), "must be a string or 4 numbers"),
        ([[1], [2], [3], [4]], "west value \\[1\\] is not a number"),
        ((0, 0, complex(1, 0), 1), "east value .* is not a number"),
        ("1" * 100_000, "needs 4 values .*, got 1: '1111.*characters\\)\\. Fix"),
    ],
)
def test_malformed_bbox(value: object, match: str) -> None:
    with pytest.raises(RequestError, match=match) as info:
        parse_bbox(value)  # type: ignore[arg-type]
    assert info.value.hint and "W,S,E,N" in info.value.hint
    assert len(info.value.message) < 200  # a huge input is shortened, not echoed
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


days = st.dates(min_value=FIRST_DATE, max_value=LAST_DATE)


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
        # Far past and future: these used to escape as pandas' OutOfBoundsDatetime.
        ("2300-01-01/2300-02-01", "start date '2300-01-01' is outside the supported range "
                                  "2014-01-01..2100-12-31"),
        ("9999-12-31", "start date '9999-12-31' is outside the supported range"),
        ("0001-01-01/0002-01-01", "start date '0001-01-01' is outside the supported range"),
        ("2262-04-12", "outside the supported range"),
        ("2024-06-01/12024-06-01", "end date '12024-06-01' has a year of more than 4 digits"),
        ("2013-12-31/2024-06-01", "start date '2013-12-31' is outside the supported range"),
        ("2101-01-01", "outside the supported range"),
        ("2014-01-01T00:30:00+01:00/2024-06-01", "outside the supported range"),
        ((date(1, 1, 1), date(2, 1, 1)), "outside the supported range"),
        ((datetime(9999, 1, 1), datetime(9999, 1, 2)), "outside the supported range"),
        ((np.datetime64("2300-01-01"), "2300-02-01"), "outside the supported range"),
        # Days, times and zones that do not exist (some were read as something else before).
        ("2024-02-30", "start date '2024-02-30' is not a date \\(day is out of range"),
        ("2024-06-01T25:00", "invalid time of day"),
        ("2024-06-01T23:60", "invalid time of day"),
        ("2024-06-01T10:00:00+25:00", "invalid UTC offset \\+25:00"),
        ("2024-06-01T10:00:00+02:75", "invalid UTC offset"),
        ("2024-06-01T10:00:00 EST", "is not a date"),  # pandas dropped EST with a warning
        ("2024-06-01 10:00 PM", "is not a date"),
        ("2024-06-01x10:00", "is not a date"),
        ("\uff12\uff10\uff12\uff14-06-01", "is not a date"),  # full-width digits
        ("2024-06-01T10:00:00\x00", "is not a date"),
        ("   ", "start date is missing"),
        (("2024-06-01" + "0" * 100_000, "2024-06-02"), "characters\\) is not a date"),
        ((None, "2024-06-01"), "start date None is not a date or a string"),
        ((b"2024-06-01", "2024-06-02"), "start date b'2024-06-01' is not a date or a string"),
        ((np.datetime64("NaT"), "2024-06-01"), "start date is missing \\(NaT\\)"),
        ((pd.NaT, "2024-06-01"), "start date is missing \\(NaT\\)"),
        ((True, False), "start date True is not a date or a string"),
        (b"2024-06-01/2024-06-02", "must be a 'START/END' string or a pair"),
    ],
)
def test_bad_dates(value: object, match: str) -> None:
    with pytest.raises(RequestError, match=match) as info:
        parse_dates(value)  # type: ignore[arg-type]
    assert "2024-06-01/2024-06-30" in (info.value.hint or "")
    assert len(info.value.message) < 250


def test_supported_range_is_documented_in_the_error() -> None:
    with pytest.raises(RequestError) as info:
        Request.from_user("11,45,11.1,45.1", "2300-01-01/2300-02-01")
    assert "2014-01-01" in info.value.hint and "2100-12-31" in info.value.hint  # type: ignore
    assert "Sentinel-1" in info.value.hint  # type: ignore[operator]


def test_future_dates_within_the_range_parse() -> None:
    start, end = parse_dates("2099-06-01/2100-12-31")
    assert start == pd.Timestamp("2099-06-01", tz="UTC")
    assert end == pd.Timestamp("2101-01-01", tz="UTC") - pd.Timedelta(microseconds=1)
    assert parse_dates("2014-01-01")[0] == pd.Timestamp("2014-01-01", tz="UTC")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-06-01T10", "2024-06-01T10:00:00Z"),
        ("2024-06-01 10:00", "2024-06-01T10:00:00Z"),
        ("2024-06-01t10:00:00z", "2024-06-01T10:00:00Z"),
        ("2024-06-01T10:00:00+0530", "2024-06-01T04:30:00Z"),
        ("2024-06-01T10:00:00-02", "2024-06-01T12:00:00Z"),
        ("2024-06-01T10:00:00.1234567891", "2024-06-01T10:00:00.123456Z"),
        ("2024-06-01T10:00:00,5Z", "2024-06-01T10:00:00.500000Z"),
        (" 2024-06-01T10:00:00Z ", "2024-06-01T10:00:00Z"),
    ],
)
def test_iso_8601_forms_that_parse(value: str, expected: str) -> None:
    start, end = parse_dates(f"{value}/{value}")
    assert start == end == pd.Timestamp(expected)


def test_dates_objects_with_time_zones() -> None:
    plus5 = timezone(timedelta(hours=5))
    start, end = parse_dates((datetime(2024, 6, 1, 5, tzinfo=plus5),
                              np.datetime64("2024-06-02T00:00")))
    assert start == pd.Timestamp("2024-06-01T00:00Z") and str(start.tz) == "UTC"
    assert end == pd.Timestamp("2024-06-02T00:00Z")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_cloud": "abc"}, "max_cloud 'abc' is not a number"),
        ({"max_cloud": float("nan")}, "max_cloud nan is outside 0..100"),
        ({"max_cloud": "nan"}, "max_cloud 'nan' is not a finite number"),
        ({"max_cloud": 10**400}, "max_cloud 1000.* is outside 0..100"),
        ({"max_cloud": True}, "max_cloud True is not a number"),
        ({"max_cloud": b"5"}, "max_cloud b'5' is not a number"),
        ({"max_cloud": np.array([1, 2])}, "max_cloud array.* is not a number"),
        ({"max_area_km2": "abc"}, "max_area_km2='abc' is not a number"),
        ({"max_area_km2": float("nan")}, "max_area_km2=nan must be a positive number"),
        ({"max_area_km2": 0}, "max_area_km2=0 must be a positive number"),
        ({"max_area_km2": -5}, "max_area_km2=-5 must be a positive number"),
        ({"max_area_km2": []}, "max_area_km2=\\[\\] is not a number"),
        ({"max_area_km2": complex(1, 1)}, "max_area_km2=.* is not a number"),
    ],
)
def test_bad_limits(kwargs: dict, match: str) -> None:
    with pytest.raises(RequestError, match=match) as info:
        Request.from_user("10,45,10.1,45.1", "2024-06-01/2024-06-30", **kwargs)
    assert info.value.hint


def test_limits_as_numbers_or_decimal_strings() -> None:
    req = Request.from_user("10,45,10.1,45.1", "2024-06-01", max_cloud="50",
                            max_area_km2="100000")
    assert req.max_cloud == 50.0
    assert Request.from_user("10,45,13,47", "2024-06-01", max_area_km2=math.inf).area_km2 > 0
    assert Request.from_user("10,45,10.1,45.1", "2024-06-01",
                             max_cloud=np.float32(20)).max_cloud == 20.0


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
    monkeypatch.setenv(MAX_AREA_ENV, "nan")
    with pytest.raises(RequestError, match=f"{MAX_AREA_ENV}='nan' is not a finite number"):
        Request.from_user("10,45,10.1,45.1", "2024-06-01/2024-06-30")
    monkeypatch.setenv(MAX_AREA_ENV, "-1")
    with pytest.raises(RequestError, match=f"{MAX_AREA_ENV}='-1' must be a positive number"):
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
