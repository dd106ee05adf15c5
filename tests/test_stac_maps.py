"""STAC Items of map stores and the static maps catalog, validated offline."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pystac
import pytest
from pyproj import Transformer
from test_store import COLORS, _create, _full_maps, _plan, _write

from geoflow.grid import GridSpec
from geoflow.stac_maps import (
    COLLECTION_ID,
    ZARR_MEDIA_TYPE,
    add_to_catalog,
    find_maps,
    map_item,
    validate_offline,
    write_map_item,
)
from geoflow.store import MapStore
from geoflow.tiles import plan_chunks

V1 = "student_irm-20260101T000000-aaaaaaaa"
V2 = "student_irm-20260201T000000-bbbbbbbb"
CORE = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Validation and catalog I/O must never reach out (schemas come from packages)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _store(path: Path | str, version: str = V1, plan=None) -> MapStore:
    plan = plan or _plan()
    store = _create(path, plan, model_version=version)
    _write(store, plan, _full_maps(plan))
    return store


def test_item_describes_the_map_and_validates_offline(tmp_path):
    store = _store(tmp_path / "kiel.zarr")
    item = map_item(store, cog=tmp_path / "kiel.tif", png=tmp_path / "kiel.png",
                    previous=tmp_path / "kiel-old.zarr")
    grid = store.map_grid

    checked = validate_offline(item)
    # pystac ships the core schemas; the extension schemas ship in no package.
    assert checked == {CORE: True, PROJ: False, CLASSIFICATION: False}

    # Geometry and bbox: the grid's corners, reprojected, lie on / inside them.
    to_lonlat = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    left, bottom, right, top = grid.bounds
    lon, lat = to_lonlat.transform([left, right, right, left], [top, top, bottom, bottom])
    west, south, east, north = item.bbox
    assert np.allclose(item.bbox, grid.bbox_lonlat)
    assert west <= min(lon) and east >= max(lon) and south <= min(lat) and north >= max(lat)
    ring = np.array(item.geometry["coordinates"][0])
    assert ring[0].tolist() == ring[-1].tolist() and len(ring) > 5
    for x, y in zip(lon, lat, strict=True):
        assert np.min(np.hypot(ring[:, 0] - x, ring[:, 1] - y)) < 1e-7

    props = item.properties
    assert props["proj:code"] == "EPSG:32632"
    assert props["proj:shape"] == list(grid.shape)
    assert props["proj:transform"] == list(grid.transform)[:6]
    assert props["start_datetime"].startswith("2024-06-01T00:00:00")
    assert props["end_datetime"].startswith("2024-06-30T23:59:59")
    assert item.datetime is None
    assert props["geoflow:model"] == {"name": "student_irm", "version": V1,
                                      "checksum": "sha256:abc"}
    assert [d["s2"] for d in props["geoflow:inputs"]] == [["S2A_1"], ["S2B_2"]]

    classes = props["classification:classes"]
    assert [(c["value"], c["name"], c.get("title")) for c in classes] == [
        (0, "Barren", "Barren"), (1, "Dense_Forest", "Dense Forest"), (2, "Water", "Water"),
        (255, "no_data", None)]
    assert [c.get("color_hint") for c in classes[:3]] == [c[1:] for c in COLORS]
    assert classes[3]["nodata"] is True

    zarr = item.assets["zarr"]
    assert zarr.media_type == ZARR_MEDIA_TYPE and zarr.href == str(store.path)
    assert zarr.extra_fields["classification:classes"] == classes
    assert zarr.extra_fields["geoflow:class_variables"] == ["class", "summary_class"]
    assert item.assets["cog"].media_type == pystac.MediaType.COG
    assert item.assets["png"].href == str(tmp_path / "kiel.png")
    [old] = item.get_links("predecessor-version")
    assert old.href == str(tmp_path / "kiel-old.zarr.item.json")


def test_written_item_sits_beside_the_store(tmp_path):
    store = _store(tmp_path / "kiel.zarr")
    digest = store.digest()
    path = write_map_item(tmp_path / "kiel.zarr")
    assert path == tmp_path / "kiel.zarr.item.json"
    doc = json.loads(Path(path).read_text())
    assert doc["id"] == f"kiel-{V1}" and doc["type"] == "Feature"
    assert validate_offline(pystac.Item.from_file(str(path)))[CORE]
    assert store.digest() == digest  # the store itself is untouched


def test_catalog_finds_maps_by_model_and_bbox(tmp_path):
    old = _store(tmp_path / "kiel.zarr", V1)
    new = _store(tmp_path / f"kiel-{V2}.zarr", V2)
    # A third map, 100 km east: same model as the second, elsewhere.
    far_grid = GridSpec(32632, 10.0, 600000.0, 5000000.0, 32 * 5, 32 * 3)
    far = _store(tmp_path / "east.zarr", V2, plan_chunks(far_grid, 32, 32, 2))
    maps = tmp_path / "maps"
    add_to_catalog(write_map_item(old), maps)
    add_to_catalog(write_map_item(new, previous=old.path), maps)
    cat_path = add_to_catalog(map_item(far), maps)
    add_to_catalog(map_item(far), maps)  # re-adding replaces, never duplicates

    catalog = pystac.Catalog.from_file(str(cat_path))
    collection = catalog.get_child(COLLECTION_ID)
    assert isinstance(collection, pystac.Collection)
    assert len(list(catalog.get_items(recursive=True))) == 3
    assert validate_offline(catalog)
    assert all(validate_offline(i)[CORE] for i in catalog.get_items(recursive=True))
    # The collection's extent covers all three maps.
    ext = collection.extent.spatial.bboxes[0]
    assert ext[0] <= old.map_grid.bbox_lonlat[0] and ext[2] >= far.map_grid.bbox_lonlat[2]

    ids = lambda items: [i.id for i in items]  # noqa: E731
    assert ids(find_maps(cat_path, model="student_irm")) == sorted(
        ["east-" + V2, f"kiel-{V1}", f"kiel-{V2}"])
    assert ids(find_maps(cat_path, model=f"student_irm@{V2}")) == ["east-" + V2, f"kiel-{V2}"]
    assert ids(find_maps(cat_path, model=f"student_irm@{V1}")) == [f"kiel-{V1}"]
    assert find_maps(cat_path, model="other") == []
    west, south, east, north = old.map_grid.bbox_lonlat
    x, y = (west + east) / 2, (south + north) / 2
    here = (x, y, x + 0.001, y + 0.001)  # inside the Kiel maps, far from the eastern one
    assert ids(find_maps(cat_path, bbox=here)) == [f"kiel-{V1}", f"kiel-{V2}"]
    assert ids(find_maps(cat_path, model=f"student_irm@{V2}", bbox=here)) == [f"kiel-{V2}"]

    [reprocessed] = find_maps(cat_path, model=V2, bbox=here)
    [link] = reprocessed.get_links("predecessor-version")
    assert link.href == str(tmp_path / "kiel.zarr.item.json")
    assert reprocessed.assets["zarr"].get_absolute_href() == str(new.path)


def test_item_of_a_store_on_object_storage(tmp_path):
    """An fsspec URL (memory:// here; s3:// alike): the Item goes beside the store there."""
    import fsspec

    url = f"memory://stac-maps-{tmp_path.name}/kiel.zarr"
    _store(url)
    where = write_map_item(url)
    assert where == url + ".item.json"
    item = pystac.Item.from_dict(json.loads(fsspec.open(where).open().read()))
    assert item.assets["zarr"].href == url
    assert validate_offline(item)[CORE]


def test_class_names_stay_unique_whatever_the_titles() -> None:
    from geoflow.stac_maps import _classes

    titles = ["a", "a_2", "a?", "a!", "no data", "", "?"]
    out = _classes({"classes": titles})
    names = [c.name for c in out]
    assert len(set(names)) == len(names) == len(titles) + 1
    assert names[:3] == ["a", "a_2", "a_2_2"]
    assert [c.title for c in out[:-1]] == titles  # the labels are kept as titles
    assert all(re.fullmatch(r"[0-9A-Za-z_-]+", n) for n in names)


def test_class_names_clean_to_distinct_identifiers() -> None:
    """Any class scheme: names become classification-extension identifiers, and names that
    collide once cleaned (or with the nodata entry's) get their value, then a counter."""
    from geoflow.stac_maps import _classes

    got = _classes({"classes": ["a", "a_2", "a?", "no data", "No-data", "Moors, heath"],
                    "class_colors": ["#112233"]})
    names = [c.name for c in got]
    assert names == ["a", "a_2", "a_2_2", "no_data_3", "No-data", "Moors_heath", "no_data"]
    assert [c.title for c in got[:3]] == ["a", "a_2", "a?"]
    assert got[0].color_hint == "112233" and got[1].color_hint is None
