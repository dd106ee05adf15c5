"""What the user asks for: a bbox in lon/lat, a date range and a cloud limit, validated early.

Every bad input raises :class:`geoflow.errors.RequestError` naming the problem and the fix,
before any catalog is searched or any pixel is read.

Examples
--------
>>> from geoflow.request import Request
>>> req = Request.from_user("11.0,45.0,11.1,45.1", "2024-06-01/2024-06-30", max_cloud=60)
>>> req.bbox
(11.0, 45.0, 11.1, 45.1)
>>> req.datetime
'2024-06-01T00:00:00Z/2024-06-30T23:59:59.999999Z'
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence, Set
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

from geoflow.errors import RequestError

#: Default largest bbox area a request may cover, in km² (raise it with ``max_area_km2=``
#: or the environment variable ``GEOFLOW_MAX_AREA_KM2``).
DEFAULT_MAX_AREA_KM2 = 25_000.0
#: Environment variable that raises (or lowers) the area limit.
MAX_AREA_ENV = "GEOFLOW_MAX_AREA_KM2"

# Radius of the sphere with the WGS84 ellipsoid's surface area: a lon/lat rectangle's area on it
# is exact in closed form and within ~0.5 % of the ellipsoidal area at any latitude.
_AUTHALIC_RADIUS_KM = 6371.0072

#: First and last day (UTC, inclusive) a request may cover. Sentinel-1 data start in 2014 and
#: Sentinel-2 in 2015; the end leaves room for future requests while keeping every timestamp
#: far inside pandas' nanosecond range (which ends in 2262).
FIRST_DATE = date(2014, 1, 1)
LAST_DATE = date(2100, 12, 31)
_FIRST_TS = pd.Timestamp(FIRST_DATE, tz="UTC")
_END_TS = pd.Timestamp(LAST_DATE + timedelta(days=1), tz="UTC")  # exclusive

Bbox = tuple[float, float, float, float]
_BBOX_FORMAT = "pass the bbox as W,S,E,N in degrees (lon/lat), e.g. 11.0,45.0,11.2,45.2"
_DATES_FORMAT = ("use ISO 8601 dates, e.g. 2024-06-01/2024-06-30 or "
                 "2024-06-01T10:00:00Z/2024-06-02T00:00:00Z")
# A plain decimal number: Python's float() also takes "1_0", "0x..."-like junk via int paths,
# non-ASCII digits and "nan"/"inf", none of which a user means as a coordinate.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# ISO 8601 extended format: a date, optionally a time (hh, hh:mm or hh:mm:ss[.f]) and a zone.
_ISO_DATETIME = re.compile(
    r"(?P<y>[0-9]{4})-(?P<m>[0-9]{2})-(?P<d>[0-9]{2})"
    r"(?:[Tt ](?P<H>[0-9]{2})(?::(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?:[.,](?P<f>[0-9]+))?)?)?"
    r"(?P<tz>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?")


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened so that a huge input cannot flood an error message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _label(what: str, value: Any) -> str:
    """``what value`` for messages; ``NAME=value`` when ``what`` ends with ``=``."""
    return f"{what}{_show(value)}" if what.endswith("=") else f"{what} {_show(value)}"


def _number(value: Any, what: str, hint: str) -> float:
    """A float from a real number or a plain decimal string; NaN and inf are returned as is.

    Bools, bytes, complex numbers, arrays and other objects are refused, as are strings that
    Python's ``float`` reads but a person would not write as a number (``"1_0"``, ``"nan"``,
    non-ASCII digits).
    """
    if isinstance(value, bool | np.bool_):
        raise RequestError(f"{_label(what, value)} is not a number", hint=hint)
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL.fullmatch(text):
            if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise RequestError(f"{_label(what, value)} is not a finite number", hint=hint)
            raise RequestError(f"{_label(what, value)} is not a number", hint=hint)
        return float(text)  # a huge exponent gives inf, a tiny one 0.0: never an exception
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except (OverflowError, ValueError, TypeError):
            # Beyond float's range (a huge int): too large for a coordinate or a limit anyway.
            return math.inf if value > 0 else -math.inf  # type: ignore[operator]
    raise RequestError(f"{_label(what, value)} is not a number", hint=hint)


def parse_bbox(value: str | Sequence[Any]) -> Bbox:
    """Parse and check a lon/lat bounding box.

    Parameters
    ----------
    value
        ``"W,S,E,N"`` (commas and/or spaces) or a sequence of four numbers, in degrees.

    Returns
    -------
    tuple of float
        ``(west, south, east, north)``.

    Raises
    ------
    RequestError
        Wrong number of values, a value that is not a finite number, a longitude outside
        -180..180 or latitude outside -90..90, west not less than east or south not less than
        north.

    Examples
    --------
    >>> parse_bbox("11.0, 45.0, 11.2, 45.2")
    (11.0, 45.0, 11.2, 45.2)
    >>> parse_bbox([11, 45, 11.2, 45.2])
    (11.0, 45.0, 11.2, 45.2)
    """
    if isinstance(value, bytes | bytearray | memoryview):
        raise RequestError(f"bbox must be text or 4 numbers, got {type(value).__name__}",
                           hint=f"{_BBOX_FORMAT} (decode bytes first)")
    if isinstance(value, str):
        parts: list[Any] = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, Set | Mapping):
        # Sets and dicts have no W,S,E,N order.
        raise RequestError(f"bbox must be a string or 4 numbers in order, got "
                           f"{type(value).__name__}", hint=_BBOX_FORMAT)
    elif isinstance(value, Sequence) or hasattr(value, "__iter__"):
        try:
            parts = list(value)
        except TypeError:  # e.g. a 0-d numpy array
            raise RequestError(f"bbox must be a string or 4 numbers, got {_show(value)}",
                               hint=_BBOX_FORMAT) from None
    else:
        raise RequestError(f"bbox must be a string or 4 numbers, got {type(value).__name__}",
                           hint=_BBOX_FORMAT)
    if len(parts) != 4:
        raise RequestError(f"bbox needs 4 values (W,S,E,N), got {len(parts)}: {_show(value)}",
                           hint=_BBOX_FORMAT)
    numbers_: list[float] = []
    for name, part in zip(("west", "south", "east", "north"), parts, strict=True):
        number = _number(part, f"bbox {name} value", _BBOX_FORMAT)
        if not math.isfinite(number):
            raise RequestError(f"bbox {name} value {_show(part)} is not a finite number",
                               hint=_BBOX_FORMAT)
        numbers_.append(number + 0.0)  # + 0.0 turns -0.0 into 0.0: one bbox, one value
    west, south, east, north = numbers_
    for name, lon in (("west", west), ("east", east)):
        if not -180.0 <= lon <= 180.0:
            raise RequestError(f"bbox {name} longitude {lon} is outside -180..180",
                               hint=f"{_BBOX_FORMAT}; did you pass projected metres or "
                                    "swap lon and lat?")
    for name, lat in (("south", south), ("north", north)):
        if not -90.0 <= lat <= 90.0:
            raise RequestError(f"bbox {name} latitude {lat} is outside -90..90",
                               hint=f"{_BBOX_FORMAT}; did you swap lon and lat?")
    if not west < east:
        raise RequestError(f"bbox west ({west}) is not less than east ({east})",
                           hint=f"{_BBOX_FORMAT}; the order is west, south, east, north "
                                "(bboxes crossing the antimeridian are not supported: split them)")
    if not south < north:
        raise RequestError(f"bbox south ({south}) is not less than north ({north})",
                           hint=f"{_BBOX_FORMAT}; the order is west, south, east, north")
    return (west, south, east, north)


def bbox_area_km2(bbox: Sequence[float]) -> float:
    """Area of a lon/lat rectangle in km² (exact on the authalic sphere).

    Examples
    --------
    >>> round(bbox_area_km2((0.0, 0.0, 1.0, 1.0)))
    12364
    """
    west, south, east, north = (float(v) for v in bbox)
    r = _AUTHALIC_RADIUS_KM
    return r * r * math.radians(east - west) * (
        math.sin(math.radians(north)) - math.sin(math.radians(south)))


def _parse_iso(text: str, what: str, value: Any) -> tuple[datetime, bool]:
    """A datetime from strict ISO 8601 text (naive means UTC) and whether it named a whole day.

    pandas' own parser is lenient (it reads "June" as year 1, drops unknown zone names with a
    warning, takes "10:00 PM"), so the format is checked here and the fields built by hand.
    """
    match = _ISO_DATETIME.fullmatch(text)
    if match is None:
        if re.match(r"[0-9]{5,}-", text):
            raise RequestError(f"{what} date {_show(value)} has a year of more than 4 digits",
                               hint=f"give dates from {FIRST_DATE} to {LAST_DATE}; "
                                    f"{_DATES_FORMAT}")
        raise RequestError(f"{what} date {_show(value)} is not a date", hint=_DATES_FORMAT)
    g = match.groupdict()
    try:
        day = datetime(int(g["y"]), int(g["m"]), int(g["d"]))
    except ValueError as err:  # month 13, 30 February, year 0
        raise RequestError(f"{what} date {_show(value)} is not a date ({err})",
                           hint=_DATES_FORMAT) from None
    if g["H"] is None:
        return day, True
    fraction = (g["f"] or "")[:6].ljust(6, "0")  # STAC times go to microseconds
    try:
        moment = day.replace(hour=int(g["H"]), minute=int(g["M"] or 0),
                             second=int(g["S"] or 0), microsecond=int(fraction))
    except ValueError as err:  # 25:00, 10:61
        raise RequestError(f"{what} date {_show(value)} has an invalid time of day ({err})",
                           hint=_DATES_FORMAT) from None
    zone = g["tz"]
    if zone and zone not in "Zz":
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23 or minutes > 59:
            raise RequestError(f"{what} date {_show(value)} has an invalid UTC offset {zone}",
                               hint=f"UTC offsets run from -23:59 to +23:59 (Z for UTC); "
                                    f"{_DATES_FORMAT}")
        offset = timedelta(hours=hours, minutes=minutes)
        moment = moment.replace(tzinfo=timezone(-offset if zone[0] == "-" else offset))
    elif zone:
        moment = moment.replace(tzinfo=UTC)
    return moment, False


def _timestamp(value: Any, what: str) -> tuple[pd.Timestamp, bool]:
    """A UTC timestamp and whether the input named a whole day (no time of day)."""
    day_only = False
    if value is pd.NaT or (isinstance(value, np.datetime64) and np.isnat(value)):
        raise RequestError(f"{what} date is missing (NaT)",
                           hint="give both dates, e.g. 2024-06-01/2024-06-30")
    if isinstance(value, str):
        text = value.strip()
        if not text or text == "..":
            raise RequestError(f"{what} date is missing ({_show(value)})",
                               hint="give both dates, e.g. 2024-06-01/2024-06-30 (open ranges "
                                    "are not supported)")
        parsed, day_only = _parse_iso(text, what, value)
        raw: Any = parsed
    elif isinstance(value, pd.Timestamp | datetime | np.datetime64):
        raw = value
    elif isinstance(value, date):
        raw, day_only = value, True
    else:
        raise RequestError(f"{what} date {_show(value)} is not a date or a string",
                           hint=_DATES_FORMAT)
    supported = (f"give dates from {FIRST_DATE} to {LAST_DATE} (Sentinel-1 data start in 2014, "
                 f"Sentinel-2 in 2015), e.g. 2024-06-01/2024-06-30")
    try:
        ts = pd.Timestamp(raw)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        inside = _FIRST_TS <= ts < _END_TS
    except (ValueError, OverflowError):  # pandas' OutOfBoundsDatetime: far past or future
        inside = False
    except TypeError:  # a tzinfo pandas cannot use
        raise RequestError(f"{what} date {_show(value)} has a time zone that cannot be read",
                           hint="use a UTC offset (datetime.timezone) or a zoneinfo zone"
                           ) from None
    if not inside:
        raise RequestError(f"{what} date {_show(value)} is outside the supported range "
                           f"{FIRST_DATE}..{LAST_DATE}", hint=supported)
    return ts, day_only


def parse_dates(value: str | Sequence[Any]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Parse and check a date range; the end date is inclusive.

    Parameters
    ----------
    value
        ``"START/END"`` (ISO 8601 dates or date-times, extended format:
        ``YYYY-MM-DD[Thh[:mm[:ss[.f]]][Z|±hh[:mm]]]``), a single day ``"2024-06-01"``, or a
        pair ``(start, end)`` of strings, dates, datetimes or ``numpy.datetime64``. Naive
        times are UTC. Both ends must lie in :data:`FIRST_DATE` .. :data:`LAST_DATE`
        (2014-01-01 .. 2100-12-31, UTC): Sentinel-1 data start in 2014.

    Returns
    -------
    tuple of pandas.Timestamp
        ``(start, end)`` in UTC. A date without a time of day ends at the end of that day.

    Raises
    ------
    RequestError
        Not two dates, a string that is not an ISO 8601 date (or names a day, time or UTC
        offset that does not exist), a date outside the supported range, or start after end.

    Examples
    --------
    >>> start, end = parse_dates("2024-06-01/2024-06-30")
    >>> start.isoformat(), end.isoformat()
    ('2024-06-01T00:00:00+00:00', '2024-06-30T23:59:59.999999+00:00')
    >>> parse_dates("2300-01-01/2300-02-01")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geoflow.errors.RequestError: start date '2300-01-01' is outside the supported range ...
    """
    hint = "pass dates as START/END, e.g. 2024-06-01/2024-06-30"
    if isinstance(value, str):
        parts: list[Any] = value.split("/")
        if len(parts) == 1:
            parts = [parts[0], parts[0]]
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray | memoryview):
        parts = list(value)
    else:
        raise RequestError(f"dates must be a 'START/END' string or a pair, got {_show(value)}",
                           hint=hint)
    if len(parts) != 2:
        raise RequestError(f"dates need a start and an end, got {len(parts)} values: "
                           f"{_show(value)}",
                           hint=hint)
    start, _ = _timestamp(parts[0], "start")
    end, end_day_only = _timestamp(parts[1], "end")
    if end_day_only:
        # The end date is inclusive: the whole day counts.
        end = end + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    if start > end:
        raise RequestError(f"start {start.isoformat()} is after end {end.isoformat()}",
                           hint="swap the dates; the order is START/END")
    return start, end


def _area_limit(value: Any, what: str, hint: str) -> float:
    """A positive area limit in km² (``inf`` means no limit)."""
    limit = _number(value, what, hint)
    if math.isnan(limit) or not limit > 0:
        raise RequestError(f"{_label(what, value)} must be a positive number", hint=hint)
    return limit


def _max_area(max_area_km2: Any) -> float:
    if max_area_km2 is not None:
        return _area_limit(max_area_km2, "max_area_km2=",
                           "give the largest bbox area in km², e.g. max_area_km2=100000")
    env = os.environ.get(MAX_AREA_ENV)
    if env is None or not env.strip():
        return DEFAULT_MAX_AREA_KM2
    return _area_limit(env, f"{MAX_AREA_ENV}=",
                       f"set {MAX_AREA_ENV} to an area in km², e.g. 100000")


def _iso_z(ts: pd.Timestamp) -> str:
    text = ts.tz_convert("UTC").tz_localize(None).isoformat()
    return f"{text}Z"


@dataclass(frozen=True)
class Request:
    """A validated mapping request: where, when and how cloudy at most.

    Parameters
    ----------
    bbox
        ``(west, south, east, north)`` in degrees.
    start, end
        UTC timestamps, both inclusive.
    max_cloud
        Largest Sentinel-2 scene cloud cover in percent (0..100; a number or a decimal string),
        or None for no limit.

    Examples
    --------
    >>> req = Request.from_user([11.0, 45.0, 11.1, 45.1], ("2024-06-01", "2024-06-02"))
    >>> round(req.area_km2, 1)
    87.4
    >>> Request.from_user("11,45,12,46", "2024-06-01", max_area_km2=100)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geoflow.errors.RequestError: bbox covers 8666 km², more than the limit of 100 km². Fix: ...
    """

    bbox: Bbox
    start: pd.Timestamp
    end: pd.Timestamp
    max_cloud: float | None = None

    def __post_init__(self) -> None:
        # Normalise so that equal requests compare and hash equal whatever was passed in.
        object.__setattr__(self, "bbox", parse_bbox(self.bbox))
        start, _ = _timestamp(self.start, "start")
        end, _ = _timestamp(self.end, "end")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        if self.max_cloud is not None:
            cloud = _number(self.max_cloud, "max_cloud",
                            "give a cloud cover limit in percent, 0..100")
            if not 0.0 <= cloud <= 100.0:  # NaN fails this too
                raise RequestError(f"max_cloud {_show(self.max_cloud)} is outside 0..100",
                                   hint="give a cloud cover limit in percent, 0..100")
            object.__setattr__(self, "max_cloud", cloud)
        if self.start > self.end:
            raise RequestError(
                f"start {self.start.isoformat()} is after end {self.end.isoformat()}",
                hint="swap the dates; the order is START/END")

    @property
    def area_km2(self) -> float:
        """Area of the bbox in km²."""
        return bbox_area_km2(self.bbox)

    @property
    def datetime(self) -> str:
        """The date range as a STAC ``datetime`` interval, ``"START/END"`` in UTC."""
        return f"{_iso_z(self.start)}/{_iso_z(self.end)}"

    def validate(self, max_area_km2: float | None = None) -> Request:
        """Check the limits that depend on settings; return ``self``.

        Parameters
        ----------
        max_area_km2
            Largest bbox area allowed (a positive number, ``inf`` for no limit); default from
            ``GEOFLOW_MAX_AREA_KM2`` or 25 000 km².

        Raises
        ------
        RequestError
            The bbox is larger than the area limit, or the limit is not a positive number.

        Examples
        --------
        >>> Request((11.0, 45.0, 11.1, 45.1), "2024-06-01", "2024-06-02").validate().max_cloud
        """
        limit = _max_area(max_area_km2)
        area = self.area_km2
        if area > limit:
            raise RequestError(
                f"bbox covers {area:.0f} km², more than the limit of {limit:.0f} km²",
                hint=f"request a smaller bbox, or raise the limit with max_area_km2= or the "
                     f"environment variable {MAX_AREA_ENV} (e.g. {MAX_AREA_ENV}={area * 2:.0f})")
        return self

    @classmethod
    def from_user(
        cls,
        bbox: str | Sequence[Any],
        dates: str | Sequence[Any],
        max_cloud: float | None = None,
        max_area_km2: float | None = None,
    ) -> Request:
        """Build and validate a request from user input (strings or sequences).

        Parameters
        ----------
        bbox
            ``"W,S,E,N"`` or four numbers, degrees.
        dates
            ``"START/END"`` or a pair; end inclusive.
        max_cloud
            Largest Sentinel-2 scene cloud cover in percent, or None.
        max_area_km2
            Area limit, positive (``inf``: none); default ``GEOFLOW_MAX_AREA_KM2`` or 25 000 km².

        Examples
        --------
        >>> Request.from_user("11,45,11.1,45.1", "2024-06-01/2024-06-02").bbox
        (11.0, 45.0, 11.1, 45.1)
        """
        start, end = parse_dates(dates)
        return cls(parse_bbox(bbox), start, end, max_cloud).validate(max_area_km2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (bbox list, ISO dates), for store attributes and logs.

        Examples
        --------
        >>> Request.from_user("11,45,11.1,45.1", "2024-06-01/2024-06-02").to_dict()["datetime"]
        '2024-06-01T00:00:00Z/2024-06-02T23:59:59.999999Z'
        """
        out = asdict(self)
        out["bbox"] = list(self.bbox)
        out["start"] = _iso_z(self.start)
        out["end"] = _iso_z(self.end)
        out["datetime"] = self.datetime
        return out


__all__ = [
    "DEFAULT_MAX_AREA_KM2",
    "FIRST_DATE",
    "LAST_DATE",
    "MAX_AREA_ENV",
    "Request",
    "bbox_area_km2",
    "parse_bbox",
    "parse_dates",
]
