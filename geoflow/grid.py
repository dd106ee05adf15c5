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


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float | np.floating) and float(value).is_integer():
            value = int(value)
        else:
            raise RequestError(f"grid {name} must be an integer, got {value!r}",
                               hint=f"pass {name} as a whole number of pixels")
    if value < minimum:
        raise RequestError(f"grid {name} must be at least {minimum}, got {value}",
                           hint=f"pass a {name} of {minimum} or more")
    return int(value)


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
        epsg = _check_int("epsg", self.epsg, 1)
        try:
            _crs(epsg)
        except CRSError:
            raise RequestError(f"grid epsg {epsg} is not a known EPSG code",
                               hint="use a projected CRS such as a UTM zone, e.g. 32632") from None
        try:
            resolution = float(self.resolution)
            x0, y0 = float(self.x0), float(self.y0)
        except (TypeError, ValueError):
            raise RequestError(
                f"grid resolution/x0/y0 must be numbers, got {self.resolution!r}, "
                f"{self.x0!r}, {self.y0!r}", hint="pass numbers in the CRS's units") from None
        if not (math.isfinite(resolution) and resolution > 0):
            raise RequestError(f"grid resolution must be a positive number, got {resolution}",
                               hint="pass the pixel size in metres, e.g. 10")
        if not (math.isfinite(x0) and math.isfinite(y0)):
            raise RequestError(f"grid origin must be finite, got x0={x0}, y0={y0}",
                               hint="pass the grid's top-left corner in the CRS's units")
        object.__setattr__(self, "epsg", epsg)
        object.__setattr__(self, "resolution", resolution)
        object.__setattr__(self, "x0", x0)
        object.__setattr__(self, "y0", y0)
        object.__setattr__(self, "width", _check_int("width", self.width, 1))
        object.__setattr__(self, "height", _check_int("height", self.height, 1))

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

        Examples
        --------
        >>> g = GridSpec.from_bbox((11.0, 45.0, 11.01, 45.01), align=32)
        >>> g.shape, g.x0 % 320, g.y0 % 320
        ((160, 96), 0.0, 0.0)
        """
        from geoflow.request import parse_bbox

        west, south, east, north = parse_bbox(bbox_lonlat)
        if epsg is None:
            epsg = utm_epsg((west + east) / 2.0, (south + north) / 2.0)
        align = _check_int("align", align, 1)
        probe = cls(epsg, resolution, 0.0, 0.0, 1, 1)  # validates epsg and resolution
        transformer = Transformer.from_crs(4326, probe.epsg, always_xy=True)
        minx, miny, maxx, maxy = transformer.transform_bounds(
            west, south, east, north, densify_pts=_DENSIFY)
        if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
            raise RequestError(f"bbox {bbox_lonlat} cannot be projected to EPSG:{epsg}",
                               hint="choose a CRS that covers the bbox (default: its UTM zone)")
        return cls.from_bounds((minx, miny, maxx, maxy), probe.epsg, probe.resolution, align)

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
        left, bottom, right, top = (float(v) for v in bounds)
        if not (left < right and bottom < top):
            raise RequestError(f"grid bounds {tuple(bounds)} are empty or inverted",
                               hint="pass (left, bottom, right, top) with left < right and "
                                    "bottom < top")
        align = _check_int("align", align, 1)
        step = float(resolution) * align
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
        keys = ("epsg", "resolution", "x0", "y0", "width", "height")
        missing = [k for k in keys if k not in data]
        if missing:
            raise RequestError(f"grid dict lacks {', '.join(missing)}",
                               hint="pass a dict written by GridSpec.to_dict()")
        return cls(**{k: data[k] for k in keys})


__all__ = ["GridSpec", "utm_epsg"]
