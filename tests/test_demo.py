"""geoflow.demo: the map accuracy against the archive's truth land cover."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr


def _truth_map(archive, factor: int = 32) -> tuple[xr.Dataset, np.ndarray]:
    """A map on the archive grid coarsened by ``factor`` whose classes are the truth's
    block majorities, computed here directly from the truth raster."""
    from geoflow.grid import GridSpec

    info = json.loads((archive / "archive.json").read_text())
    grid = GridSpec.from_dict(info["grid"])
    with rasterio.open(archive / info["truth"]) as src:
        truth = src.read(1)
        assert src.transform == grid.transform  # same 10 m lattice as the scenes
    h, w = grid.height // factor, grid.width // factor
    blocks = truth[: h * factor, : w * factor].reshape(h, factor, w, factor)
    majority = np.zeros((h, w), np.uint8)
    for i in range(h):
        for j in range(w):
            majority[i, j] = np.bincount(blocks[i, :, j, :].ravel(), minlength=10).argmax()
    coarse = grid.coarsen(factor)
    ds = xr.Dataset({"summary_class": (("y", "x"), majority.copy())},
                    coords={"y": coarse.y_coords[:h], "x": coarse.x_coords[:w]})
    ds = ds.rio.write_crs(grid.epsg).rio.write_transform(coarse.transform)
    return ds, majority


def test_map_accuracy_scores_against_truth_majorities(small_archive):
    from geoflow.demo import map_accuracy

    info = json.loads((small_archive / "archive.json").read_text())
    truth = small_archive / info["truth"]
    ds, majority = _truth_map(small_archive)
    assert map_accuracy(ds, truth) == pytest.approx(1.0)
    # Wrong classes on the first quarter of the pixels, no data on one more pixel.
    wrong = majority.copy().ravel()
    n = wrong.size // 4
    wrong[:n] = (wrong[:n] + 1) % 10
    wrong[n] = 255
    ds["summary_class"].values[:] = wrong.reshape(majority.shape)
    assert map_accuracy(ds, truth) == pytest.approx((wrong.size - n - 1) / (wrong.size - 1))
