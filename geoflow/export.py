"""Export a map for any GIS: a Cloud-Optimised GeoTIFF with a colour table, and a PNG quicklook.

Examples
--------
>>> import numpy as np, rasterio, tempfile, xarray as xr
>>> from geoflow.export import export_cog
>>> m = xr.Dataset({"summary_class": (("y", "x"), np.array([[0, 1], [1, 255]], "uint8"))},
...                coords={"y": [5000160.0, 4999840.0], "x": [500160.0, 500480.0]},
...                attrs={"classes": ["Barren", "Water"], "class_colors": ["#aa9977", "#2255cc"],
...                       "crs": "EPSG:32632"})
>>> tif = export_cog(m, tempfile.mkdtemp() + "/map.tif")
>>> with rasterio.open(tif) as src:
...     src.crs.to_epsg(), src.res, src.colormap(1)[1], src.nodata
(32632, (320.0, 320.0), (34, 85, 204, 255), 255.0)
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geoflow._plot import class_legend, pick_layer, plot
from geoflow.errors import StoreError

NODATA = 255


def _open(store_path_or_ds: str | os.PathLike[str] | xr.Dataset) -> xr.Dataset:
    if isinstance(store_path_or_ds, xr.Dataset | xr.DataArray):
        return store_path_or_ds  # type: ignore[return-value]
    import rioxarray  # noqa: F401

    from geoflow.errors import strip_secrets

    text = os.fspath(store_path_or_ds)
    if "://" not in text and not (Path(text) / "zarr.json").is_file():
        raise StoreError(f"{text} is not a Zarr map store (no zarr.json)",
                         hint="pass the path given to `geoflow classify --out`")
    try:
        # Raw uint8 values: 255 stays the no-data code instead of becoming NaN.
        return xr.open_zarr(text, decode_coords="all", consolidated=False, mask_and_scale=False)
    except (OSError, KeyError, ValueError) as err:
        raise StoreError(strip_secrets(f"cannot open the map store {text} ({err})"),
                         hint="pass the path or URL given to `geoflow classify --out`") from None


def _crs(ds: xr.Dataset | xr.DataArray) -> Any:
    from rasterio.crs import CRS

    crs = None
    try:
        crs = ds.rio.crs
    except Exception:  # rioxarray raises several types for odd metadata
        crs = None
    if crs is None and ds.attrs.get("crs"):
        crs = CRS.from_user_input(ds.attrs["crs"])
    if crs is None:
        raise StoreError("the map has no CRS (no spatial_ref grid mapping, no crs attribute)",
                         hint="export a map written by geoflow, or write_crs() it with rioxarray")
    return crs


def _transform(da: xr.DataArray) -> Any:
    from affine import Affine

    x, y = np.asarray(da.x.values, float), np.asarray(da.y.values, float)
    if x.size < 2 and y.size < 2:
        raise StoreError("a one-pixel map has no resolution to georeference it by",
                         hint="export a larger map")
    res_x = abs(x[1] - x[0]) if x.size > 1 else abs(y[1] - y[0])
    res_y = abs(y[1] - y[0]) if y.size > 1 else res_x
    if y.size > 1 and y[1] > y[0]:
        raise StoreError("the map's y coordinate increases (south-up)",
                         hint="flip it with ds.isel(y=slice(None, None, -1)) first")
    return Affine(res_x, 0.0, x[0] - res_x / 2, 0.0, -res_y, y[0] + res_y / 2)


def _hex_rgba(color: str) -> tuple[int, int, int, int]:
    from matplotlib.colors import to_rgba

    r, g, b, a = to_rgba(color)
    return (round(r * 255), round(g * 255), round(b * 255), round(a * 255))


#: Marks a PNG quicklook as geoflow's, so ``overwrite`` may replace it (PNG text chunk).
_PNG_SOURCE = "geoflow"


def _is_geoflow_export(path: Path) -> bool:
    """Whether ``path`` is a file that geoflow wrote (a COG with GEOFLOW_VARIABLE, or a PNG
    quicklook with its Source text)."""
    if path.suffix.lower() == ".png":
        try:
            from PIL import Image

            with Image.open(path) as img:
                return img.info.get("Source") == _PNG_SOURCE
        except Exception:  # not an image at all
            return False
    try:
        import rasterio

        with rasterio.open(path) as src:
            return "GEOFLOW_VARIABLE" in src.tags()
    except Exception:  # not a raster GDAL can open
        return False


def _check_target(out: Path, overwrite: bool, what: str) -> None:
    """Refuse to write over anything but an earlier geoflow export, and that only when asked."""
    if out.is_dir():
        raise StoreError(f"{out} is a directory, not a {what} file",
                         hint=f"pass a file path, e.g. {out / ('map' + out.suffix or '.tif')}")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise StoreError(f"{out} already exists", hint="pass --overwrite (overwrite=True) to "
                         "replace an earlier geoflow export, or choose another path")
    if out.is_symlink() or not _is_geoflow_export(out):
        raise StoreError(f"{out} exists and is not a geoflow export; it is left as it is",
                         hint="choose another path: --overwrite replaces only files that "
                              "geoflow wrote")


def _write_atomically(out: Path, write: Any, what: str) -> None:
    """``write(tmp)`` beside ``out``, then rename over it: readers see the old file or the new
    one, and a failure (a full disk) leaves neither a partial file nor a temporary one."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create the folder of {out} ({err.strerror})",
                         hint="choose a writable path") from None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}{out.suffix}")
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # GDAL's write errors (CPLE_*) are no OSError: a full disk shows up as one of them.
        if isinstance(err, OSError) or type(err).__name__.startswith("CPLE_"):
            raise StoreError(f"writing the {what} {out} failed ({err})",
                             hint="check free space and permissions; nothing was written") \
                from None
        raise


def export_cog(
    store_path_or_ds: str | os.PathLike[str] | xr.Dataset,
    out_tif: str | os.PathLike[str],
    variable: str = "summary_class",
    *,
    time: int | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one map layer as a COG: uint8, no data 255, colour table and class names.

    Parameters
    ----------
    store_path_or_ds
        A map store path, or a map dataset (from ``classify_region``).
    out_tif
        The GeoTIFF to write. An existing file is refused unless ``overwrite`` is set and it
        is an earlier geoflow export; it is replaced atomically.
    variable
        Layer to export: ``summary_class`` (default), ``class`` (with ``time``),
        ``confidence``, ``sar_weight``, ``cloud_fraction``, ...
    time
        Date index or date for per-date layers (default the first).
    overwrite
        Replace ``out_tif`` if it is an earlier geoflow export (never any other file).

    Returns
    -------
    pathlib.Path
        ``out_tif``.

    Raises
    ------
    StoreError
        The store or layer does not exist, the map is not georeferenced, ``out_tif`` exists
        (without ``overwrite``, or is not geoflow's), or the write failed (nothing is left).

    Examples
    --------
    See the module docstring.
    """
    import rasterio
    import rasterio.shutil
    from rasterio.io import MemoryFile

    ds = _open(store_path_or_ds)
    da = pick_layer(ds, variable, time)
    values = np.asarray(da.values)
    if values.dtype != np.uint8:  # decoded maps: NaN is no data
        values = np.where(np.isfinite(values), values, NODATA).astype(np.uint8)
    is_class = str(da.name).endswith("class")
    out = Path(out_tif)
    _check_target(out, overwrite, "GeoTIFF")
    profile = {"driver": "GTiff", "width": values.shape[1], "height": values.shape[0],
               "count": 1, "dtype": "uint8", "crs": _crs(ds), "transform": _transform(da),
               "nodata": NODATA if is_class else None}
    tags: dict[str, str] = {"GEOFLOW_VARIABLE": str(da.name)}
    for key in ("model_version", "model_checksum", "geoflow_version", "created"):
        if key in ds.attrs:
            tags[f"GEOFLOW_{key.upper()}"] = str(ds.attrs[key])
    if "time" in da.coords and da["time"].ndim == 0:
        tags["GEOFLOW_DATE"] = str(da["time"].values)[:10]
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(values, 1)
            dst.set_band_description(1, str(da.name))
            if is_class:
                names, colors = class_legend(ds)
                cmap = {i: (0, 0, 0, 0) for i in range(256)}
                cmap.update({i: _hex_rgba(c) for i, c in enumerate(colors)})
                dst.write_colormap(1, cmap)
                tags["CLASS_NAMES"] = json.dumps(names)
                dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(names)})
            else:
                dst.update_tags(1, SCALE_NOTE="value / 255 = fraction")
            dst.update_tags(**tags)
        with mem.open() as src:
            # Nearest overviews: averaging class codes would invent classes.
            _write_atomically(out, lambda tmp: rasterio.shutil.copy(
                src, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256,
                OVERVIEW_RESAMPLING="NEAREST"), "GeoTIFF")
    return out


def quicklook_png(
    ds: str | os.PathLike[str] | xr.Dataset,
    out_png: str | os.PathLike[str],
    *,
    variable: str | None = None,
    time: int | str | None = None,
    dpi: int = 100,
    overwrite: bool = False,
) -> Path:
    """Render a map layer (default: the period summary) with its legend to a PNG.

    Uses matplotlib's Agg canvas directly, so it works without a display and leaves
    pyplot's state alone. An existing ``out_png`` is replaced only with ``overwrite`` and only
    if geoflow wrote it.

    Examples
    --------
    >>> import numpy as np, tempfile, xarray as xr
    >>> m = xr.Dataset({"class": (("time", "y", "x"), np.zeros((1, 4, 6), "uint8"))},
    ...                coords={"y": np.arange(4.0)[::-1], "x": np.arange(6.0)})
    >>> quicklook_png(m, tempfile.mkdtemp() + "/map.png").stat().st_size > 1000
    True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ds = _open(ds)
    layer = pick_layer(ds, variable, time)
    h, w = layer.shape
    width_in = 8.0
    height_in = min(max(width_in * 0.75 * h / max(w, 1), 3.0), 12.0)
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plot(ds, time=time, ax=ax, variable=str(layer.name))
    out = Path(out_png)
    _check_target(out, overwrite, "PNG")
    _write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight",
                                                   metadata={"Source": _PNG_SOURCE}), "PNG")
    return out


#: Short alias of :func:`quicklook_png`.
quicklook = quicklook_png

__all__ = ["export_cog", "quicklook", "quicklook_png"]
