"""Draw a map: classes in their colours with a legend, or a 0-255 layer with a colour bar.

Used as ``geoflow.plot(map)`` in a notebook, and by :func:`geoflow.export.quicklook_png`.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import numpy as np, xarray as xr
>>> from geoflow import plot
>>> m = xr.Dataset({"summary_class": (("y", "x"), np.array([[0, 1], [2, 255]], "uint8"))},
...                coords={"y": [15.0, 5.0], "x": [5.0, 15.0]},
...                attrs={"classes": ["Barren", "Water", "Road"],
...                       "class_colors": ["#aa9977", "#2255cc", "#444444"]})
>>> ax = plot(m)
>>> [t.get_text() for t in ax.get_legend().get_texts()]
['Barren', 'Water', 'Road']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from geoflow.errors import StoreError

_CLASS_VARS = ("summary_class", "class")


def class_legend(ds: xr.Dataset | xr.DataArray) -> tuple[list[str], list[str]]:
    """Class names and ``#rrggbb`` colours of a map (from its attributes).

    Falls back to geoflow's scene classes, then to generic names, when the map lacks them.

    Examples
    --------
    >>> import xarray as xr
    >>> class_legend(xr.Dataset(attrs={"classes": ["A"], "class_colors": ["#ff0000"]}))
    (['A'], ['#ff0000'])
    """
    attrs = dict(ds.attrs)
    names = list(attrs.get("classes") or [])
    colors = list(attrs.get("class_colors") or [])
    if not names:
        from geoflow.model._constants import CLASS_COLORS, CLASSES

        names, colors = list(CLASSES), list(CLASS_COLORS)
    if len(colors) < len(names):
        from geoflow.model._constants import fallback_colors

        colors = colors + fallback_colors(len(colors), len(names))
    return names, colors[:len(names)]


def pick_layer(ds: xr.Dataset | xr.DataArray, variable: str | None = None,
               time: int | str | Any | None = None) -> xr.DataArray:
    """The 2-D layer to draw or export: ``variable`` at ``time``.

    ``variable`` None means ``summary_class`` when the map has it and no time is asked for,
    else ``class``. ``time`` is a date index (int) or a date (nearest is used); None is the
    first date.

    Raises
    ------
    StoreError
        If the variable or date is not in the map.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> m = xr.Dataset({"class": (("time", "y", "x"), np.zeros((2, 1, 1), "uint8"))},
    ...                coords={"time": np.array(["2024-06-01", "2024-06-06"], "datetime64[ns]")})
    >>> str(pick_layer(m, time="2024-06-05").time.values)[:10]
    '2024-06-06'
    """
    if isinstance(ds, xr.DataArray):
        da = ds
    else:
        if variable is None:
            variable = ("summary_class" if "summary_class" in ds.data_vars and time is None
                        else "class")
        if variable not in ds.data_vars:
            raise StoreError(f"the map has no variable {variable!r} (it has "
                             f"{', '.join(map(str, ds.data_vars)) or 'none'})",
                             hint="choose one of those, e.g. class with a date")
        da = ds[variable]
    if "time" in da.dims:
        times = da["time"].values if "time" in da.coords else np.arange(da.sizes["time"])
        if time is None:
            time = 0
        if isinstance(time, int | np.integer):
            if not -len(times) <= int(time) < len(times):
                raise StoreError(f"date index {time} is out of range: the map has "
                                 f"{len(times)} dates", hint=f"pass 0..{len(times) - 1}")
            da = da.isel(time=int(time))
        else:
            try:
                da = da.sel(time=np.datetime64(str(time), "ns"), method="nearest")
            except (ValueError, TypeError):
                raise StoreError(f"{time!r} is not a date or date index",
                                 hint="pass e.g. 0 or 2024-06-01") from None
    extra = [d for d in da.dims if d not in ("y", "x")]
    if extra:
        raise StoreError(f"{da.name} still has dimensions {extra} besides y, x",
                         hint="select a single layer first")
    return da


def _extent(da: xr.DataArray) -> tuple[float, float, float, float] | None:
    if "x" not in da.coords or "y" not in da.coords:
        return None
    x, y = np.asarray(da.x.values, float), np.asarray(da.y.values, float)
    dx = abs(x[1] - x[0]) if x.size > 1 else abs(y[1] - y[0]) if y.size > 1 else 1.0
    dy = abs(y[1] - y[0]) if y.size > 1 else dx
    return (x.min() - dx / 2, x.max() + dx / 2, y.min() - dy / 2, y.max() + dy / 2)


def plot(map_ds: xr.Dataset | xr.DataArray, time: int | str | Any | None = None,
         ax: Any = None, *, variable: str | None = None) -> Any:
    """Draw a map layer: classes with a legend, or a 0-255 layer with a colour bar.

    Parameters
    ----------
    map_ds
        A geoflow map (from ``classify_region`` or a store), or one of its layers.
    time
        Date index or date for per-date layers (default the first); with no ``time`` and no
        ``variable`` the period summary is drawn when the map has one.
    ax
        Matplotlib axes to draw into (default: a new figure).
    variable
        Layer name (``summary_class``, ``class``, ``confidence``, ``sar_weight``,
        ``cloud_fraction``, ...).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    See the module docstring.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    da = pick_layer(map_ds, variable, time)
    name = str(da.name)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(8, 6))
    values = np.asarray(da.values, dtype="float32")
    extent = _extent(da)
    if name.endswith("class"):
        values[values == 255] = np.nan  # no data (raw uint8 maps; decoded ones are NaN already)
        names, colors = class_legend(map_ds)
        k = len(names)
        values[(values < 0) | (values >= k)] = np.nan
        cmap = ListedColormap(colors).with_extremes(bad=(0, 0, 0, 0))
        ax.imshow(np.ma.masked_invalid(values), cmap=cmap,
                  norm=BoundaryNorm(np.arange(k + 1) - 0.5, k), extent=extent,
                  interpolation="nearest")
        present = sorted({int(v) for v in np.unique(values[np.isfinite(values)])}) or range(k)
        ax.legend(handles=[Patch(facecolor=colors[i], edgecolor="none", label=names[i])
                           for i in present],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  frameon=False, title="class")
    else:
        im = ax.imshow(np.ma.masked_invalid(values / 255.0), cmap="viridis", vmin=0, vmax=1,
                       extent=extent, interpolation="nearest")
        ax.figure.colorbar(im, ax=ax, label=f"{name} (0-1)", shrink=0.8)
    title = name
    if "time" in da.coords and da["time"].ndim == 0:
        title += f" {str(da['time'].values)[:10]}"
    ax.set_title(title)
    if extent is not None:
        crs = map_ds.attrs.get("crs", "")
        ax.set_xlabel(f"x (m{', ' + crs if crs else ''})")
        ax.set_ylabel("y (m)")
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(labelsize="x-small")
    return ax


__all__ = ["class_legend", "pick_layer", "plot"]
