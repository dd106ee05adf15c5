"""Lazy Sentinel-2 + Sentinel-1 cubes on one grid, built with stackstac.

:func:`build_cube` turns the raw STAC items of a search into an ``xarray.Dataset`` backed by
Dask: nothing is read until it is computed. Sentinel-2 becomes float32 surface reflectance
(the processing-baseline offset applied), mosaicked per solar day, with its SCL layer and a
cloud mask; each Sentinel-2 date is paired with the nearest Sentinel-1 acquisition within a
tolerance, converted to dB. All layers share the :class:`~geoflow.grid.GridSpec` pixel grid
exactly, so a cube of a chunk window is a window of the cube of the whole grid.

Assets on the grid's own pixel lattice (the usual case: a UTM grid at 10 m over Sentinel-2
tiles of the same zone) are read without a GDAL warp: the window is read as stored and the
20 m bands are resampled here with GDAL's bilinear rule (bit for bit), by strided slices
rather than gathers. One task per solar day (or Sentinel-1 pass) and block reads, scales and
mosaics all its items, skipping an item wherever earlier ones already filled the block;
datasets stay open per worker across blocks, chunks and I/O threads. Together this reads a
chunk at about a quarter of the cost of stackstac's warped graph, which other assets go
through.

Examples
--------
>>> from geoflow.catalog import search_scenes            # doctest: +SKIP
>>> from geoflow.grid import GridSpec                     # doctest: +SKIP
>>> scenes = search_scenes(request, "http://127.0.0.1:8080")  # doctest: +SKIP
>>> cube = build_cube(scenes, GridSpec.from_bbox(request.bbox, align=32))  # doctest: +SKIP
>>> cube.reflectance.sel(band="B08").isel(time=0).compute()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.enums import Resampling

from geoflow.errors import CubeError
from geoflow.grid import GridSpec

# Band names, asset keys, SCL codes and the offset rule live at the bottom of the house; items
# reach the cube in canonical form (geoflow.profiles.normalize_item).
from geoflow.profiles import (
    S2_OFFSET,
    S2_OFFSET_BASELINE,
    S2_SCALE,
    SCL_ASSET,
    item_offset,
    item_overlaps,
    s2_offset,
)
from geoflow.sentinel import HIDDEN_SCL, S1_BANDS, S2_BANDS
from geoflow.signing import current, open_raster, sign_items

#: Polarisation coordinate labels of the ``sar`` variable (asset keys upper-cased).
POLARIZATIONS = tuple(b.upper() for b in S1_BANDS)
#: Nodata of Sentinel-1 RTC assets (linear gamma0, float32).
S1_NODATA = -32768.0
DEFAULT_CHUNKSIZE = 1024


def hidden_mask(scl: Any) -> Any:
    """The optical mask of an SCL array: 1 where the pixel hides the land cover, 0 where it
    shows it, NaN where SCL is 0 (no data).

    Hidden are the codes of :data:`geoflow.sentinel.HIDDEN_SCL`: cloud shadow (3), medium and
    high probability cloud (8, 9), cirrus (10) and snow/ice (11). Snow is not land cover: a
    snow-covered patch leans on SAR as a clouded one does. Works on numpy and dask arrays.

    Examples
    --------
    >>> import numpy as np
    >>> hidden_mask(np.array([0, 4, 5, 6, 8, 11], np.uint8)).tolist()
    [nan, 0.0, 0.0, 0.0, 1.0, 1.0]
    """
    mod = da if isinstance(scl, da.Array) else np
    hidden = mod.isin(scl, np.array(HIDDEN_SCL, dtype="uint8")).astype("float32")
    return mod.where(scl == 0, np.float32(np.nan), hidden)


def solar_day(item: Mapping[str, Any]) -> pd.Timestamp:
    """The local solar day of an item (UTC time shifted by the footprint's longitude / 15 h).

    Scenes of one overpass keep one solar day even when the UTC date changes mid-swath.

    Examples
    --------
    >>> solar_day({"properties": {"datetime": "2024-06-01T23:30:00Z"},
    ...            "bbox": [29.0, 0.0, 31.0, 1.0]})
    Timestamp('2024-06-02 00:00:00')
    """
    when = _item_time(item)
    bbox = item.get("bbox")
    lon = (float(bbox[0]) + float(bbox[2])) / 2.0 if bbox else 0.0
    return (when + pd.Timedelta(hours=lon / 15.0)).normalize()


def _item_time(item: Mapping[str, Any]) -> pd.Timestamp:
    props = item.get("properties") or {}
    value = props.get("datetime") or props.get("start_datetime")
    if not value:
        raise CubeError(f"item {item.get('id')!r} has no datetime",
                        hint="pass STAC items with properties.datetime")
    ts = pd.Timestamp(value)
    return ts.tz_convert(None) if ts.tzinfo is not None else ts


def _as_dicts(items: Sequence[Any] | None, sensor: str, assets: Sequence[str]) -> list[dict]:
    """Plain item dicts with ``proj:epsg`` set and the needed assets present."""
    out: list[dict] = []
    for raw in items or []:
        item = raw.to_dict() if hasattr(raw, "to_dict") else raw
        if not isinstance(item, Mapping):
            raise CubeError(f"{sensor} scene {raw!r} is not a STAC item",
                            hint="pass SceneSet items (raw STAC item dicts)")
        item = dict(item)
        props = dict(item.get("properties") or {})
        if props.get("proj:epsg") is None:
            # stackstac reads only proj:epsg; STAC 1.1 items (pystac >= 1.12) carry proj:code.
            code = props.get("proj:code")
            if isinstance(code, str) and code.upper().startswith("EPSG:"):
                props["proj:epsg"] = int(code.split(":", 1)[1])
            else:
                raise CubeError(
                    f"{sensor} item {item.get('id')!r} has no proj:epsg (or proj:code)",
                    hint="use items with the projection extension (proj:epsg), e.g. the raw "
                         "dicts of search.item_collection_as_dict()")
        item["properties"] = props
        missing = [a for a in assets if a not in (item.get("assets") or {})]
        if missing:
            raise CubeError(f"{sensor} item {item.get('id')!r} lacks assets {missing}",
                            hint=f"{sensor} items need the assets {list(assets)}")
        out.append(item)
    return out


def _chunks(chunksize: int | Sequence[int] | None, grid: GridSpec) -> tuple[int, int]:
    if chunksize is None:
        return (min(DEFAULT_CHUNKSIZE, grid.height), min(DEFAULT_CHUNKSIZE, grid.width))
    sizes = [chunksize] * 2 if isinstance(chunksize, int | np.integer) else list(chunksize)
    if len(sizes) != 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in sizes):
        raise CubeError(f"chunksize {chunksize!r} must be a positive pixel count or (y, x)",
                        hint="pass a multiple of the patch size, e.g. chunksize=512")
    return (int(sizes[0]), int(sizes[1]))


def _stack(items: list[dict], assets: list[str], grid: GridSpec, chunks: tuple[int, int],
           dtype: str, fill: Any, resampling: Resampling) -> xr.DataArray:
    import stackstac

    # stackstac opens the hrefs itself: sign the ones it reads, for this chunk
    items = sign_items(items, assets)
    try:
        with warnings.catch_warnings():
            # stackstac 0.5.1 uses affine's deprecated `*` operator (4 warnings per call).
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            arr = stackstac.stack(
                items, assets=assets, epsg=grid.epsg, resolution=grid.resolution,
                bounds=grid.bounds, snap_bounds=False, resampling=resampling,
                chunksize=chunks, dtype=np.dtype(dtype), fill_value=fill, rescale=False,
                sortby_date=False, xy_coords="center", properties=False, band_coords=False)
    except ValueError as err:
        raise CubeError(f"stackstac could not stack {len(items)} items onto the grid "
                        f"EPSG:{grid.epsg} {grid.bounds}: {err}",
                        hint="check that the items' proj metadata and the grid's CRS "
                             "match the scenes") from None
    if arr.shape[-2:] != grid.shape:
        raise CubeError(f"stacked shape {arr.shape[-2:]} differs from the grid {grid.shape}",
                        hint="use a grid whose bounds are whole pixels (GridSpec.from_bbox)")
    # Float rounding in stackstac's linspace: keep the grid's own coordinates, bit for bit.
    if not (np.allclose(arr.x.values, grid.x_coords, rtol=0, atol=grid.resolution * 1e-6)
            and np.allclose(arr.y.values, grid.y_coords, rtol=0, atol=grid.resolution * 1e-6)):
        raise CubeError("stackstac placed the pixels off the grid",  # pragma: no cover
                        hint="report this with the grid's to_dict()")
    return xr.DataArray(arr.data, dims=arr.dims,
                        coords={"id": ("time", list(arr["id"].values))})


# --------------------------------------------------------------------------- aligned reads
# When an asset lies on the grid's own pixel lattice (same CRS, no rotation, pixel size an
# integer multiple of the grid's, origin on a grid pixel edge) a GDAL warp is not needed: the
# window is read as is and resampled here. The result equals what stackstac's WarpedVRT gives
# (GDAL's bilinear kernel with nodata pixels left out and the weights renormalised, rounded to
# the asset's integer type; nearest = the source pixel under the output pixel's centre), at a
# fraction of the cost: no VRT, no warp, no per-block transformer. Other assets go through
# stackstac. Environment ``GEOFLOW_CUBE_READER=stackstac`` forces the general path.
_MAX_FACTOR = 8


def _aligned_factor(asset: Mapping[str, Any], epsg: Any, grid: GridSpec) -> int | None:
    """The integer ratio asset pixel / grid pixel if ``asset`` is on the grid's lattice."""
    tf, shape = asset.get("proj:transform"), asset.get("proj:shape")
    if epsg != grid.epsg or not tf or not shape or len(tf) < 6 or len(shape) != 2:
        return None
    a, b, c, d, e, f = (float(v) for v in tf[:6])
    res = grid.resolution
    k = round(a / res)
    if b != 0 or d != 0 or e != -a or not 1 <= k <= _MAX_FACTOR or abs(a - k * res) > 1e-9 * a:
        return None
    for offset in ((c - grid.x0) / res, (f - grid.y0) / res):
        if abs(offset - round(offset)) > 1e-6:
            return None
    return k


def _axis(start: float, res: float, n: int, src0: float, src_res: float
          ) -> np.ndarray:
    """Source pixel coordinates (continuous) of ``n`` output pixel centres along one axis."""
    return (start + (np.arange(n) + 0.5) * res - src0) / src_res


def _phases(idx: np.ndarray, k: int) -> list[tuple[int, slice | np.ndarray]]:
    """Split taps ``idx`` into ``k`` phases: ``(p, source)``, a slice where the phase is steady.

    Upsampling by an integer factor ``k`` repeats its taps every ``k`` output pixels, so
    phase ``p`` (outputs ``p::k``) reads source pixels ``idx[p] + m``: a contiguous slice and
    a strided store instead of a gather, several times faster on a 512 px block.
    """
    out: list[tuple[int, slice | np.ndarray]] = []
    for p in range(min(k, len(idx))):
        a = idx[p::k]
        steady = np.array_equal(a, a[0] + np.arange(len(a)))
        out.append((p, slice(int(a[0]), int(a[0]) + len(a)) if steady else a))
    return out


def _take_axis(v: np.ndarray, idx: np.ndarray, axis: int, k: int) -> np.ndarray:
    """``np.take(v, idx, axis)`` for the taps of an integer upsampling factor ``k``."""
    shape = list(v.shape)
    shape[axis] = len(idx)
    out = np.empty(shape, dtype=v.dtype)
    lead = (slice(None),) * axis  # index along `axis` in place: no transposed temporaries
    for p, source in _phases(idx, k):
        out[(*lead, slice(p, None, k))] = v[(*lead, source)]
    return out


def _interp_axis(v: np.ndarray, i0: np.ndarray, w0: np.ndarray, i1: np.ndarray,
                 w1: np.ndarray, axis: int, k: int) -> np.ndarray:
    """``v[i0] * w0 + v[i1] * w1`` along ``axis`` for the taps of an upsampling factor ``k``."""
    shape = list(v.shape)
    shape[axis] = len(i0)
    out = np.empty(shape, dtype=v.dtype)
    lead = (slice(None),) * axis  # index along `axis` in place: no transposed temporaries
    trail = (None,) * (v.ndim - 1 - axis)  # weights broadcast along `axis`
    for (p, s0), (_, s1) in zip(_phases(i0, k), _phases(i1, k), strict=True):
        b0, b1 = w0[p::k], w1[p::k]
        if (b0 == b0[0]).all() and (b1 == b1[0]).all():
            b0, b1 = b0[:1], b1[:1]
        dst = out[(*lead, slice(p, None, k))]
        np.multiply(v[(*lead, s0)], b0[(slice(None), *trail)], out=dst)
        dst += v[(*lead, s1)] * b1[(slice(None), *trail)]
    return out


def _read_aligned(href: str, tf: tuple[float, ...], src_shape: tuple[int, int],
                  block: tuple[float, float, float, int, int], bilinear: bool, dtype: str,
                  fill: Any) -> np.ndarray:
    """One grid block (1, 1, h, w) of one aligned asset; nodata and outside it -> ``fill``."""
    from rasterio.windows import Window

    x0, y0, res, h, w = block
    a, _, c, _, e, f = tf
    sx = _axis(x0, res, w, c, a)
    sy = _axis(-y0, res, h, -f, -e)  # rows grow southwards: flip the sign of y
    ny, nx = src_shape
    # GDAL leaves an output pixel empty when its centre falls outside the source raster.
    inside_x = (sx >= 0) & (sx < nx)
    inside_y = (sy >= 0) & (sy < ny)
    if not inside_x.any() or not inside_y.any():
        return np.full((1, 1, h, w), fill, dtype=dtype)
    if bilinear:
        tx, ty = sx - 0.5, sy - 0.5
        ix0, iy0 = np.floor(tx).astype(np.int64), np.floor(ty).astype(np.int64)
        wx1, wy1 = tx - ix0, ty - iy0
        cols = [(ix0, 1.0 - wx1), (ix0 + 1, wx1)]
        rows = [(iy0, 1.0 - wy1), (iy0 + 1, wy1)]
    else:
        cols = [(np.floor(sx).astype(np.int64), np.ones(w))]
        rows = [(np.floor(sy).astype(np.int64), np.ones(h))]
    lo_c = max(0, int(min(i[inside_x].min() for i, _ in cols)))
    hi_c = min(nx, int(max(i[inside_x].max() for i, _ in cols)) + 1)
    lo_r = max(0, int(min(i[inside_y].min() for i, _ in rows)))
    hi_r = min(ny, int(max(i[inside_y].max() for i, _ in rows)) + 1)
    data, nodata = _read_window(href, Window(lo_c, lo_r, hi_c - lo_c, hi_r - lo_r))
    if nodata is None:
        valid = np.ones(data.shape, dtype=bool)
    elif np.isnan(nodata):
        valid = ~np.isnan(data)
    else:
        valid = data != nodata
    # The usual block lies inside the raster with no nodata: no masks to apply.
    all_valid = bool(valid.all())
    clean = bool(inside_x.all() and inside_y.all()) and all_valid
    k = max(1, round(a / res))
    if len(rows) == 1 or (not (rows[1][1].any() or cols[1][1].any())):
        # Nearest, or bilinear exactly on the source pixel centres (same pixel size): a copy.
        ri = np.clip(rows[0][0] - lo_r, 0, hi_r - lo_r - 1)
        ci = np.clip(cols[0][0] - lo_c, 0, hi_c - lo_c - 1)
        whole = not (len(ri) != data.shape[0] or len(ci) != data.shape[1]
                     or ri[0] != 0 or ci[0] != 0)
        sel = data if whole else _take_axis(_take_axis(data, ri, 0, k), ci, 1, k)
        if clean:
            # Every pixel is set: the read (or its upsampled copy) itself, cast if need be;
            # no filled block to copy it into.
            return sel.astype(dtype, copy=False)[None, None]
        out = np.full((h, w), fill, dtype=dtype)
        ok = (inside_y[:, None] & inside_x[None, :]
              & (valid if whole else valid[np.ix_(ri, ci)]))
        # copyto, not boolean indexing: no gathered temporaries.
        np.copyto(out, sel, where=ok, casting="unsafe")
        return out[None, None]
    # Bilinear, separably: rows first, then columns, for the weighted values and the weights
    # of valid pixels; neighbours outside the raster weigh 0. Integer DNs of up to 16 bits
    # times these weights (multiples of 1/16 for a factor of 2 or 4) are exact in float32,
    # so the rounding matches GDAL's double arithmetic; anything else works in float64.
    work = np.float32 if (np.issubdtype(data.dtype, np.integer) and data.itemsize <= 2
                          and k in (2, 4)) else np.float64
    # Only output pixels whose centre falls inside the raster get a value: a block at the
    # raster's edge is computed on its inside part (a contiguous range of rows and columns).
    ya, yb = int(inside_y.argmax()), int(inside_y.argmax() + inside_y.sum())
    xa, xb = int(inside_x.argmax()), int(inside_x.argmax() + inside_x.sum())
    # The window padded by one pixel: a neighbour outside the raster reads value 0, weight 0.
    hh, ww = hi_r - lo_r + 2, hi_c - lo_c + 2
    (r0, rw0), (r1, rw1) = ((np.clip(i[ya:yb] - lo_r + 1, 0, hh - 1), wt[ya:yb].astype(work))
                            for i, wt in rows)
    (c0, cw0), (c1, cw1) = ((np.clip(i[xa:xb] - lo_c + 1, 0, ww - 1), wt[xa:xb].astype(work))
                            for i, wt in cols)
    padded = np.zeros((hh, ww), dtype=work)
    padded[1:-1, 1:-1] = data
    edge = any(((i == 0) | (i == n - 1)).any() for i, n in ((r0, hh), (r1, hh), (c0, ww), (c1, ww)))
    if work is np.float32 and not edge and all_valid and (yb - ya, xb - xa) == (h, w):
        # Every neighbour is valid and inside, so every weight sum is exactly 1 and the value
        # is the weighted sum itself (exact in float32, see above), rounded half up. (A block
        # reaching past the raster always has taps in the padding, so it is never here.)
        num = _interp_axis(_interp_axis(padded, r0, rw0, r1, rw1, 0, k), c0, cw0, c1, cw1, 1, k)
        num += work(0.5)
        np.floor(num, out=num)
        return num.astype(dtype, copy=False)[None, None]  # the result itself: no copy
    out = np.full((h, w), fill, dtype=dtype)
    sub = out[ya:yb, xa:xb]
    padded[1:-1, 1:-1][~valid] = 0
    weight = np.zeros((hh, ww), dtype=work)
    weight[1:-1, 1:-1] = valid
    num = _interp_axis(_interp_axis(padded, r0, rw0, r1, rw1, 0, k), c0, cw0, c1, cw1, 1, k)
    den = _interp_axis(_interp_axis(weight, r0, rw0, r1, rw1, 0, k), c0, cw0, c1, cw1, 1, k)
    # GDAL also leaves a pixel empty when the source pixel under its centre is nodata.
    centre = _take_axis(_take_axis(valid, np.floor(sy[ya:yb]).astype(np.int64) - lo_r, 0, k),
                        np.floor(sx[xa:xb]).astype(np.int64) - lo_c, 1, k)
    ok = (den > 1e-5) & centre
    val = np.divide(num, den, out=np.zeros(num.shape), where=ok, dtype=np.float64)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        val = np.clip(np.floor(val + 0.5), info.min, info.max)
    np.copyto(sub, val, where=ok, casting="unsafe")
    return out[None, None]


#: Open datasets kept per process during a read session (a regional run on a worker, whose
#: GDAL block cache is bounded by geoflow._cluster.WORKER_ENV): an asset is opened once per
#: worker, not once per block, chunk or I/O thread (an open costs requests and a header
#: parse), and the blocks it has decoded serve the next chunk too. GDAL datasets are not
#: thread-safe, so each has a lock held while it is read; a failed read drops the entry.
#: Outside a session every read opens and closes its dataset.
MAX_OPEN_DATASETS = 192
_OPEN: OrderedDict[str, tuple[Any, threading.Lock]] = OrderedDict()
_OPEN_LOCK = threading.Lock()
_OPENING: dict[str, threading.Lock] = {}
_SESSION: list[str | None] = [None]


def read_session(token: str | None) -> None:
    """Start a read session: datasets kept open under another token are opened again.

    A regional run sets one token for all its chunks, so assets are opened once per worker
    and run, and a new run sees the assets as they are now (a fixed or a newly broken
    server), not handles and blocks cached by an earlier run.

    Examples
    --------
    >>> read_session("run-1")
    """
    _SESSION[0] = token


def _close(entry: tuple[Any, threading.Lock] | None) -> None:
    if entry is not None:
        with entry[1], contextlib.suppress(Exception):  # after a read in flight finishes
            entry[0].close()


def _usable(entry: tuple[Any, threading.Lock] | None, href: str) -> bool:
    return (entry is not None and not entry[0].closed and _same_file(entry[0], href)
            and getattr(entry[0], "geoflow_session", None) == _SESSION[0]
            # Its signature not renewed since (geoflow.signing): a cache look-up, never a
            # request (a signer without peek is taken as current; a refused read re-signs).
            and current(entry[0], href))


def _open_cached(href: str, failed: str | None = None) -> tuple[Any, threading.Lock]:
    with _OPEN_LOCK:
        entry = _OPEN.get(href)
        if _usable(entry, href):
            _OPEN.move_to_end(href)
            return entry  # type: ignore[return-value]
        gate = _OPENING.setdefault(href, threading.Lock())
    # One thread opens an asset while others needing it wait; threads open different assets
    # at the same time.
    with gate:
        with _OPEN_LOCK:
            entry = _OPEN.get(href)
            if _usable(entry, href):
                return entry  # type: ignore[return-value]
        src = open_raster(href, failed)  # signed just before the open (geoflow.signing)
        src.geoflow_stat = _stat(href)
        src.geoflow_session = _SESSION[0]
        stale: list[tuple[Any, threading.Lock] | None] = []
        with _OPEN_LOCK:
            stale.append(_OPEN.pop(href, None))
            entry = _OPEN[href] = (src, threading.Lock())
            while len(_OPEN) > MAX_OPEN_DATASETS:
                stale.append(_OPEN.popitem(last=False)[1])
            _OPENING.pop(href, None)
    for old in stale:
        _close(old)
    return entry


def _read_window(href: str, window: Any) -> tuple[np.ndarray, Any]:
    """Band 1 in ``window`` and the nodata value; a kept-open dataset inside a read session."""
    # One retry per read, here: a refused signature (an expired or revoked token: GDAL
    # reports a refused block read without its HTTP status) reopens with a new token, and in a
    # read session a handle kept from an earlier chunk may also be stale (server restarted). A
    # real fault then fails with the open's own message (HTTP status).
    failed: str | None = None
    try:
        if _SESSION[0] is None:  # outside a regional run: open, read, close
            for attempt in (1, 2):
                with open_raster(href, failed) as src:
                    try:
                        return src.read(1, window=window), src.nodata
                    except Exception:
                        failed = getattr(src, "geoflow_signed", None)
                        if attempt == 2 or failed is None:  # unsigned: nothing to renew
                            raise
        else:
            for attempt in (1, 2):
                src, lock = _open_cached(href, failed)
                with lock:
                    if not src.closed:  # not evicted between the lookup and the lock
                        try:
                            return src.read(1, window=window), src.nodata
                        except Exception:
                            if attempt == 2:
                                raise
                            failed = getattr(src, "geoflow_signed", None)
                _forget(href)
        raise RuntimeError("the dataset was closed twice while being read")  # pragma: no cover
    except Exception as err:
        _forget(href)
        raise RuntimeError(f"Error reading {href!r}: {err!r}") from err


def _stat(href: str) -> tuple[int, int] | None:
    """(mtime, size) of a local file; None for URLs (remote assets are immutable objects)."""
    import os

    path = href[7:] if href.startswith("file://") else href
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _same_file(src: Any, href: str) -> bool:
    # A local file rewritten in place (a regenerated archive) must not be read from the old
    # handle, which would still see the old inode.
    return getattr(src, "geoflow_stat", None) == _stat(href)


def _forget(href: str) -> None:
    with _OPEN_LOCK:
        entry = _OPEN.pop(href, None)
    _close(entry)


def close_datasets() -> None:
    """Close the datasets this process keeps open (tests and long-lived workers may call it).

    Examples
    --------
    >>> close_datasets()
    """
    with _OPEN_LOCK:
        entries = list(_OPEN.values())
        _OPEN.clear()
    for entry in entries:
        _close(entry)


def _finish(raw: np.ndarray, kind: str, offset: float) -> np.ndarray:
    """One item's block as the cube holds it, with the same float32 arithmetic as xarray's.

    Works in place on ``raw`` (a float32 block of :func:`_read_aligned`'s, owned by the
    caller): the same element-wise float32 operations as ``(raw + offset) / 10000`` and
    ``10 * log10(raw)``, without their temporaries.
    """
    if kind == "reflectance":  # DN -> (DN + offset) / 10000; DN 0 (no data) -> NaN
        nodata = raw == 0
        raw += np.float32(offset)
        raw /= np.float32(S2_SCALE)
        raw[nodata] = np.nan
        return raw
    if kind == "db":  # linear gamma0 -> dB; <= 0 (no dB value) -> NaN
        invalid = ~(raw > 0)
        raw[invalid] = np.float32(1.0)  # log10(1) = 0: nothing warns
        np.log10(raw, out=raw)
        raw *= np.float32(10.0)
        raw[invalid] = np.nan
        return raw
    return raw  # SCL codes as they are


#: Per layer kind: dtype and fill of the raw reads, and the cube's no-data value.
_KINDS: dict[str, tuple[str, Any, Any]] = {
    "reflectance": ("float32", np.float32(np.nan), np.float32(np.nan)),
    "scl": ("uint8", np.uint8(0), np.uint8(0)),
    "db": ("float32", np.float32(np.nan), np.float32(np.nan)),
}

_Read = tuple[str, tuple[float, ...], tuple[int, int]]


def _read_group(reads: list[list[_Read | None]], offsets: list[float],
                block: tuple[float, float, float, int, int], bilinear: bool, kind: str,
                squeeze: bool) -> np.ndarray:
    """One grid block of a group of items (a solar day, a Sentinel-1 pass): (assets, h, w).

    Items are taken in order and the first valid pixel wins (``stackstac.mosaic``'s rule);
    an asset is not read at all where earlier items already filled its layer, nor where it
    does not reach the block (``None``). One task does what stackstac's graph does in about
    ten per item and asset (read, scale, mask, cast, mosaic).
    """
    raw_dtype, fill, nodata = _KINDS[kind]
    _, _, _, h, w = block
    # Not filled: a layer's first read sets every pixel, and a layer no item reaches is
    # filled with no-data at the end.
    out = np.empty((len(reads[0]), h, w), dtype=raw_dtype)
    written = [False] * len(out)  # an unwritten layer is all no-data: no mask needed
    for row, offset in zip(reads, offsets, strict=True):
        for b, (layer, spec) in enumerate(zip(out, row, strict=True)):
            if spec is None:
                continue
            todo = None
            if written[b]:
                todo = np.isnan(layer) if np.isnan(nodata) else layer == nodata
                if not todo.any():
                    continue
            raw = _read_aligned(*spec, block, bilinear, raw_dtype, fill)[0, 0]
            np.copyto(layer, _finish(raw, kind, offset), where=True if todo is None else todo)
            written[b] = True
    for layer, done in zip(out, written, strict=True):
        if not done:
            layer.fill(nodata)
    return out[0] if squeeze else out


def _aligned_groups(groups: list[list[dict]], assets: list[str], grid: GridSpec,
                    chunks: tuple[int, int], kind: str, resampling: Resampling,
                    offsets: dict[str, float] | None = None) -> list[da.Array | None] | None:
    """Per group of items, its mosaic on the grid as one dask array; None for an empty group.

    Returns None (use stackstac) unless every asset lies on the grid's lattice. The arrays are
    (assets, y, x), or (y, x) for a single asset. ``offsets`` maps item ids to the offset of
    ``kind="reflectance"``.
    """
    import os

    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if os.environ.get("GEOFLOW_CUBE_READER", "").lower() == "stackstac":
        return None
    if resampling not in (Resampling.bilinear, Resampling.nearest):
        return None
    specs: list[list[list[tuple[_Read, tuple[float, float, float, float]]]]] = []
    for group in groups:
        rows = []
        for it in group:
            row = []
            for key in assets:
                asset = it["assets"][key]
                if _aligned_factor(asset, it["properties"].get("proj:epsg"), grid) is None:
                    return None
                tf = tuple(float(v) for v in asset["proj:transform"][:6])
                shape = (int(asset["proj:shape"][0]), int(asset["proj:shape"][1]))
                a, c, f = tf[0], tf[2], tf[5]
                row.append(((str(asset["href"]), tf, shape),
                            (c, c + shape[1] * a, f, f - shape[0] * a)))  # w, e, n, s
            rows.append(row)
        specs.append(rows)
    cy, cx = chunks
    ny, nx = grid.shape
    ys = [(r, min(cy, ny - r)) for r in range(0, ny, cy)]
    xs = [(c, min(cx, nx - c)) for c in range(0, nx, cx)]
    bilinear = resampling == Resampling.bilinear
    squeeze = len(assets) == 1
    res = grid.resolution
    out: list[da.Array | None] = []
    for group, rows in zip(groups, specs, strict=True):
        if not group:
            out.append(None)
            continue
        item_offsets = [float((offsets or {}).get(it["id"], 0.0)) for it in group]
        name = f"geoflow-read-{kind}-" + tokenize(rows, item_offsets, grid.to_dict(), chunks,
                                                   bilinear)
        dsk: dict[Any, Any] = {}
        for bi, (r, h) in enumerate(ys):
            for bj, (col, w) in enumerate(xs):
                bx0, by0 = grid.x0 + col * res, grid.y0 - r * res
                # Assets that do not reach the block: no open, no request.
                reads = [[spec if (sw < bx0 + w * res and se > bx0 and ss < by0
                                   and sn > by0 - h * res) else None
                          for spec, (sw, se, sn, ss) in row] for row in rows]
                task = (name, bi, bj) if squeeze else (name, 0, bi, bj)
                dsk[task] = (_read_group, reads, item_offsets, (bx0, by0, res, h, w), bilinear,
                            kind, squeeze)
        yx = (tuple(h for _, h in ys), tuple(w for _, w in xs))
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
        out.append(da.Array(graph, name, chunks=yx if squeeze else ((len(assets),), *yx),
                            dtype=_KINDS[kind][0]))
    return out


def _mosaic(arr: xr.DataArray, groups: list[list[str]], nodata: Any) -> list[Any]:
    """One dask array per group of item ids (first valid pixel wins, in group order)."""
    import stackstac

    index = {item_id: i for i, item_id in enumerate(arr["id"].values)}
    out: list[Any] = []
    for ids in groups:
        rows = [index[i] for i in ids if i in index]
        if not rows:
            out.append(None)
        elif len(rows) == 1:
            out.append(arr.data[rows[0]])
        else:
            out.append(stackstac.mosaic(arr.isel(time=rows), dim="time", reverse=True,
                                        nodata=nodata).data)
    return out


def _full(shape: tuple[int, ...], chunks: tuple[int, ...], value: Any, dtype: str) -> da.Array:
    return da.full(shape, value, dtype=dtype, chunks=chunks)


def _pair_s1(s2_times: list[pd.Timestamp], acquisitions: list[tuple[pd.Timestamp, list[str]]],
             tolerance: pd.Timedelta) -> list[int | None]:
    """For each S2 time, the index of the nearest S1 acquisition within the tolerance."""
    pairs: list[int | None] = []
    for t2 in s2_times:
        best: int | None = None
        best_gap = tolerance
        for k, (t1, _) in enumerate(acquisitions):
            gap = abs(t1 - t2)
            # `<=`: a gap of exactly the tolerance still pairs; ties keep the earlier one.
            if gap <= best_gap and (best is None or gap < best_gap):
                best, best_gap = k, gap
        pairs.append(best)
    return pairs


def build_cube(
    scenes: Any,
    grid: GridSpec,
    *,
    s1_tolerance_days: float = 6,
    chunksize: int | Sequence[int] | None = None,
) -> xr.Dataset:
    """Build the lazy S2 + S1 cube of a scene set on a grid; nothing is read until computed.

    Parameters
    ----------
    scenes
        A :class:`geoflow.catalog.SceneSet` (anything with ``.s2`` and ``.s1`` lists of raw
        STAC item dicts; pystac Items are converted).
    grid
        The output grid; every variable lands on it exactly (``x``/``y`` equal
        ``grid.x_coords``/``grid.y_coords``). Any grid works, a chunk window too.
    s1_tolerance_days
        Largest gap between a Sentinel-2 date and its Sentinel-1 pair.
    chunksize
        Dask chunk size in pixels, ``int`` or ``(y, x)``; pass a multiple of the patch size
        so chunks hold whole patches. Default: up to 1024.

    Returns
    -------
    xarray.Dataset
        ``reflectance`` (time, band, y, x) float32 surface reflectance, NaN = no data;
        ``scl`` (time, y, x) uint8, 0 = no data; ``cloud`` (time, y, x) float32, 1 where SCL
        is cloud/shadow/cirrus or snow (:data:`geoflow.sentinel.HIDDEN_SCL`: snow hides the
        land cover as a cloud does), 0 clear, NaN no data; ``sar`` (time, pol, y, x) float32 dB, NaN
        where there is no Sentinel-1 pair. Coordinates: ``time`` (Sentinel-2 solar day),
        ``band``, ``pol``, ``y``, ``x``, ``s2_time`` (mean acquisition time), ``s1_time``
        (NaT when unpaired), ``s1_available``, ``s2_ids``/``s1_ids`` (comma-joined item ids)
        and the CRS in ``spatial_ref`` (rioxarray).

    Raises
    ------
    CubeError
        No Sentinel-2 scenes, items without ``proj:epsg`` or without the needed assets, a
        geographic grid, or a bad chunk size. A grid that no scene reaches gives an all
        no-data cube (``s2_ids`` empty), not an error.

    Examples
    --------
    >>> cube = build_cube(scenes, GridSpec.from_bbox(bbox, align=32), chunksize=256)
    ... # doctest: +SKIP
    >>> cube.sar.sel(pol="VV").where(cube.s1_available).mean().compute()  # doctest: +SKIP
    """
    if not isinstance(grid, GridSpec):
        raise CubeError(f"grid must be a GridSpec, got {type(grid).__name__}",
                        hint="build one with GridSpec.from_bbox(bbox)")
    if grid.crs.is_geographic:
        raise CubeError(f"grid CRS EPSG:{grid.epsg} is geographic (degrees)",
                        hint="use a projected grid in metres, e.g. GridSpec.from_bbox(bbox) "
                             "picks the UTM zone")
    try:
        tolerance = pd.Timedelta(days=float(s1_tolerance_days))
    except (TypeError, ValueError, OverflowError):
        tolerance = pd.Timedelta(days=-1)
    if not tolerance >= pd.Timedelta(0):
        raise CubeError(f"s1_tolerance_days {s1_tolerance_days!r} must be a number >= 0",
                        hint="pass a number of days, e.g. s1_tolerance_days=6")
    chunks = _chunks(chunksize, grid)

    if isinstance(scenes, Mapping):  # {"s2": [...], "s1": [...]} works as well
        scenes = SimpleNamespace(s2=scenes.get("s2"), s1=scenes.get("s1"))
    if not hasattr(scenes, "s2"):
        raise CubeError(f"scenes must be a SceneSet, got {type(scenes).__name__}",
                        hint="pass the result of geoflow.catalog.search_scenes(request, url)")
    s2_all = _as_dicts(scenes.s2, "Sentinel-2", [*S2_BANDS, SCL_ASSET])
    s1_all = _as_dicts(getattr(scenes, "s1", None), "Sentinel-1", list(S1_BANDS))
    if not s2_all:
        raise CubeError("no Sentinel-2 scenes to build a cube from",
                        hint="widen the dates or the bbox, or raise max_cloud, and search again")

    # Time axis: every solar day of the scene set, so that cubes of different windows of one
    # request have the same time steps (windows missing a day get NaN there).
    s2_all.sort(key=lambda it: (solar_day(it), _item_time(it), it["id"]))
    days = sorted({solar_day(it) for it in s2_all})
    by_day: dict[pd.Timestamp, list[dict]] = {d: [] for d in days}
    for it in s2_all:
        by_day[solar_day(it)].append(it)
    s2_times = [pd.Series([_item_time(it) for it in by_day[d]]).mean() for d in days]

    area = grid.bbox_lonlat
    # A window that no scene reaches (a chunk past the archive's edge) is all no-data, not an
    # error: a regional run maps it as no-data instead of failing the chunk.
    s2_items = [it for it in s2_all if item_overlaps(it, area)]
    nt, (ny, nx) = len(days), grid.shape
    cy, cx = chunks
    refl_days: list[Any] = [None] * nt
    scl_days: list[Any] = [None] * nt
    day_ids: list[list[str]] = [[] for _ in days]
    if s2_items:
        in_area = {it["id"] for it in s2_items}
        day_items = [[it for it in by_day[d] if it["id"] in in_area] for d in days]
        day_ids = [[it["id"] for it in group] for group in day_items]
        offsets = {it["id"]: item_offset(it) for it in s2_items}
        # --- Sentinel-2 reflectance: DN -> (DN + offset) / 10000, DN 0 = nodata.
        fast = _aligned_groups(day_items, list(S2_BANDS), grid, chunks, "reflectance",
                               Resampling.bilinear, offsets)
        if fast is not None:
            refl_days = fast
        else:
            dn = _stack(s2_items, list(S2_BANDS), grid, chunks, "float32", np.float32(np.nan),
                        Resampling.bilinear)
            off = xr.DataArray(np.array([offsets[i] for i in dn["id"].values], dtype="float32"),
                               dims="time")
            refl = ((dn + off) / np.float32(S2_SCALE)).where(dn != 0).astype("float32")
            refl_days = _mosaic(refl.assign_coords(id=dn["id"]), day_ids, np.nan)
        # --- SCL at 20 m -> 10 m by nearest neighbour (codes must not be blended); 0 = nodata.
        fast = _aligned_groups(day_items, [SCL_ASSET], grid, chunks, "scl", Resampling.nearest)
        if fast is not None:
            scl_days = fast
        else:
            scl_raw = _stack(s2_items, [SCL_ASSET], grid, chunks, "uint8", np.uint8(0),
                             Resampling.nearest)
            scl_days = [a[0] if a is not None else None for a in _mosaic(scl_raw, day_ids, 0)]
    refl_days = [a if a is not None else
                 _full((len(S2_BANDS), ny, nx), (1, cy, cx), np.nan, "float32")
                 for a in refl_days]
    scl_days = [a if a is not None else _full((ny, nx), (cy, cx), 0, "uint8")
                for a in scl_days]
    scl = da.stack(scl_days)
    cloud = hidden_mask(scl)

    # --- Sentinel-1: group frames of one pass, pair each S2 date with the nearest pass.
    s1_items = [it for it in s1_all if item_overlaps(it, area)]
    s1_items.sort(key=lambda it: (_item_time(it), it["id"]))
    passes: dict[tuple[pd.Timestamp, str], list[dict]] = {}
    for it in s1_items:
        key = (solar_day(it), str(it["properties"].get("sat:orbit_state", "")))
        passes.setdefault(key, []).append(it)
    acquisitions = [(pd.Series([_item_time(it) for it in group]).mean(),
                     [it["id"] for it in group]) for group in passes.values()]
    pairs = _pair_s1(s2_times, acquisitions, tolerance)
    used = sorted({k for k in pairs if k is not None})
    sar_days: list[Any] = [None] * nt
    if used:
        groups = [passes[list(passes)[k]] for k in used]
        fast = _aligned_groups(groups, list(S1_BANDS), grid, chunks, "db", Resampling.bilinear)
        if fast is None:
            lin = _stack([it for g in groups for it in g], list(S1_BANDS), grid, chunks,
                         "float32", np.float32(np.nan), Resampling.bilinear)
            # Linear gamma0 <= 0 (and the -32768 nodata, should a file lack its nodata tag)
            # has no dB value: mask it before the log so nothing warns.
            valid = lin > 0
            db = (np.float32(10.0) * xr.apply_ufunc(np.log10, lin.where(valid, np.float32(1.0)),
                                                     dask="allowed")).where(valid)
            db = db.astype("float32").assign_coords(id=lin["id"])
            fast = _mosaic(db, [acquisitions[k][1] for k in used], np.nan)
        mosaics = dict(zip(used, fast, strict=True))
        sar_days = [mosaics[k] if k is not None else None for k in pairs]
    sar = da.stack([a if a is not None else _full((len(S1_BANDS), ny, nx), (1, cy, cx),
                                                   np.nan, "float32") for a in sar_days])

    time = pd.DatetimeIndex(days).as_unit("ns")
    s1_time = pd.DatetimeIndex([acquisitions[k][0] if k is not None else pd.NaT
                                for k in pairs]).as_unit("ns")
    ds = xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), da.stack(refl_days)),
            "scl": (("time", "y", "x"), scl),
            "cloud": (("time", "y", "x"), cloud),
            "sar": (("time", "pol", "y", "x"), sar),
        },
        coords={
            "time": time,
            "band": list(S2_BANDS),
            "pol": list(POLARIZATIONS),
            "y": grid.y_coords,
            "x": grid.x_coords,
            "s2_time": ("time", pd.DatetimeIndex(s2_times).as_unit("ns")),
            "s1_time": ("time", s1_time),
            "s1_available": ("time", np.array([k is not None for k in pairs], dtype=bool)),
            "s2_ids": ("time", np.array([",".join(ids) for ids in day_ids], dtype=str)),
            "s1_ids": ("time", np.array([",".join(acquisitions[k][1]) if k is not None
                                         else "" for k in pairs], dtype=str)),
        },
        attrs={
            "grid": json.dumps(grid.to_dict()),
            "s1_tolerance_days": float(s1_tolerance_days),
            "reflectance_scale": f"(DN + offset) / {S2_SCALE:g}, offset per item "
                                 "(geoflow:offset, decided by geoflow.profiles.item_offset: "
                                 "the catalog's offset flags or raster:bands, else "
                                 f"{S2_OFFSET:g} from processing baseline "
                                 f"{S2_OFFSET_BASELINE})",
            "cloud_scl_codes": ",".join(str(c) for c in HIDDEN_SCL),
        },
    )
    ds["reflectance"].attrs = {"units": "1", "long_name": "surface reflectance"}
    ds["sar"].attrs = {"units": "dB", "long_name": "backscatter gamma0 (10*log10 linear)"}
    ds["scl"].attrs = {"long_name": "Sentinel-2 scene classification", "nodata": 0}
    ds["cloud"].attrs = {"long_name": "optical mask (1 cloud/shadow/cirrus/snow, 0 clear)"}
    with warnings.catch_warnings():
        # rioxarray 0.19 also uses affine's deprecated `*` operator.
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        ds = ds.rio.write_crs(grid.epsg).rio.write_transform(grid.transform)
    return ds


__all__ = ["POLARIZATIONS", "SCL_ASSET", "build_cube", "close_datasets", "hidden_mask",
           "read_session", "s2_offset", "solar_day"]
