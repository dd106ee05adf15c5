"""The pixel grid every cube, chunk and map lives on: a small, frozen value object.

A :class:`GridSpec` is a north-up raster grid (like odc-geo's ``GeoBox``): a CRS (EPSG code),
a square pixel size, the top-left corner and the size in pixels. By default a request's grid is
the UTM zone of the bbox centre at 10 m, with its origin on multiples of the pixel size, so
that grids of different requests share one pixel lattice and chunks of a grid are grids too.

Examples
--------
>>> from geoflow.grid import GridSpec
>>> grid = GridSpec.from_bbox((11.0, 45.0, 11.01, 45.01))
>>> grid.epsg, grid.resolution, grid.shape
(32632, 10.0, (114, 82))
>>> grid.window(0, 0, 10, 10).shape
(10, 10)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from geoflow.errors import RequestError

# Points per edge when reprojecting bounds, so curved edges are covered, not just corners.
_DENSIFY = 21

#: Largest grid side and pixel count: beyond these a grid is a mistake (10^7 pixels at 10 m
#: is 100 000 km, more than the Earth's circumference), not a region to map.
MAX_GRID_SIDE = 10_000_000
MAX_GRID_PIXELS = 10**12
#: Largest absolute grid coordinate (CRS units): projected CRSs stay within ~4e7 m.
_MAX_COORD = 1e9
#: Pixel sizes :meth:`GridSpec.from_bbox` accepts, in metres.
MIN_RESOLUTION_M = 0.01
MAX_RESOLUTION_M = 100_000.0
#: Largest scale distortion the default UTM/UPS grid may have at the bbox's edge (3.5 %,
#: about 15° of longitude from a UTM zone's central meridian at the equator).
MAX_SCALE_DISTORTION = 0.035


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone (WGS84) containing a point; UPS beyond 84°N / 80°S.

    The Norway and Svalbard exceptions to the zone layout are ignored: the plain 6° zone is
    used everywhere, which is what a regular grid needs.

    Examples
    --------
    >>> utm_epsg(11.0, 45.0), utm_epsg(-70.6, -33.4), utm_epsg(0.0, 89.0)
    (32632, 32719, 32661)
    """
    if lat > 84.0:
        return 32661
    if lat < -80.0:
        return 32761
    zone = min(max(math.floor((lon + 180.0) / 6.0) + 1, 1), 60)
    return (32600 if lat >= 0.0 else 32700) + zone


@lru_cache(maxsize=64)
def _crs(epsg: int) -> CRS:
    """The CRS of an EPSG code, cached: grids of chunks are made by the thousand."""
    return CRS.from_epsg(epsg)


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened so that a huge input cannot flood an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None,
               hint: str | None = None) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        if isinstance(value, float | np.floating) and float(value).is_integer():
            value = int(value)
        else:
            raise RequestError(f"grid {name} must be an integer, got {_show(value)}",
                               hint=hint or f"pass {name} as a whole number of pixels")
    if value < minimum:
        raise RequestError(f"grid {name} must be at least {minimum}, got {_show(value)}",
                           hint=hint or f"pass a {name} of {minimum} or more")
    if maximum is not None and value > maximum:
        raise RequestError(f"grid {name} must be at most {maximum}, got {_show(value)}",
                           hint=hint or f"pass a {name} of {maximum} or less")
    return int(value)


def _check_float(name: str, value: Any, hint: str) -> float:
    """A finite float from a real number (not a bool); RequestError otherwise."""
    if isinstance(value, bool | np.bool_):
        number = math.nan
    else:
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
        except (TypeError, ValueError):
            raise RequestError(f"grid {name} must be a number, got {_show(value)}",
                               hint=hint) from None
    if not math.isfinite(number):
        raise RequestError(f"grid {name} must be a finite number, got {_show(value)}",
                           hint=hint)
    return number


_EPSG_HINT = "pass an EPSG code as an integer: a projected CRS such as a UTM zone, e.g. 32632"


def _metric_crs(epsg: int) -> CRS:
    """The CRS of a code usable by :meth:`GridSpec.from_bbox`: projected, in metres."""
    crs = _crs(epsg)
    units = {axis.unit_name for axis in crs.axis_info}
    if not crs.is_projected or units != {"metre"}:
        kind = ("geographic (degrees)" if crs.is_geographic else
                "not projected" if not crs.is_projected else f"in {', '.join(sorted(units))}")
        raise RequestError(f"grid CRS EPSG:{epsg} ({crs.name}) is {kind}",
                           hint="the resolution is in metres: use a projected CRS in metres, or "
                                "leave epsg out to get the bbox's UTM zone")
    return crs


def _default_crs_distortion(epsg: int, bbox: tuple[float, float, float, float]) -> float:
    """Largest scale distortion (k - 1) of the default UTM/UPS CRS over a lon/lat bbox.

    Spherical formulas: ample for deciding whether one zone can hold the bbox.
    """
    west, south, east, north = bbox
    k0 = 0.9996 if epsg not in (32661, 32761) else 0.994
    if epsg in (32661, 32761):  # polar stereographic: worst at the latitude furthest from the pole
        far = south if epsg == 32661 else -north
        return 2.0 * k0 / (1.0 + math.sin(math.radians(far))) - 1.0 if far > -90.0 else math.inf
    central = (epsg % 100) * 6.0 - 183.0
    dlon = min(max(abs(west - central), abs(east - central)), 90.0)
    near_equator = 0.0 if south <= 0.0 <= north else min(abs(south), abs(north))
    b = math.cos(math.radians(near_equator)) * math.sin(math.radians(dlon))
    return k0 / math.sqrt(1.0 - b * b) - 1.0 if b < 1.0 else math.inf


@dataclass(frozen=True)
class GridSpec:
    """A north-up pixel grid: CRS, square pixel size, top-left corner, size in pixels.

    Parameters
    ----------
    epsg
        EPSG code of the grid's CRS (projected, in metres, for Sentinel data).
    resolution
        Pixel size in CRS units (metres), > 0.
    x0, y0
        Left and top edges of the grid (the outer corner of the top-left pixel).
    width, height
        Size in pixels, >= 1.

    Examples
    --------
    >>> g = GridSpec(32632, 10.0, 500000.0, 5000000.0, 4, 3)
    >>> g.bounds
    (500000.0, 4999970.0, 500040.0, 5000000.0)
    >>> g.x_coords
    array([500005., 500015., 500025., 500035.])
    """

    epsg: int
    resolution: float
    x0: float
    y0: float
    width: int
    height: int

    def __post_init__(self) -> None:
        epsg = _check_int("epsg", self.epsg, 1, 2**31 - 1, hint=_EPSG_HINT)
        try:
            _crs(epsg)
        except CRSError:
            raise RequestError(f"grid epsg {epsg} is not a known EPSG code",
                               hint=_EPSG_HINT) from None
        resolution = _check_float("resolution", self.resolution,
                                  "pass the pixel size in the CRS's units (metres), e.g. 10")
        if not resolution > 0:
            raise RequestError(f"grid resolution must be a positive number, got {resolution}",
                               hint="pass the pixel size in metres, e.g. 10")
        x0 = _check_float("origin x0", self.x0, "pass the grid's top-left corner in the CRS's "
                                                "units")
        y0 = _check_float("origin y0", self.y0, "pass the grid's top-left corner in the CRS's "
                                                "units")
        width = _check_int("width", self.width, 1, MAX_GRID_SIDE)
        height = _check_int("height", self.height, 1, MAX_GRID_SIDE)
        if width * height > MAX_GRID_PIXELS:
            raise RequestError(f"grid of {width} x {height} pixels is larger than "
                               f"{MAX_GRID_PIXELS:.0e} pixels",
                               hint="map a smaller region or use a coarser resolution")
        # The far edges too: a huge origin or pixel size would make them inf or meaningless.
        edges = (x0, y0, x0 + width * resolution, y0 - height * resolution)
        if not all(abs(v) <= _MAX_COORD for v in edges):
            raise RequestError(f"grid bounds {edges} reach beyond ±{_MAX_COORD:.0e} CRS units",
                               hint="check the origin and resolution: they are in the CRS's "
                                    "units (metres for UTM)")
        object.__setattr__(self, "epsg", epsg)
        object.__setattr__(self, "resolution", resolution)
        object.__setattr__(self, "x0", x0)
        object.__setattr__(self, "y0", y0)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bbox(
        cls,
        bbox_lonlat: Sequence[float],
        resolution: float = 10.0,
        epsg: int | None = None,
        align: int = 1,
    ) -> GridSpec:
        """The smallest aligned grid that covers a lon/lat bbox.

        Parameters
        ----------
        bbox_lonlat
            ``(west, south, east, north)`` in degrees.
        resolution
            Pixel size in metres.
        epsg
            CRS of the grid; default the UTM zone of the bbox centre (north or south).
        align
            Pad the grid so that its width and height are multiples of ``align`` pixels and
            its origin lies on multiples of ``resolution * align``: patches and chunks of
            ``align`` pixels then tile it exactly, and line up across requests.

        Raises
        ------
        RequestError
            A bad bbox (see :func:`geoflow.request.parse_bbox`); a resolution outside
            0.01..100 000 m; an epsg that is not a known code or not a projected CRS in metres;
            an align below 1; a bbox the CRS cannot hold (for the default UTM/UPS zone: one
            whose edge would be stretched by more than 3.5 %, about 15° of longitude from the
            zone's centre at the equator); a grid larger than :data:`MAX_GRID_SIDE` pixels
            across or :data:`MAX_GRID_PIXELS` in all.

        Examples
        --------
        >>> g = GridSpec.from_bbox((11.0, 45.0, 11.01, 45.01), align=32)
        >>> g.shape, g.x0 % 320, g.y0 % 320
        ((160, 96), 0.0, 0.0)
        >>> GridSpec.from_bbox((-10.0, 40.0, 30.0, 50.0))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        geoflow.errors.RequestError: bbox (-10.0, 40.0, 30.0, 50.0) is too large for one ...
        """
        from geoflow.request import parse_bbox

        west, south, east, north = parse_bbox(bbox_lonlat)
        align = _check_int("align", align, 1, MAX_GRID_SIDE)
        resolution = _check_float("resolution", resolution, "pass the pixel size in metres, "
                                                            "e.g. 10")
        if not MIN_RESOLUTION_M <= resolution <= MAX_RESOLUTION_M:
            raise RequestError(f"grid resolution {resolution} m is outside "
                               f"{MIN_RESOLUTION_M}..{MAX_RESOLUTION_M:.0f} m",
                               hint="pass the pixel size in metres, e.g. 10 (Sentinel-2's finest)")
        default = epsg is None
        if default:
            epsg = utm_epsg((west + east) / 2.0, (south + north) / 2.0)
        epsg = _check_int("epsg", epsg, 1, 2**31 - 1, hint=_EPSG_HINT)
        try:
            _metric_crs(epsg)
        except CRSError:
            raise RequestError(f"grid epsg {epsg} is not a known EPSG code",
                               hint=_EPSG_HINT) from None
        bbox = (west, south, east, north)
        if default:
            stretch = _default_crs_distortion(epsg, bbox)
            if stretch > MAX_SCALE_DISTORTION:
                raise RequestError(
                    f"bbox {bbox} is too large for one UTM/UPS zone (EPSG:{epsg}): pixels at "
                    f"its edge would be stretched by {min(stretch, 9.99) * 100:.0f} %",
                    hint="split the bbox into smaller regions, or pass epsg= a projected CRS "
                         "made for the whole region (e.g. 3035 for Europe)")
        transformer = Transformer.from_crs(4326, epsg, always_xy=True)
        # Points along the bbox edges, projected and back: a CRS that cannot hold the bbox gives
        # inf, or points that do not come back where they were.
        t = np.linspace(0.0, 1.0, _DENSIFY)
        lon = np.concatenate([west + (east - west) * t, np.full(_DENSIFY, east),
                              west + (east - west) * t, np.full(_DENSIFY, west)])
        lat = np.concatenate([np.full(_DENSIFY, south), south + (north - south) * t,
                              np.full(_DENSIFY, north), south + (north - south) * t])
        with np.errstate(all="ignore"):
            x, y = transformer.transform(lon, lat)
            back_lon, back_lat = transformer.transform(x, y, direction="INVERSE")
            dlon = np.abs((back_lon - lon + 180.0) % 360.0 - 180.0) * np.cos(np.radians(lat))
            dlat = np.abs(back_lat - lat)
        ok = np.isfinite(x).all() and np.isfinite(y).all() and bool(
            np.all(np.nan_to_num(np.maximum(dlon, dlat), nan=1.0) < 1e-6))
        if not ok:
            raise RequestError(f"bbox {bbox} cannot be projected to EPSG:{epsg}",
                               hint="choose a CRS that covers the bbox (default: its UTM zone)")
        minx, miny, maxx, maxy = transformer.transform_bounds(
            west, south, east, north, densify_pts=_DENSIFY)
        if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
            raise RequestError(f"bbox {bbox} cannot be projected to EPSG:{epsg}",
                               hint="choose a CRS that covers the bbox (default: its UTM zone)")
        return cls.from_bounds((minx, miny, maxx, maxy), epsg, resolution, align)

    @classmethod
    def from_bounds(
        cls, bounds: Sequence[float], epsg: int, resolution: float = 10.0, align: int = 1
    ) -> GridSpec:
        """The smallest aligned grid covering ``(left, bottom, right, top)`` in the CRS.

        Examples
        --------
        >>> GridSpec.from_bounds((500001, 4999990, 500019, 5000000), 32632).shape
        (1, 2)
        """
        hint = "pass (left, bottom, right, top) in the CRS's units"
        if isinstance(bounds, str | bytes) or not isinstance(bounds, Sequence | np.ndarray):
            raise RequestError(f"grid bounds must be 4 numbers, got {_show(bounds)}", hint=hint)
        if len(bounds) != 4:
            raise RequestError(f"grid bounds need 4 values, got {len(bounds)}", hint=hint)
        left, bottom, right, top = (_check_float("bounds", v, hint) for v in bounds)
        if not (left < right and bottom < top):
            raise RequestError(f"grid bounds {tuple(bounds)} are empty or inverted",
                               hint="pass (left, bottom, right, top) with left < right and "
                                    "bottom < top")
        align = _check_int("align", align, 1, MAX_GRID_SIDE)
        resolution = _check_float("resolution", resolution, "pass the pixel size, e.g. 10")
        if not resolution > 0:
            raise RequestError(f"grid resolution must be a positive number, got {resolution}",
                               hint="pass the pixel size in metres, e.g. 10")
        step = resolution * align
        # Sizes are checked before building the grid, so that absurd bounds fail by name.
        if max(right - left, top - bottom) / step > MAX_GRID_SIDE:
            raise RequestError(
                f"grid bounds {tuple(bounds)} at {resolution} per pixel would be more than "
                f"{MAX_GRID_SIDE} pixels across",
                hint="map a smaller region or use a coarser resolution")
        x0 = math.floor(left / step) * step
        y0 = math.ceil(top / step) * step
        # A tiny tolerance so that bounds already on the lattice do not gain a pixel.
        eps = 1e-9 * step
        width = math.ceil((right - x0) / step - eps) * align
        height = math.ceil((y0 - bottom) / step - eps) * align
        return cls(epsg, resolution, x0, y0, max(width, align), max(height, align))

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid's CRS."""
        return (self.x0, self.y0 - self.height * self.resolution,
                self.x0 + self.width * self.resolution, self.y0)

    @property
    def transform(self) -> Affine:
        """The affine pixel-to-CRS transform (pixel corners), as rasterio uses it."""
        return Affine(self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y0)

    @property
    def crs(self) -> CRS:
        """The grid's CRS as a :class:`pyproj.CRS`."""
        return _crs(self.epsg)

    @property
    def x_coords(self) -> np.ndarray:
        """x of pixel centres, left to right (float64)."""
        return self.x0 + (np.arange(self.width, dtype="float64") + 0.5) * self.resolution

    @property
    def y_coords(self) -> np.ndarray:
        """y of pixel centres, top to bottom (float64, decreasing)."""
        return self.y0 - (np.arange(self.height, dtype="float64") + 0.5) * self.resolution

    @cached_property
    def bbox_lonlat(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` in degrees covering the grid."""
        transformer = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        return tuple(float(v) for v in transformer.transform_bounds(  # type: ignore[return-value]
            *self.bounds, densify_pts=_DENSIFY))

    @property
    def area_km2(self) -> float:
        """Area covered, in km² of the grid's CRS."""
        return self.width * self.height * self.resolution**2 / 1e6

    # ------------------------------------------------------------------ derived grids
    def window(self, row: int, col: int, height: int, width: int) -> GridSpec:
        """A sub-grid on the same pixel lattice, starting at pixel ``(row, col)``.

        The window may reach past this grid's edges (negative ``row``/``col`` or beyond
        ``height``/``width``): the lattice extends, which is how chunk halos are read.

        Examples
        --------
        >>> g = GridSpec(32632, 10.0, 500000.0, 5000000.0, 100, 100)
        >>> w = g.window(10, 20, 5, 6)
        >>> w.x0, w.y0, w.shape
        (500200.0, 4999900.0, (5, 6))
        """
        row = _check_int("row", row, -(2**62))
        col = _check_int("col", col, -(2**62))
        return GridSpec(self.epsg, self.resolution, self.x0 + col * self.resolution,
                        self.y0 - row * self.resolution, width, height)

    def coarsen(self, factor: int) -> GridSpec:
        """A coarser grid with pixels ``factor`` times larger and the same origin.

        Its size is rounded up, so it covers this grid; the bounds are equal when ``factor``
        divides the width and height (as with ``align=factor``).

        Examples
        --------
        >>> GridSpec(32632, 10.0, 500000.0, 5000000.0, 64, 32).coarsen(16).shape
        (2, 4)
        """
        factor = _check_int("factor", factor, 1)
        return GridSpec(self.epsg, self.resolution * factor, self.x0, self.y0,
                        -(-self.width // factor), -(-self.height // factor))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; :meth:`from_dict` reverses it.

        Examples
        --------
        >>> g = GridSpec(32632, 10.0, 500000.0, 5000000.0, 4, 3)
        >>> GridSpec.from_dict(g.to_dict()) == g
        True
        """
        return {"epsg": self.epsg, "resolution": self.resolution, "x0": self.x0,
                "y0": self.y0, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GridSpec:
        """Rebuild a grid from :meth:`to_dict` output.

        Examples
        --------
        >>> GridSpec.from_dict({"epsg": 32632, "resolution": 10, "x0": 0, "y0": 0,
        ...                     "width": 1, "height": 1}).bounds
        (0.0, -10.0, 10.0, 0.0)
        """
        if not isinstance(data, Mapping):
            raise RequestError(f"grid dict must be a mapping, got {type(data).__name__}",
                               hint="pass a dict written by GridSpec.to_dict()")
        keys = ("epsg", "resolution", "x0", "y0", "width", "height")
        missing = [k for k in keys if k not in data]
        if missing:
            raise RequestError(f"grid dict lacks {', '.join(missing)}",
                               hint="pass a dict written by GridSpec.to_dict()")
        return cls(**{k: data[k] for k in keys})


__all__ = ["MAX_GRID_PIXELS", "MAX_GRID_SIDE", "MAX_RESOLUTION_M", "MIN_RESOLUTION_M",
           "GridSpec", "utm_epsg"]
