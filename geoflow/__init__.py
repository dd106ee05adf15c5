"""geoflow: scene-classification maps of whole regions from cloudy Sentinel-2 and Sentinel-1.

The public API is small:

- :func:`geoflow.classify_region` maps a bbox over a date range and returns an
  ``xarray.Dataset`` (optionally streamed to a Zarr store);
- :func:`geoflow.open_map` opens a map store (path or URL) as stored: uint8 classes with 255
  for no data, CRS decoded;
- :func:`geoflow.plot` draws such a map with its legend;
- :func:`geoflow.reprocess` maps a map's region again with a new model (the same input
  items), into a new store, with a report of what changed;
- :class:`geoflow.GeoflowError` is the root of every error geoflow raises on purpose.

Heavy modules (torch, dask) are imported lazily so ``import geoflow`` stays fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from geoflow.errors import GeoflowError

try:
    __version__ = version("geoflow")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

_LAZY = {
    "classify_region": ("geoflow.regional", "classify_region"),
    "open_map": ("geoflow.store", "open_map"),
    "plot": ("geoflow._plot", "plot"),
    "reprocess": ("geoflow.reprocess", "reprocess"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'geoflow' has no attribute {name!r}")


__all__ = ["GeoflowError", "__version__", "classify_region", "open_map", "plot", "reprocess"]
