"""Write the bundled synthetic Sentinel sample archive: COGs + STAC collections and items.

Layout of an archive directory ``DIR``::

    DIR/archive.json                       summary (see :func:`create_archive`)
    DIR/collections/<collection>.json      STAC collections (sentinel-2-l2a, sentinel-1-rtc)
    DIR/items/<collection>.ndjson          STAC items, one a line, asset hrefs relative to DIR
    DIR/assets/<collection>/<item id>/<asset>.tif   Cloud-Optimized GeoTIFFs
    DIR/truth/landcover.tif                land-cover truth (uint8 class index, nodata 255)

The world is two adjacent 10 km tiles (``size="default"``) on the Baltic coast near Kiel,
in UTM zone 32N (EPSG:32632), either side of the 600 km easting line that separates the MGRS
squares 32UNE and 32UPE. Sentinel-2 L2A scenes on six dates in June 2025 range from clear to
overcast; Sentinel-1 RTC scenes on five other dates alternate ascending and descending passes.

Examples
--------
>>> from geoflow.archive import create_archive  # doctest: +SKIP
>>> info = create_archive("/tmp/geoflow-archive", seed=0, size="small")  # doctest: +SKIP
>>> info["tiles"]  # doctest: +SKIP
['32UNE', '32UPE']
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoflow.errors import ArchiveError
from geoflow.profiles import S2_SCALE, s2_offset
from geoflow.synthetic import clouds as _clouds
from geoflow.synthetic import world as _world

# --------------------------------------------------------------------------- layout constants

EPSG = 32632
#: Easting (m) of the boundary between the two tiles (the MGRS N/P column line in zone 32).
X_SPLIT = 600_000.0
#: Northing (m) of the archive's top edge (about 54.05 N).
Y_TOP = 5_990_000.0
RESOLUTION = 10.0
TILES: tuple[str, ...] = ("32UNE", "32UPE")
S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-rtc"
COLLECTIONS: tuple[str, ...] = (S2_COLLECTION, S1_COLLECTION)
PROCESSING_BASELINE = "05.10"
#: L2A digital numbers since processing baseline 04.00: DN = reflectance * 10000 + 1000 (the
#: rule geoflow.profiles reads them with; the archive takes it from there).
BOA_QUANTIFICATION = int(S2_SCALE)
BOA_ADD_OFFSET = int(-s2_offset(PROCESSING_BASELINE))
S1_NODATA = -32768.0
TRUTH_PATH = "truth/landcover.tif"
ARCHIVE_JSON = "archive.json"
_INCOMPLETE = ".geoflow-archive-incomplete"
#: Bumped whenever the generator's output changes for a given seed.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class _Size:
    tile_px: int  # tile edge in 10 m pixels
    blocksize: int
    demo_margin_m: tuple[float, float]  # (x, y) inset of the demo bbox from the extent


#: Archive sizes: "default" (two 10 km tiles, 200 km²) and "small" (two 2.56 km tiles, tests).
ARCHIVE_SIZES: dict[str, _Size] = {
    "default": _Size(tile_px=1000, blocksize=256, demo_margin_m=(3_500.0, 500.0)),
    "small": _Size(tile_px=256, blocksize=128, demo_margin_m=(200.0, 200.0)),
}

_UTC = dt.UTC
#: Sentinel-2 acquisitions: a 5-day revisit (2A and 2B on relative orbit 108), morning pass.
S2_DATES: tuple[tuple[dt.datetime, str], ...] = tuple(
    (dt.datetime(2025, 6, d, 10, 36, 31, 24000, tzinfo=_UTC), p)
    for d, p in ((2, "Sentinel-2B"), (7, "Sentinel-2A"), (12, "Sentinel-2B"),
                 (17, "Sentinel-2A"), (22, "Sentinel-2B"), (27, "Sentinel-2A"))
)
#: Cloud cover of the S2 dates (0 clear .. 0.95 overcast), shuffled per seed.
S2_COVERS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.75, 0.95)
#: Sentinel-1A passes: 12-day repeat, ascending (evening) and descending (morning) orbits,
#: never on a Sentinel-2 date.
S1_DATES: tuple[tuple[dt.datetime, str, int], ...] = (
    (dt.datetime(2025, 6, 4, 17, 15, 12, tzinfo=_UTC), "ascending", 117),
    (dt.datetime(2025, 6, 9, 5, 35, 48, tzinfo=_UTC), "descending", 139),
    (dt.datetime(2025, 6, 16, 17, 15, 13, tzinfo=_UTC), "ascending", 117),
    (dt.datetime(2025, 6, 21, 5, 35, 49, tzinfo=_UTC), "descending", 139),
    (dt.datetime(2025, 6, 28, 17, 15, 12, tzinfo=_UTC), "ascending", 117),
)
ARCHIVE_DATETIME = "2025-06-01T00:00:00Z/2025-06-30T23:59:59Z"

_EXT = {
    "eo": "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "item_assets": "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
}
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_EO_BANDS = {  # name: (common_name, centre µm, FWHM µm, description)
    "B02": ("blue", 0.49, 0.098, "Band 2 - Blue - 10m"),
    "B03": ("green", 0.56, 0.045, "Band 3 - Green - 10m"),
    "B04": ("red", 0.665, 0.038, "Band 4 - Red - 10m"),
    "B05": ("rededge", 0.704, 0.019, "Band 5 - Vegetation red edge 1 - 20m"),
    "B06": ("rededge", 0.74, 0.018, "Band 6 - Vegetation red edge 2 - 20m"),
    "B07": ("rededge", 0.783, 0.028, "Band 7 - Vegetation red edge 3 - 20m"),
    "B08": ("nir", 0.842, 0.145, "Band 8 - NIR - 10m"),
    "B8A": ("nir08", 0.865, 0.033, "Band 8A - Vegetation red edge 4 - 20m"),
    "B11": ("swir16", 1.61, 0.143, "Band 11 - SWIR (1.6) - 20m"),
    "B12": ("swir22", 2.19, 0.242, "Band 12 - SWIR (2.2) - 20m"),
}


# --------------------------------------------------------------------------- small helpers


def default_archive_dir() -> Path:
    """Where the demo looks for the sample archive.

    ``$GEOFLOW_ARCHIVE`` if set, else ``~/.cache/geoflow/archive``.

    Examples
    --------
    >>> default_archive_dir().name  # doctest: +SKIP
    'archive'
    """
    env = os.environ.get("GEOFLOW_ARCHIVE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "geoflow" / "archive"


def _check_size(size: str) -> _Size:
    if size not in ARCHIVE_SIZES:
        raise ArchiveError(f"unknown archive size {size!r}",
                           hint=f"use one of: {', '.join(ARCHIVE_SIZES)}")
    return ARCHIVE_SIZES[size]


def _extent(sz: _Size) -> tuple[float, float, int, int]:
    """(x0, y0, width px, height px) of the whole archive (both tiles)."""
    return X_SPLIT - sz.tile_px * RESOLUTION, Y_TOP, 2 * sz.tile_px, sz.tile_px


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _covers(seed: int) -> list[float]:
    rng = np.random.default_rng([seed, 9001])
    return [float(c) for c in rng.permutation(np.array(S2_COVERS))]


def _lonlat(bounds: tuple[float, float, float, float]) -> tuple[list[float], dict[str, Any]]:
    """(bbox, GeoJSON polygon) in lon/lat of a UTM rectangle (xmin, ymin, xmax, ymax)."""
    from pyproj import Transformer

    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    xmin, ymin, xmax, ymax = bounds
    n = 21  # densified edges: the UTM rectangle is slightly curved in lon/lat
    s = np.linspace(0.0, 1.0, n)
    xs = np.concatenate([xmin + (xmax - xmin) * s, np.full(n, xmax),
                         xmax - (xmax - xmin) * s, np.full(n, xmin)])
    ys = np.concatenate([np.full(n, ymin), ymin + (ymax - ymin) * s,
                         np.full(n, ymax), ymax - (ymax - ymin) * s])
    lon, lat = tr.transform(xs, ys)
    bbox = [round(float(v), 7) for v in (lon.min(), lat.min(), lon.max(), lat.max())]
    cx, cy = tr.transform([xmin, xmax, xmax, xmin, xmin], [ymin, ymin, ymax, ymax, ymin])
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(cx, cy, strict=True)]
    return bbox, {"type": "Polygon", "coordinates": [ring]}


def _inner_lonlat(bounds: tuple[float, float, float, float]) -> list[float]:
    """The largest lon/lat box inside a UTM rectangle (so it never reaches past the data)."""
    from pyproj import Transformer

    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    xmin, ymin, xmax, ymax = bounds
    s = np.linspace(0.0, 1.0, 21)
    lw, _ = tr.transform(np.full(21, xmin), ymin + (ymax - ymin) * s)
    le, _ = tr.transform(np.full(21, xmax), ymin + (ymax - ymin) * s)
    _, ls = tr.transform(xmin + (xmax - xmin) * s, np.full(21, ymin))
    _, ln = tr.transform(xmin + (xmax - xmin) * s, np.full(21, ymax))
    return [round(float(v), 6) for v in (lw.max() + 1e-6, ls.max() + 1e-6,
                                         le.min() - 1e-6, ln.min() - 1e-6)]


def _write_cog(path: Path, arr: np.ndarray, transform: Any, nodata: float,
               blocksize: int, categorical: bool) -> None:
    """One band as a COG: tiled, deflate, overviews, nodata; byte-identical for equal input."""
    import rasterio
    from rasterio.crs import CRS

    path.parent.mkdir(parents=True, exist_ok=True)
    is_float = arr.dtype.kind == "f"
    with rasterio.Env(GDAL_NUM_THREADS="1"), rasterio.open(
        path, "w", driver="COG", width=arr.shape[1], height=arr.shape[0], count=1,
        dtype=arr.dtype.name, crs=CRS.from_epsg(EPSG), transform=transform, nodata=nodata,
        compress="DEFLATE", predictor=3 if is_float else 2, blocksize=blocksize,
        overview_resampling="nearest" if categorical else "average", num_threads=1,
        bigtiff="NO",
    ) as dst:
        dst.write(arr, 1)


def _affine(x0: float, y0: float, res: float) -> Any:
    from rasterio.transform import Affine

    return Affine(res, 0.0, x0, 0.0, -res, y0)


# --------------------------------------------------------------------------- worker side

_STATE: dict[str, Any] = {}


def _init_world(seed: int, size: str, root: str) -> None:
    """Build (or reuse, after fork) the land cover and its material layer in this process."""
    key = (seed, size)
    if _STATE.get("key") != key:
        sz = ARCHIVE_SIZES[size]
        _, _, w, h = _extent(sz)
        lc = _world.landcover(seed, (h, w))
        _world._materials(lc)  # warm the cache once, shared by every date
        _STATE.update(key=key, lc=lc)
    _STATE["root"] = root


def _tile_slices(sz: _Size, i: int) -> tuple[slice, slice]:
    return slice(0, sz.tile_px), slice(i * sz.tile_px, (i + 1) * sz.tile_px)


def _s2_task(i: int) -> dict[str, Any]:
    seed, size = _STATE["key"]
    lc, root = _STATE["lc"], Path(_STATE["root"])
    sz = ARCHIVE_SIZES[size]
    when, _ = S2_DATES[i]
    cover = _covers(seed)[i]
    refl = _world.s2_reflectance(lc, np.random.default_rng([seed, 2, i]),
                                 doy=when.timetuple().tm_yday)
    clouds = _clouds.simulate_clouds(np.random.default_rng([seed, 3, i]), lc.shape, cover)
    refl = _clouds.apply_clouds(refl, clouds)
    x0, y0, _, _ = _extent(sz)
    out: dict[str, Any] = {}
    for t, tile in enumerate(TILES):
        rows, cols = _tile_slices(sz, t)
        item_id = _s2_id(i, tile)
        adir = root / "assets" / S2_COLLECTION / item_id
        tx0 = x0 + cols.start * RESOLUTION
        part = refl[:, rows, cols]
        for b, band in enumerate(_world.S2_BANDS):
            arr = part[b] if band in _world.S2_10M else _world.to_20m(part[b])
            res = RESOLUTION if band in _world.S2_10M else 2 * RESOLUTION
            dn = np.clip(np.rint(arr * BOA_QUANTIFICATION + BOA_ADD_OFFSET), 1, 65535)
            _write_cog(adir / f"{band}.tif", dn.astype(np.uint16), _affine(tx0, y0, res), 0,
                       sz.blocksize, categorical=False)
        lc20 = lc[rows, cols][::2, ::2]
        scl = _clouds.scl(lc20, clouds.crop(rows, cols).to_20m())
        _write_cog(adir / "SCL.tif", scl, _affine(tx0, y0, 2 * RESOLUTION), 0, sz.blocksize,
                   categorical=True)
        counts = np.bincount(scl.ravel(), minlength=12)
        out[tile] = [int(c) for c in counts]
    return out


def _s1_task(j: int) -> None:
    seed, size = _STATE["key"]
    lc, root = _STATE["lc"], Path(_STATE["root"])
    sz = ARCHIVE_SIZES[size]
    _, orbit, _ = S1_DATES[j]
    lin = _world._s1_linear(lc, np.random.default_rng([seed, 4, j]), orbit)
    x0, y0, _, _ = _extent(sz)
    adir = root / "assets" / S1_COLLECTION / _s1_id(j)
    for p, pol in enumerate(_world.S1_BANDS):
        _write_cog(adir / f"{pol}.tif", lin[p], _affine(x0, y0, RESOLUTION), S1_NODATA,
                   sz.blocksize, categorical=False)


def _truth_task() -> None:
    _, size = _STATE["key"]
    sz = ARCHIVE_SIZES[size]
    x0, y0, _, _ = _extent(sz)
    _write_cog(Path(_STATE["root"]) / TRUTH_PATH, _STATE["lc"], _affine(x0, y0, RESOLUTION),
               _world.NODATA_CLASS, sz.blocksize, categorical=True)


def _run_task(task: tuple[str, int]) -> tuple[tuple[str, int], Any]:
    kind, i = task
    if kind == "s2":
        return task, _s2_task(i)
    if kind == "s1":
        _s1_task(i)
    else:
        _truth_task()
    return task, None


# --------------------------------------------------------------------------- STAC documents


def _s2_id(i: int, tile: str) -> str:
    when, platform = S2_DATES[i]
    stamp = when.strftime("%Y%m%dT%H%M%S")
    return f"S2{platform[-1]}_MSIL2A_{stamp}_R108_T{tile}_{when:%Y%m%d}T151203"


def _s1_id(j: int) -> str:
    when, _, rel = S1_DATES[j]
    start = when.strftime("%Y%m%dT%H%M%S")
    stop = (when + dt.timedelta(seconds=25)).strftime("%Y%m%dT%H%M%S")
    absolute = 59_000 + (when - S1_DATES[0][0]).days * 15 + rel
    return f"S1A_IW_GRDH_1SDV_{start}_{stop}_{absolute:06d}_{absolute * 7 & 0xFFFFFF:06X}_rtc"


def _asset_geo(shape: tuple[int, int], x0: float, y0: float, res: float) -> dict[str, Any]:
    h, w = shape
    return {
        "gsd": res,
        "proj:shape": [h, w],
        "proj:transform": [res, 0.0, x0, 0.0, -res, y0],
        "proj:bbox": [x0, y0 - h * res, x0 + w * res, y0],
    }


def _s2_item(i: int, t: int, sz: _Size, scl_counts: list[int]) -> dict[str, Any]:
    when, platform = S2_DATES[i]
    tile = TILES[t]
    item_id = _s2_id(i, tile)
    x0, y0, _, _ = _extent(sz)
    tx0 = x0 + t * sz.tile_px * RESOLUTION
    bounds = (tx0, y0 - sz.tile_px * RESOLUTION, tx0 + sz.tile_px * RESOLUTION, y0)
    bbox, geom = _lonlat(bounds)
    assets: dict[str, Any] = {}
    for band in _world.S2_BANDS:
        res = RESOLUTION if band in _world.S2_10M else 2 * RESOLUTION
        n = sz.tile_px if res == RESOLUTION else sz.tile_px // 2
        common, centre, fwhm, desc = _EO_BANDS[band]
        assets[band] = {
            "href": f"assets/{S2_COLLECTION}/{item_id}/{band}.tif",
            "type": _COG_TYPE,
            "title": desc,
            "roles": ["data"],
            "eo:bands": [{"name": band, "common_name": common, "description": desc,
                          "center_wavelength": centre, "full_width_half_max": fwhm}],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                              "spatial_resolution": res}],
            **_asset_geo((n, n), tx0, y0, res),
        }
    n20 = sz.tile_px // 2
    assets["SCL"] = {
        "href": f"assets/{S2_COLLECTION}/{item_id}/SCL.tif",
        "type": _COG_TYPE,
        "title": "Scene classfication map (SCL)",
        "roles": ["data"],
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20.0}],
        **_asset_geo((n20, n20), tx0, y0, 2 * RESOLUTION),
    }
    # Percentages from pixel counts, each rounded once (so they never exceed 100).
    total = sum(scl_counts)
    pct = [round(100.0 * c / total, 6) for c in scl_counts]
    cloud_cover = round(100.0 * (scl_counts[8] + scl_counts[9] + scl_counts[10]) / total, 6)
    props = {
        "datetime": _iso(when),
        "platform": platform,
        "constellation": "Sentinel 2",
        "instruments": ["msi"],
        "eo:cloud_cover": cloud_cover,
        "proj:epsg": EPSG,
        "sat:orbit_state": "descending",
        "sat:relative_orbit": 108,
        "s2:mgrs_tile": tile,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": PROCESSING_BASELINE,
        "s2:product_uri": f"{item_id}.SAFE",
        "s2:generation_time": f"{when:%Y-%m-%d}T15:12:03.000000Z",
        "s2:datatake_type": "INS-NOBS",
        "s2:nodata_pixel_percentage": pct[0],
        "s2:cloud_shadow_percentage": pct[3],
        "s2:vegetation_percentage": pct[4],
        "s2:not_vegetated_percentage": pct[5],
        "s2:water_percentage": pct[6],
        "s2:unclassified_percentage": pct[7],
        "s2:medium_proba_clouds_percentage": pct[8],
        "s2:high_proba_clouds_percentage": pct[9],
        "s2:thin_cirrus_percentage": pct[10],
        "s2:snow_ice_percentage": pct[11],
        "s2:mean_solar_zenith": 33.4,
        "s2:mean_solar_azimuth": 163.2,
    }
    return _feature(item_id, S2_COLLECTION, ("eo", "proj", "raster", "sat"), bbox, geom, props,
                    assets)


def _s1_item(j: int, sz: _Size) -> dict[str, Any]:
    when, orbit, rel = S1_DATES[j]
    item_id = _s1_id(j)
    x0, y0, w, h = _extent(sz)
    bbox, geom = _lonlat((x0, y0 - h * RESOLUTION, x0 + w * RESOLUTION, y0))
    assets = {}
    for pol in _world.S1_BANDS:
        assets[pol] = {
            "href": f"assets/{S1_COLLECTION}/{item_id}/{pol}.tif",
            "type": _COG_TYPE,
            "title": f"{pol.upper()}: {'vertical' if pol[1] == 'v' else 'horizontal'} "
                     "receive, vertical transmit (gamma0, linear, terrain corrected)",
            "roles": ["data"],
            "raster:bands": [{"nodata": S1_NODATA, "data_type": "float32",
                              "spatial_resolution": RESOLUTION}],
            **_asset_geo((h, w), x0, y0, RESOLUTION),
        }
    props = {
        "datetime": _iso(when),
        "start_datetime": _iso(when),
        "end_datetime": _iso(when + dt.timedelta(seconds=25)),
        "platform": "SENTINEL-1A",
        "constellation": "Sentinel-1",
        "instruments": ["c-sar"],
        "sar:instrument_mode": "IW",
        "sar:frequency_band": "C",
        "sar:center_frequency": 5.405,
        "sar:polarizations": ["VV", "VH"],
        "sar:product_type": "RTC",
        "sar:resolution_range": 20,
        "sar:resolution_azimuth": 22,
        "sar:observation_direction": "right",
        "sat:orbit_state": orbit,
        "sat:relative_orbit": rel,
        "sat:absolute_orbit": int(_s1_id(j).split("_")[6]),
        "s1:product_timeliness": "Fast-24h",
        "proj:epsg": EPSG,
    }
    return _feature(item_id, S1_COLLECTION, ("proj", "raster", "sat", "sar"), bbox, geom, props,
                    assets)


def _feature(item_id: str, collection: str, extensions: tuple[str, ...], bbox: list[float],
             geom: dict[str, Any], props: dict[str, Any], assets: dict[str, Any]
             ) -> dict[str, Any]:
    """A STAC item dict with the given extensions (keys of ``_EXT``)."""
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [_EXT[e] for e in extensions],
        "id": item_id,
        "collection": collection,
        "bbox": bbox,
        "geometry": geom,
        "properties": props,
        "links": [],
        "assets": assets,
    }


def _collection(cid: str, bbox: list[float], start: str, end: str) -> dict[str, Any]:
    common: dict[str, Any] = {
        "type": "Collection",
        "id": cid,
        "stac_version": "1.0.0",
        "license": "CC-BY-4.0",
        "links": [],
        "providers": [{"name": "geoflow synthetic sample archive",
                       "roles": ["producer", "processor", "host"]}],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[start, end]]}},
    }
    if cid == S2_COLLECTION:
        item_assets = {
            b: {"type": _COG_TYPE, "title": _EO_BANDS[b][3], "roles": ["data"],
                "gsd": RESOLUTION if b in _world.S2_10M else 2 * RESOLUTION,
                "eo:bands": [{"name": b, "common_name": _EO_BANDS[b][0]}]}
            for b in _world.S2_BANDS
        }
        item_assets["SCL"] = {"type": _COG_TYPE, "title": "Scene classfication map (SCL)",
                              "roles": ["data"], "gsd": 2 * RESOLUTION}
        return {
            **common,
            "title": "Sentinel-2 Level-2A (geoflow synthetic sample)",
            "description": "Synthetic Sentinel-2 L2A surface reflectance mirroring Planetary "
                           "Computer's sentinel-2-l2a: bands at native 10/20 m, SCL at 20 m, "
                           "DN = reflectance*10000+1000 (processing baseline 05.10).",
            "keywords": ["Sentinel", "Copernicus", "ESA", "Satellite", "Reflectance",
                         "synthetic"],
            "stac_extensions": [_EXT["item_assets"], _EXT["eo"]],
            "summaries": {
                "platform": ["Sentinel-2A", "Sentinel-2B"],
                "constellation": ["Sentinel 2"],
                "instruments": ["msi"],
                "gsd": [10, 20],
                "eo:bands": [{"name": b, "common_name": _EO_BANDS[b][0],
                              "center_wavelength": _EO_BANDS[b][1]} for b in _world.S2_BANDS],
            },
            "item_assets": item_assets,
        }
    return {
        **common,
        "title": "Sentinel-1 Radiometrically Terrain Corrected (geoflow synthetic sample)",
        "description": "Synthetic Sentinel-1 RTC gamma0 (linear, float32, 10 m) mirroring "
                       "Planetary Computer's sentinel-1-rtc: VV and VH, ascending and "
                       "descending passes.",
        "keywords": ["Sentinel", "Copernicus", "ESA", "SAR", "RTC", "synthetic"],
        "stac_extensions": [_EXT["item_assets"], _EXT["sar"], _EXT["sat"]],
        "summaries": {
            "platform": ["SENTINEL-1A"],
            "constellation": ["Sentinel-1"],
            "sar:instrument_mode": ["IW"],
            "sar:polarizations": ["VV", "VH"],
            "sar:product_type": ["RTC"],
            "sat:orbit_state": ["ascending", "descending"],
        },
        "item_assets": {
            p: {"type": _COG_TYPE, "roles": ["data"], "title": p.upper()}
            for p in _world.S1_BANDS
        },
    }


# --------------------------------------------------------------------------- public API


def _as_earth_search(item: dict[str, Any]) -> dict[str, Any]:
    """A Sentinel-2 item as Earth Search v1 writes it: its asset keys, lower-case platform and
    constellation, MGRS and grid properties, and the offset stated in ``raster:bands`` with
    ``earthsearch:boa_offset_applied: false`` (the COGs keep the +1000 DN of baseline 05.10,
    so the files are the generic archive's, byte for byte)."""
    from geoflow.profiles import PROFILES

    keys = PROFILES["earth-search"].s2_assets
    props = dict(item["properties"])
    tile = props.pop("s2:mgrs_tile")
    props.update({
        "platform": props["platform"].lower(), "constellation": "sentinel-2",
        "mgrs:utm_zone": int(tile[:2]), "mgrs:latitude_band": tile[2],
        "mgrs:grid_square": tile[3:], "grid:code": f"MGRS-{tile}",
        "earthsearch:boa_offset_applied": False,
        "earthsearch:s3_path": f"s3://sentinel-cogs/sentinel-s2-l2a-cogs/{item['id']}",
    })
    offset = s2_offset(props["s2:processing_baseline"]) / S2_SCALE
    assets = {}
    for canon, asset in item["assets"].items():
        asset = dict(asset)
        if canon != "SCL":
            asset["raster:bands"] = [{**asset["raster:bands"][0], "scale": 1 / S2_SCALE,
                                      "offset": offset}]
            asset["eo:bands"] = [{**asset["eo:bands"][0], "name": keys[canon]}]
        assets[keys[canon]] = asset
    return {**item, "stac_extensions": [*item["stac_extensions"],
                                        "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
                                        "https://stac-extensions.github.io/grid/v1.0.0/schema.json"],
            "properties": props, "assets": assets}


def _prepare_dir(root: Path, seed: int, size: str, overwrite: bool,
                 profile: str = "generic") -> dict[str, Any] | None:
    """Check what is in ``root``; return the existing summary when it can be reused."""
    if root.exists() and not root.is_dir():
        raise ArchiveError(f"{root} exists and is not a directory",
                           hint="pass a new or empty directory")
    if not root.exists():
        return None
    meta = root / ARCHIVE_JSON
    if (root / _INCOMPLETE).exists():
        _clean(root)  # an earlier create was interrupted: start again
        return None
    if meta.exists():
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError) as err:
            raise ArchiveError(f"{meta} is unreadable ({err})",
                               hint="delete the directory or pass --overwrite") from None
        same = (info.get("seed") == seed and info.get("size") == size
                and info.get("profile", "generic") == profile
                and info.get("generator_version") == GENERATOR_VERSION)
        if same and not overwrite:
            return info
        if not overwrite:
            raise ArchiveError(
                f"{root} already holds an archive with seed={info.get('seed')}, "
                f"size={info.get('size')!r}, profile={info.get('profile', 'generic')!r}",
                hint="pass --overwrite (overwrite=True) to replace it, or choose another "
                     "directory")
        _clean(root)
        return None
    if any(root.iterdir()):
        raise ArchiveError(f"{root} exists, is not empty and is not a geoflow archive",
                           hint="pass a new or empty directory")
    return None


def _clean(root: Path) -> None:
    for name in ("assets", "items", "collections", "truth"):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in (ARCHIVE_JSON, _INCOMPLETE):
        (root / name).unlink(missing_ok=True)


def create_archive(
    dir: str | os.PathLike[str],
    seed: int = 0,
    size: str = "default",
    *,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    profile: str = "generic",
) -> dict[str, Any]:
    """Write the synthetic Sentinel-2 / Sentinel-1 sample archive to ``dir``.

    Parameters
    ----------
    dir
        Target directory: new, empty, or an archive written earlier. An archive with the same
        seed and size is reused as is; another one is replaced only with ``overwrite``.
    seed
        World seed; the same seed and size give byte-identical files.
    size
        ``"default"`` (two 10 km x 10 km tiles, 6 S2 dates, 5 S1 dates, about 150 MB) or
        ``"small"`` (two 2.56 km tiles, same dates; for tests).
    overwrite
        Replace an existing archive written with another seed or size.
    workers
        Processes writing scenes (default: up to 2 for "default", 1 for "small").
    progress
        Called with a short message after each written scene.
    profile
        ``"generic"`` (Planetary Computer's asset keys) or ``"earth-search"`` (Earth Search
        v1's keys ``blue`` .. ``scl``, its property names, the offset in ``raster:bands``): the
        same world and the same COGs, described as that catalog does.

    Returns
    -------
    dict
        The content of ``DIR/archive.json``: ``seed``, ``size``, ``epsg``, ``bbox``
        [W, S, E, N] lon/lat, ``datetime`` "start/end", ``collections``, ``truth`` (path
        relative to DIR), ``tiles``, ``items`` (count per collection), ``demo_bbox``, and
        grids, dates, cloud covers, class names and colours.

    Raises
    ------
    ArchiveError
        Unknown size, a non-archive directory, or an archive with other settings.

    Examples
    --------
    >>> info = create_archive("/tmp/geoflow-small", seed=0, size="small")  # doctest: +SKIP
    >>> info["items"]  # doctest: +SKIP
    {'sentinel-2-l2a': 12, 'sentinel-1-rtc': 5}
    """
    sz = _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ArchiveError(f"seed must be a non-negative integer, got {seed!r}",
                           hint="pass e.g. --seed 0")
    seed = int(seed)
    root = Path(dir).expanduser().resolve()
    if profile not in ("generic", "earth-search"):
        raise ArchiveError(f"unknown archive profile {profile!r}",
                           hint="use 'generic' or 'earth-search'")
    reuse = _prepare_dir(root, seed, size, overwrite, profile)
    if reuse is not None:
        if progress:
            progress(f"archive in {root} already exists (seed={seed}, size={size}); reused")
        return reuse
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    (root / _INCOMPLETE).write_text("")
    say = progress or (lambda _msg: None)

    _init_world(seed, size, str(root))
    say(f"world drawn ({time.perf_counter() - t0:.1f} s)")
    tasks: list[tuple[str, int]] = [("s2", i) for i in range(len(S2_DATES))]
    tasks += [("s1", j) for j in range(len(S1_DATES))] + [("truth", 0)]
    if workers is None:
        workers = 1 if size == "small" else min(2, os.cpu_count() or 1)
    results: dict[tuple[str, int], Any] = {}
    # Fork shares the world already drawn; only fork a single-threaded process (fork with
    # threads can deadlock), else write in this process.
    can_fork = "fork" in mp.get_all_start_methods() and threading.active_count() == 1
    if workers > 1 and can_fork:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            for task, res in pool.map(_run_task, tasks):
                results[task] = res
                say(f"wrote {task[0]} {task[1]}")
    else:
        for task in tasks:
            results[task] = _run_task(task)[1]
            say(f"wrote {task[0]} {task[1]}")

    # STAC documents, written in a fixed order so the bytes depend only on the seed.
    x0, y0, w, h = _extent(sz)
    bounds = (x0, y0 - h * RESOLUTION, x0 + w * RESOLUTION, y0)
    bbox, _ = _lonlat(bounds)
    s2_items = [_s2_item(i, t, sz, results["s2", i][tile])
                for i in range(len(S2_DATES)) for t, tile in enumerate(TILES)]
    s1_items = [_s1_item(j, sz) for j in range(len(S1_DATES))]
    if profile == "earth-search":
        s2_items = [_as_earth_search(it) for it in s2_items]
    start, end = ARCHIVE_DATETIME.split("/")
    (root / "collections").mkdir(exist_ok=True)
    (root / "items").mkdir(exist_ok=True)
    digest = hashlib.sha256()
    for cid, items in ((S2_COLLECTION, s2_items), (S1_COLLECTION, s1_items)):
        coll = _collection(cid, bbox, start, end)
        if profile == "earth-search" and cid == S2_COLLECTION:
            from geoflow.profiles import PROFILES

            keys = PROFILES["earth-search"].s2_assets  # the item_assets under ES's keys too
            coll["item_assets"] = {keys[k]: v for k, v in coll["item_assets"].items()}
        (root / "collections" / f"{cid}.json").write_text(json.dumps(coll, indent=1) + "\n")
        text = "".join(json.dumps(it, separators=(",", ":")) + "\n" for it in items)
        (root / "items" / f"{cid}.ndjson").write_text(text)
        digest.update(text.encode())

    mx, my = sz.demo_margin_m
    demo = _inner_lonlat((bounds[0] + mx, bounds[1] + my, bounds[2] - mx, bounds[3] - my))
    lc = _STATE["lc"]
    info: dict[str, Any] = {
        "seed": seed,
        "size": size,
        "profile": profile,
        "generator_version": GENERATOR_VERSION,
        "epsg": EPSG,
        "bbox": bbox,
        "datetime": ARCHIVE_DATETIME,
        "collections": list(COLLECTIONS),
        "truth": TRUTH_PATH,
        "tiles": list(TILES),
        "items": {S2_COLLECTION: len(s2_items), S1_COLLECTION: len(s1_items)},
        "demo_bbox": demo,
        "grid": {"epsg": EPSG, "resolution": RESOLUTION, "x0": x0, "y0": y0,
                 "width": w, "height": h},
        "tile_grids": {tile: {"epsg": EPSG, "resolution": RESOLUTION,
                              "x0": x0 + t * sz.tile_px * RESOLUTION, "y0": y0,
                              "width": sz.tile_px, "height": sz.tile_px}
                       for t, tile in enumerate(TILES)},
        "s2_dates": [_iso(d) for d, _ in S2_DATES],
        "s1_dates": [_iso(d) for d, _, _ in S1_DATES],
        "s2_cloud_cover": {it["id"]: it["properties"]["eo:cloud_cover"] for it in s2_items},
        "processing_baseline": PROCESSING_BASELINE,
        "classes": list(_world.CLASSES),
        "class_colors": list(_world.CLASS_COLORS),
        "class_fractions": [round(float(v), 6) for v in
                            np.bincount(lc.ravel(), minlength=len(_world.CLASSES)) / lc.size],
        "fingerprint": digest.hexdigest(),
    }
    (root / ARCHIVE_JSON).write_text(json.dumps(info, indent=2) + "\n")
    (root / _INCOMPLETE).unlink()
    say(f"archive written to {root} in {time.perf_counter() - t0:.1f} s")
    return info


def archive_info(dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an archive's summary (``DIR/archive.json``) and check its files are there.

    Parameters
    ----------
    dir
        An archive directory written by :func:`create_archive`.

    Returns
    -------
    dict
        The summary (see :func:`create_archive`) plus ``path`` (absolute directory).

    Raises
    ------
    ArchiveError
        No archive there, an interrupted one, or missing files.

    Examples
    --------
    >>> archive_info("/tmp/geoflow-small")["bbox"]  # doctest: +SKIP
    [9.96..., 54.02..., 10.04..., 54.05...]
    """
    root = Path(dir).expanduser().resolve()
    fix = f"run `geoflow archive create {root}`"
    if not root.is_dir():
        raise ArchiveError(f"no archive at {root}: the directory does not exist", hint=fix)
    if (root / _INCOMPLETE).exists():
        raise ArchiveError(f"the archive at {root} is incomplete (creation was interrupted)",
                           hint=f"{fix} again")
    meta = root / ARCHIVE_JSON
    if not meta.exists():
        raise ArchiveError(f"no archive at {root}: {ARCHIVE_JSON} is missing", hint=fix)
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise ArchiveError(f"{meta} is unreadable ({err})", hint=f"{fix} --overwrite") from None
    missing = [p for p in ([f"items/{c}.ndjson" for c in info.get("collections", [])]
                           + [f"collections/{c}.json" for c in info.get("collections", [])]
                           + [info.get("truth", TRUTH_PATH)]) if not (root / p).exists()]
    if missing:
        raise ArchiveError(f"the archive at {root} is missing {', '.join(missing)}",
                           hint=f"{fix} --overwrite")
    return {**info, "path": str(root)}


__all__ = [
    "ARCHIVE_SIZES",
    "COLLECTIONS",
    "EPSG",
    "S1_COLLECTION",
    "S2_COLLECTION",
    "TILES",
    "archive_info",
    "create_archive",
    "default_archive_dir",
]
