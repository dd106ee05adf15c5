"""``geoflow demo``: the whole job on the bundled sample archive, offline, in minutes.

Creates (or reuses) the sample archive, serves it through the local STAC API, classifies its
demo region over its month on a LocalCluster, writes the Zarr map and a PNG quicklook, and
scores the map against the archive's truth land cover.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geoflow.errors import ArchiveError


def ensure_archive(log: Callable[[str], Any] | None = None) -> tuple[Path, dict[str, Any], str]:
    """The sample archive's directory, its ``archive.json`` and the URL of its running server.

    Creates the archive at :func:`geoflow.archive.default_archive_dir` if it is missing and
    starts its server if none is running.

    Examples
    --------
    >>> directory, info, url = ensure_archive()  # doctest: +SKIP
    """
    from geoflow.archive import create_archive, default_archive_dir
    from geoflow.archive.server import ensure_server

    directory = Path(default_archive_dir())
    meta = directory / "archive.json"
    if not meta.exists():
        if log:
            log(f"creating the sample archive in {directory} (once; under a minute)")
        create_archive(directory)
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise ArchiveError(f"cannot read {meta}: {err}",
                           hint="delete the archive directory and run `geoflow demo` again "
                                "to recreate it") from None
    if log:
        log(f"serving the sample archive {directory}")
    url = ensure_server(directory)
    return directory, info, url


@contextlib.contextmanager
def served_archive(
    log: Callable[[str], Any] | None = None,
) -> Iterator[tuple[Path, dict[str, Any], str]]:
    """:func:`ensure_archive` as a context: a server it had to start is stopped at exit.

    A server that was already running (a notebook's, another command's) is left running.

    Examples
    --------
    >>> with served_archive() as (directory, info, url):  # doctest: +SKIP
    ...     print(url)
    """
    from geoflow.archive import default_archive_dir
    from geoflow.archive.server import running_server, stop_server

    was_running = running_server(default_archive_dir()) is not None
    directory, info, url = ensure_archive(log)
    try:
        yield directory, info, url
    finally:
        if not was_running:
            stop_server(directory)


def map_accuracy(ds: xr.Dataset, truth_path: str | Path) -> float:
    """Share of map pixels whose ``summary_class`` equals the truth's majority class.

    The truth (10 m class raster) is read onto the map's grid at its own resolution, and each
    map pixel takes the majority class of the truth pixels it covers. Pixels without a map
    class or with mostly no truth are left out.

    Parameters
    ----------
    ds
        A map from :func:`geoflow.classify_region` (needs ``summary_class`` and a CRS).
    truth_path
        GeoTIFF of class indices (nodata 255).

    Returns
    -------
    float
        Accuracy in 0..1 (NaN if no pixel can be compared).

    Examples
    --------
    >>> map_accuracy(xr.open_zarr("demo.zarr", decode_coords="all"),
    ...              "archive/truth/landcover.tif")  # doctest: +SKIP
    0.87
    """
    import rasterio
    import rioxarray  # noqa: F401  (registers .rio)
    from rasterio.warp import Resampling, reproject

    pred = np.asarray(ds["summary_class"].values)
    h, w = pred.shape
    transform = ds.rio.transform()
    crs = ds.rio.crs
    with rasterio.open(truth_path) as src:
        factor = max(1, round(abs(transform.a) / abs(src.res[0])))
        fine = np.full((h * factor, w * factor), 255, dtype=np.uint8)
        reproject(source=rasterio.band(src, 1), destination=fine,
                  dst_transform=transform @ transform.scale(1 / factor), dst_crs=crs,
                  src_nodata=255, dst_nodata=255, resampling=Resampling.nearest)
    blocks = fine.reshape(h, factor, w, factor).transpose(0, 2, 1, 3).reshape(h, w, -1)
    counts = _class_counts(blocks)
    majority = counts.argmax(axis=0)
    truth_ok = counts.sum(axis=0) * 2 >= factor * factor
    ok = truth_ok & (pred != 255)
    if not ok.any():
        return float("nan")
    return float((pred[ok] == majority[ok]).mean())


def _class_counts(blocks: np.ndarray) -> np.ndarray:
    n_classes = int(blocks[blocks != 255].max()) + 1 if (blocks != 255).any() else 1
    return np.stack([(blocks == k).sum(axis=-1) for k in range(n_classes)], axis=0)


def run_demo(
    *,
    n_workers: int | None = None,
    out_dir: str | Path | None = None,
    model: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Run the demo; return ``km2``, ``seconds``, ``km2_per_s``, ``map_accuracy``, ``store``,
    ``png`` (and a few more details).

    Parameters
    ----------
    n_workers
        LocalCluster workers (default: the machine's cores).
    out_dir
        Where the map and quicklook go (default: ``demo/`` next to the archive).
    model
        Checkpoint (default: the shipped demo weights).
    progress
        Progress callback passed to :func:`geoflow.classify_region`.
    log
        Called with one-line status messages.

    Examples
    --------
    >>> result = run_demo()  # doctest: +SKIP
    >>> sorted(result)[:3]  # doctest: +SKIP
    ['chunks', 'km2', 'km2_per_s']
    """
    from geoflow.export import quicklook_png
    from geoflow.regional import classify_region

    with served_archive(log) as (directory, info, url):
        out = Path(out_dir) if out_dir is not None else directory.parent / "demo"
        out.mkdir(parents=True, exist_ok=True)
        store = out / "demo_map.zarr"
        png = out / "demo_map.png"
        if log:
            log(f"classifying {info['demo_bbox']} over {info['datetime']} into {store}")
        t0 = time.perf_counter()
        ds = classify_region(info["demo_bbox"], info["datetime"], out=str(store), catalog=url,
                             model=model, n_workers=n_workers, progress=progress,
                             overwrite=True)
        seconds = time.perf_counter() - t0
    run = dict(ds.attrs["run"])
    quicklook_png(ds, png, overwrite=True)  # the demo's own quicklook of an earlier run
    accuracy = map_accuracy(ds, directory / info["truth"])
    return {
        "km2": round(run["km2"], 2),
        "seconds": round(seconds, 2),
        "km2_per_s": round(run["km2"] / seconds, 3),
        "map_accuracy": round(accuracy, 4),
        "store": str(store),
        "png": str(png),
        "chunks": run["chunks_total"],
        "catalog": url,
        "model_version": ds.attrs.get("model_version"),
    }


__all__ = ["ensure_archive", "map_accuracy", "run_demo", "served_archive"]
