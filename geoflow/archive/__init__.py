"""The bundled sample archive: a synthetic Sentinel-2 / Sentinel-1 world as COGs + STAC items,
and (in :mod:`geoflow.archive.server`) the local STAC API that serves it.

Exports are lazy so ``import geoflow.archive`` does not pull in rasterio.

Examples
--------
>>> from geoflow.archive import create_archive, archive_info  # doctest: +SKIP
>>> info = create_archive("/tmp/archive", seed=0, size="small")  # doctest: +SKIP
>>> archive_info("/tmp/archive")["collections"]  # doctest: +SKIP
['sentinel-2-l2a', 'sentinel-1-rtc']
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "create_archive": ("geoflow.archive.create", "create_archive"),
    "archive_info": ("geoflow.archive.create", "archive_info"),
    "default_archive_dir": ("geoflow.archive.create", "default_archive_dir"),
    "ARCHIVE_SIZES": ("geoflow.archive.create", "ARCHIVE_SIZES"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'geoflow.archive' has no attribute {name!r}")


__all__ = ["ARCHIVE_SIZES", "archive_info", "create_archive", "default_archive_dir"]
