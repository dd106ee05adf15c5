"""Any class scheme: a checkpoint with BigEarthNet's 19 classes (untrained: the maps need a
model, not a good one) classifies a region of the real local archive, and its own names and
colours reach the store, the COG, the quicklook legend and the STAC Item."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import rasterio
import torch

import geoflow
from geoflow.errors import ModelError
from geoflow.model.bigearthnet import BEN19, BEN19_COLORS
from geoflow.model.checkpoint import read_checkpoint, save_checkpoint
from geoflow.model.networks import ArchSpec, build_network


def _ben19_model(folder: Path) -> str:
    torch.manual_seed(0)
    spec = ArchSpec("student", n_classes=len(BEN19))
    path = folder / "ben19"
    save_checkpoint(path, build_network(spec), spec, stage="untrained", classes=BEN19,
                    colors=BEN19_COLORS)
    return str(path.with_suffix(".safetensors"))


def test_checkpoint_keeps_its_class_scheme_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    ckpt = read_checkpoint(_ben19_model(tmp_path))
    assert ckpt.meta["classes"] == list(BEN19) and ckpt.meta["colors"] == list(BEN19_COLORS)
    spec = ArchSpec("student", n_classes=3, width=4)
    net = build_network(spec)
    with pytest.raises(ModelError, match="needs its class names"):
        save_checkpoint(tmp_path / "x", net, spec, stage="untrained")
    with pytest.raises(ModelError, match="2 class names for a 3-class"):
        save_checkpoint(tmp_path / "x", net, spec, stage="untrained", classes=["a", "b"])
    with pytest.raises(ModelError, match="distinct"):
        save_checkpoint(tmp_path / "x", net, spec, stage="untrained", classes=["a", "a", "b"])
    with pytest.raises(ModelError, match="#rrggbb"):
        save_checkpoint(tmp_path / "x", net, spec, stage="untrained", classes=["a", "b", "c"],
                        colors=["red", "#00ff00", "#0000ff"])
    meta = save_checkpoint(tmp_path / "x", net, spec, stage="untrained", classes=["a", "b", "c"])
    assert len(meta["colors"]) == 3 and len(set(meta["colors"])) == 3
    assert not (tmp_path / "x.json").read_text().count("Barren")


def test_a_19_class_model_flows_through_store_export_plot_and_stac(
        tmp_path: Path, small_archive: Path, stac_url: str, client) -> None:  # type: ignore[no-untyped-def]
    from geoflow.export import export_cog
    from geoflow.regional import classify_region
    from geoflow.stac_maps import map_item

    info = json.loads((Path(small_archive) / "archive.json").read_text())
    w, s, e, n = info["demo_bbox"]
    cx, cy, hx, hy = (w + e) / 2, (s + n) / 2, (e - w) / 8, (n - s) / 8
    out = tmp_path / "ben19.zarr"
    classify_region((cx - hx, cy - hy, cx + hx, cy + hy), info["datetime"], out=str(out),
                    catalog=stac_url, client=client, model=_ben19_model(tmp_path),
                    chunk_patches=2)

    ds = geoflow.open_map(out)
    assert ds.attrs["classes"] == list(BEN19) and ds.attrs["class_colors"] == list(BEN19_COLORS)
    codes = ds["summary_class"].values
    assert codes[codes != 255].max() < len(BEN19)
    meanings = ds["class"].attrs["flag_meanings"].split()
    assert len(meanings) == 19 and meanings[0] == "Urban_fabric"

    tif = export_cog(out, tmp_path / "ben19.tif")
    with rasterio.open(tif) as src:
        assert json.loads(src.tags()["CLASS_NAMES"]) == list(BEN19)
        cmap = src.colormap(1)
        for i, color in enumerate(BEN19_COLORS):
            assert cmap[i][:3] == tuple(int(color[k:k + 2], 16) for k in (1, 3, 5))
        present = np.unique(src.read(1))
    ax = geoflow.plot(ds)
    try:
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == [BEN19[int(v)] for v in present if v != 255]
    finally:
        plt.close("all")

    classes = map_item(out).properties["classification:classes"]
    assert [c.get("title") for c in classes[:19]] == list(BEN19)
    assert [c["color_hint"] for c in classes[:19]] == [c[1:] for c in BEN19_COLORS]
    assert len({c["name"] for c in classes}) == 20  # identifiers stay distinct
