"""COG export with a colour table, PNG quicklooks, geoflow.plot and `geoflow export`."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr

import geoflow
from geoflow.cli import main
from geoflow.errors import StoreError
from geoflow.export import _hex_rgba, export_cog, quicklook_png
from geoflow.grid import GridSpec
from geoflow.store import MapStore
from geoflow.tiles import plan_chunks

CLASSES = ["Barren", "Dense Forest", "Water", "Harbor"]
COLORS = ["#aa9977", "#116622", "#2255cc", "#ff00ff"]
TIMES = pd.to_datetime(["2024-06-01", "2024-06-06"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    plan = plan_chunks(GridSpec(32632, 10.0, 500000.0, 5000000.0, 32 * 12, 32 * 8), 32, 32, 4)
    s = MapStore.open_or_create(
        tmp_path_factory.mktemp("map") / "m.zarr", map_grid=plan.map_grid, times=TIMES,
        chunk_shape=plan.chunk_shape,
        attrs={"request": {"bbox": [11, 45, 11.05, 45.03]}, "model_version": "demo-1",
               "classes": CLASSES, "class_colors": COLORS})
    h, w = plan.map_grid.shape
    cls = np.zeros((2, h, w), "uint8")
    cls[:, :, 3:6], cls[:, :, 6:] = 1, 2
    cls[:, :2, :2] = 255
    maps = xr.Dataset({"class": (("time", "y", "x"), cls),
                       "confidence": (("time", "y", "x"), np.full((2, h, w), 200, "uint8")),
                       "summary_class": (("y", "x"), cls[0])})
    for c in plan.chunks:
        s.write_chunk(c, maps.isel(y=c.out_slices[0], x=c.out_slices[1]))
    s.plan = plan
    s.expected = cls
    return s


def test_cog_has_colour_table_class_names_and_georeferencing(store, tmp_path):
    out = export_cog(store.path, tmp_path / "map.tif")
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.crs.to_epsg() == 32632
        assert src.transform.almost_equals(store.plan.map_grid.transform)
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
        np.testing.assert_array_equal(src.read(1), store.expected[0])
        cmap = src.colormap(1)
        assert cmap[2] == (0x22, 0x55, 0xcc, 255) and cmap[1] == (0x11, 0x66, 0x22, 255)
        assert json.loads(src.tags()["CLASS_NAMES"]) == CLASSES
        assert src.tags(1)["CLASS_3"] == "Harbor"
        assert src.tags()["GEOFLOW_MODEL_VERSION"] == "demo-1"
        assert src.descriptions == ("summary_class",)


def test_hex_rgba_converts_each_channel_to_0_255():
    # 0xfe = 254, 0xdc = 220, 0xba = 186, 0xc0 = 192: high values, so that a wrong scale
    # (x 256 instead of 255) shows in every channel.
    assert _hex_rgba("#fedcba") == (254, 220, 186, 255)
    assert _hex_rgba("#fedcbac0") == (254, 220, 186, 192)
    assert _hex_rgba("#000000") == (0, 0, 0, 255)
    assert _hex_rgba("red") == (255, 0, 0, 255)  # any matplotlib colour works


def _tiny_map(name: str) -> xr.Dataset:
    values = np.array([[0, 1, 2], [2, 255, 0]], "uint8")
    return xr.Dataset({name: (("y", "x"), values)},
                      coords={"y": [5000015.0, 5000005.0], "x": [500005.0, 500015.0, 500025.0]},
                      attrs={"classes": ["Barren", "Water", "Harbor"],
                             "class_colors": ["#fedcba", "#2255cc", "#ff00ff"],
                             "crs": "EPSG:32632"})


@pytest.mark.parametrize("name", ["summary_class", "class"])
def test_colour_table_has_the_class_colours_and_a_transparent_no_data_entry(name, tmp_path):
    out = export_cog(_tiny_map(name), tmp_path / f"{name}.tif", name)
    with rasterio.open(out) as src:
        assert src.nodata == 255
        cmap = src.colormap(1)
    assert len(cmap) == 256
    assert [cmap[i] for i in range(3)] == [(254, 220, 186, 255), (34, 85, 204, 255),
                                          (255, 0, 255, 255)]
    # No data (255) must be see-through in a GIS: alpha 0.
    assert cmap[255] == (0, 0, 0, 0)
    # Codes that are no class are black (GeoTIFF colour tables keep no alpha, so GDAL reads
    # them back opaque; only the no-data entry gets alpha 0, from the nodata value).
    assert all(cmap[i][:3] == (0, 0, 0) for i in range(3, 255))


def test_fraction_layers_have_no_colour_table_and_no_nodata(tmp_path):
    out = export_cog(_tiny_map("confidence"), tmp_path / "conf.tif", "confidence")
    with rasterio.open(out) as src:
        assert src.nodata is None  # 255 is a valid confidence (1.0), not no data
        with pytest.raises(ValueError, match="NULL color table"):
            src.colormap(1)
        assert src.tags(1)["SCALE_NOTE"] == "value / 255 = fraction"


def test_per_date_layers_and_decoded_maps_export_too(store, tmp_path):
    decoded = store.dataset()  # class as float with NaN for no data
    out = export_cog(decoded, tmp_path / "c.tif", "class", time="2024-06-06")
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), store.expected[1])
        assert src.tags()["GEOFLOW_DATE"] == "2024-06-06"
    out = export_cog(store.path, tmp_path / "conf.tif", "confidence", time=0)
    with rasterio.open(out) as src:
        assert src.nodata is None and (src.read(1) == 200).all()
    with pytest.raises(StoreError, match="no variable 'probability'"):
        export_cog(store.path, tmp_path / "x.tif", "probability")
    with pytest.raises(StoreError, match="out of range"):
        export_cog(store.path, tmp_path / "x.tif", "class", time=5)
    with pytest.raises(StoreError, match="not a Zarr map store"):
        export_cog(tmp_path, tmp_path / "x.tif")


def test_quicklook_is_a_png_of_sensible_size(store, tmp_path):
    out = quicklook_png(store.path, tmp_path / "q.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert 500 <= img.shape[1] <= 2000 and 200 <= img.shape[0] <= 1500
    # the class colours are in the picture
    rgb = (img[..., :3] * 255).round().astype(int).reshape(-1, 3)
    assert (rgb == [0x22, 0x55, 0xcc]).all(axis=1).any()


def test_plot_draws_classes_with_a_legend(store):
    ds = store.dataset()
    ax = geoflow.plot(ds)
    try:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["Barren", "Dense Forest", "Water"]  # classes present
        assert ax.get_title() == "summary_class"
        ax2 = geoflow.plot(ds, time=1)
        assert ax2.get_title() == "class 2024-06-06"
        ax3 = geoflow.plot(ds, variable="confidence", time=0)
        assert ax3.get_legend() is None and ax3.images
    finally:
        plt.close("all")


def test_cli_export_writes_both_and_reports_json(store, tmp_path, capsys):
    main(["export", str(store.path), "--cog", str(tmp_path / "a.tif"),
          "--png", str(tmp_path / "a.png"), "--json"])
    written = json.loads(capsys.readouterr().out)
    assert set(written) == {"cog", "png"}
    assert (tmp_path / "a.tif").stat().st_size > 0 and (tmp_path / "a.png").stat().st_size > 0
    with pytest.raises(SystemExit) as info:
        main(["export", str(store.path)])
    assert info.value.code == 2
    assert "--cog" in capsys.readouterr().err
