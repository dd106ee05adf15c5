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
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

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

Bbox = tuple[float, float, float, float]
_BBOX_FORMAT = "pass the bbox as W,S,E,N in degrees (lon/lat), e.g. 11.0,45.0,11.2,45.2"


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
    if isinstance(value, str):
        parts: list[Any] = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, Sequence) or hasattr(value, "__iter__"):
        parts = list(value)
    else:
        raise RequestError(f"bbox must be a string or 4 numbers, got {type(value).__name__}",
                           hint=_BBOX_FORMAT)
    if len(parts) != 4:
        raise RequestError(f"bbox needs 4 values (W,S,E,N), got {len(parts)}: {value!r}",
                           hint=_BBOX_FORMAT)
    numbers: list[float] = []
    for name, part in zip(("west", "south", "east", "north"), parts, strict=True):
        try:
            if isinstance(part, bool):
                raise TypeError
            number = float(part)
        except (TypeError, ValueError):
            raise RequestError(f"bbox {name} value {part!r} is not a number",
                               hint=_BBOX_FORMAT) from None
        if not math.isfinite(number):
            raise RequestError(f"bbox {name} value {part!r} is not a finite number",
                               hint=_BBOX_FORMAT)
        numbers.append(number)
    west, south, east, north = numbers
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


def _timestamp(value: Any, what: str) -> tuple[pd.Timestamp, bool]:
    """A UTC timestamp and whether the input named a whole day (no time of day)."""
    if isinstance(value, pd.Timestamp | datetime):
        ts = pd.Timestamp(value)
        day_only = False
    elif isinstance(value, date):
        ts = pd.Timestamp(value)
        day_only = True
    elif isinstance(value, str):
        text = value.strip()
        if not text or text == "..":
            raise RequestError(f"{what} date is missing ({value!r})",
                               hint="give both dates, e.g. 2024-06-01/2024-06-30 (open ranges "
                                    "are not supported)")
        day_only = re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) is not None
        try:
            # pandas reads words like "June" as year 1: insist on ISO 8601's YYYY-MM-DD start.
            if not re.match(r"\d{4}-\d{2}-\d{2}", text):
                raise ValueError(text)
            ts = pd.Timestamp(text)
        except (ValueError, TypeError, OverflowError):
            raise RequestError(f"{what} date {value!r} is not a date",
                               hint="use ISO 8601 dates, e.g. 2024-06-01/2024-06-30 or "
                                    "2024-06-01T10:00:00Z/2024-06-02T00:00:00Z") from None
    else:
        raise RequestError(f"{what} date {value!r} is not a date or a string",
                           hint="use ISO 8601 dates, e.g. 2024-06-01/2024-06-30")
    if ts is pd.NaT or pd.isna(ts):
        raise RequestError(f"{what} date {value!r} is not a date",
                           hint="use ISO 8601 dates, e.g. 2024-06-01/2024-06-30")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts, day_only


def parse_dates(value: str | Sequence[Any]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Parse and check a date range; the end date is inclusive.

    Parameters
    ----------
    value
        ``"START/END"`` (ISO 8601 dates or date-times), a single day ``"2024-06-01"``, or a
        pair ``(start, end)`` of strings, dates or datetimes. Naive times are UTC.

    Returns
    -------
    tuple of pandas.Timestamp
        ``(start, end)`` in UTC. A date without a time of day ends at the end of that day.

    Raises
    ------
    RequestError
        Not two dates, a string that is not a date, or start after end.

    Examples
    --------
    >>> start, end = parse_dates("2024-06-01/2024-06-30")
    >>> start.isoformat(), end.isoformat()
    ('2024-06-01T00:00:00+00:00', '2024-06-30T23:59:59.999999+00:00')
    """
    hint = "pass dates as START/END, e.g. 2024-06-01/2024-06-30"
    if isinstance(value, str):
        parts: list[Any] = value.split("/")
        if len(parts) == 1:
            parts = [parts[0], parts[0]]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise RequestError(f"dates must be a 'START/END' string or a pair, got {value!r}",
                           hint=hint)
    if len(parts) != 2:
        raise RequestError(f"dates need a start and an end, got {len(parts)} values: {value!r}",
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


def _max_area(max_area_km2: float | None) -> float:
    if max_area_km2 is not None:
        return float(max_area_km2)
    env = os.environ.get(MAX_AREA_ENV)
    if env is None or not env.strip():
        return DEFAULT_MAX_AREA_KM2
    try:
        limit = float(env)
    except ValueError:
        raise RequestError(f"{MAX_AREA_ENV}={env!r} is not a number",
                           hint=f"set {MAX_AREA_ENV} to an area in km², e.g. 100000") from None
    if not limit > 0:
        raise RequestError(f"{MAX_AREA_ENV}={env!r} must be positive",
                           hint=f"set {MAX_AREA_ENV} to an area in km², e.g. 100000")
    return limit


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
        Largest Sentinel-2 scene cloud cover in percent (0..100), or None for no limit.

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
            try:
                cloud = float(self.max_cloud)
            except (TypeError, ValueError):
                raise RequestError(f"max_cloud {self.max_cloud!r} is not a number",
                                   hint="give a cloud cover limit in percent, 0..100") from None
            if not 0.0 <= cloud <= 100.0:
                raise RequestError(f"max_cloud {self.max_cloud!r} is outside 0..100",
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
            Largest bbox area allowed; default from ``GEOFLOW_MAX_AREA_KM2`` or 25 000 km².

        Raises
        ------
        RequestError
            The bbox is larger than the area limit.

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
            Area limit (default: ``GEOFLOW_MAX_AREA_KM2`` or 25 000 km²).

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
    "MAX_AREA_ENV",
    "Request",
    "bbox_area_km2",
    "parse_bbox",
    "parse_dates",
]
