"""The synthetic sample archive: determinism, COGs, SCL vs clouds, dates, DN offset, STAC items."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from geoflow.archive import archive_info, create_archive
from geoflow.archive import create as C
from geoflow.errors import ArchiveError, GeoflowError
from geoflow.synthetic.clouds import Clouds, apply_clouds, scl, simulate_clouds
from geoflow.synthetic.world import (
    CLASS_SCL,
    CLASSES,
    S2_10M,
    S2_BANDS,
    WATER,
    landcover,
    s1_backscatter_db,
    s2_reflectance,
    to_20m,
)


def _items(root: Path, collection: str) -> list[dict[str, Any]]:
    lines = (root / "items" / f"{collection}.ndjson").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _read(root: Path, item: dict[str, Any], key: str) -> np.ndarray:
    with rasterio.open(root / item["assets"][key]["href"]) as ds:
        return ds.read(1)


def _files(root: Path) -> dict[str, bytes]:
    """Bytes of what create_archive writes (not the server's db/ or server.json)."""
    paths = [root / "archive.json"]
    for sub in ("assets", "items", "collections", "truth"):
        paths += sorted(p for p in (root / sub).rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def test_same_seed_gives_identical_files(small_archive: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    info = create_archive(again, seed=0, size="small")
    assert info == json.loads((small_archive / "archive.json").read_text())
    mine, ours = _files(again), _files(small_archive)
    assert sorted(mine) == sorted(ours)
    assert len(mine) == 12 * 11 + 5 * 2 + 1 + 2 + 2 + 1  # COGs, truth, items, colls, summary
    assert [k for k in mine if mine[k] != ours[k]] == []


def test_other_seed_gives_other_world(small_archive: Path, tmp_path: Path) -> None:
    other = tmp_path / "seed1"
    create_archive(other, seed=1, size="small")
    assert not np.array_equal(_read_truth(other), _read_truth(small_archive))
    a = _items(small_archive, C.S2_COLLECTION)
    b = _items(other, C.S2_COLLECTION)
    assert [i["id"] for i in a] == [i["id"] for i in b]  # same acquisitions, other scenes
    assert [i["properties"]["eo:cloud_cover"] for i in a] != [
        i["properties"]["eo:cloud_cover"] for i in b]
    assert not np.array_equal(_read(small_archive, a[0], "B04"), _read(other, b[0], "B04"))


def _read_truth(root: Path) -> np.ndarray:
    with rasterio.open(root / "truth" / "landcover.tif") as ds:
        assert ds.nodata == 255
        return ds.read(1)


def test_every_tif_is_a_valid_cog_matching_its_item(small_archive: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    tifs = sorted(small_archive.rglob("*.tif"))
    assert len(tifs) == 12 * 11 + 5 * 2 + 1
    for tif in tifs:
        valid, errors, _ = cog_validate(str(tif), quiet=True)
        assert valid, (tif, errors)
        with rasterio.open(tif) as ds:
            assert ds.crs.to_epsg() == C.EPSG
            assert ds.nodata is not None
            assert ds.profile["compress"] == "deflate"
            bh, bw = ds.block_shapes[0]
            assert bh == bw and bh % 16 == 0  # square tiles (one tile if the image is small)
            if max(ds.shape) > bh:
                assert ds.overviews(1)
    for coll in C.COLLECTIONS:
        for item in _items(small_archive, coll):
            for asset in item["assets"].values():
                with rasterio.open(small_archive / asset["href"]) as ds:
                    assert list(ds.shape) == asset["proj:shape"]
                    assert list(ds.transform)[:6] == asset["proj:transform"]
                    assert ds.dtypes[0] == asset["raster:bands"][0]["data_type"]
                    assert ds.nodata == asset["raster:bands"][0]["nodata"]


def test_scl_matches_clouds_truth_and_cloud_cover(small_archive: Path) -> None:
    truth20 = _read_truth(small_archive)
    items = _items(small_archive, C.S2_COLLECTION)
    covers = []
    for item in items:
        tile = C.TILES.index(item["properties"]["s2:mgrs_tile"])
        n = truth20.shape[0]
        lc20 = truth20[:, tile * n : (tile + 1) * n][::2, ::2]
        code = _read(small_archive, item, "SCL")
        assert code.shape == lc20.shape
        cloudy = np.isin(code, (8, 9, 10))
        cover = item["properties"]["eo:cloud_cover"]
        assert cover == pytest.approx(cloudy.mean() * 100, abs=1e-4)
        covers.append(cover)
        clear = ~np.isin(code, (3, 8, 9, 10))
        assert np.array_equal(code[clear], np.asarray(CLASS_SCL, np.uint8)[lc20[clear]])
        # Thick cloud is bright in the blue; clear water is dark. DN = refl * 10000 + 1000.
        blue = (to_20m(_read(small_archive, item, "B02").astype(np.float32)) - 1000) / 10000
        if (code == 9).any():
            assert np.median(blue[code == 9]) > 0.4
        water = clear & (lc20 == WATER)
        if water.any():
            assert np.median(blue[water]) < 0.05
        if (code == 3).sum() > 50:  # shadows are darker than clear land
            nir = (_read(small_archive, item, "B8A").astype(np.float32) - 1000) / 10000
            land = clear & (lc20 != WATER)
            assert np.median(nir[code == 3]) < np.median(nir[land])
    assert min(covers) == 0.0 and max(covers) > 90.0  # clear to overcast


def test_s1_dates_never_coincide_with_s2_dates(small_archive: Path) -> None:
    def day(item: dict[str, Any]) -> dt.date:
        return dt.datetime.fromisoformat(item["properties"]["datetime"]).date()

    s2 = {day(i) for i in _items(small_archive, C.S2_COLLECTION)}
    s1_items = _items(small_archive, C.S1_COLLECTION)
    s1 = {day(i) for i in s1_items}
    assert len(s2) == 6 and len(s1) == 5 and not s1 & s2
    assert {i["properties"]["sat:orbit_state"] for i in s1_items} == {"ascending", "descending"}
    info = archive_info(small_archive)
    start, end = (dt.datetime.fromisoformat(t) for t in info["datetime"].split("/"))
    assert all(start.date() <= d <= end.date() for d in s1 | s2)


def test_dn_offset_and_band_resolutions(small_archive: Path) -> None:
    truth = _read_truth(small_archive)
    items = _items(small_archive, C.S2_COLLECTION)
    clear = [i for i in items if i["properties"]["eo:cloud_cover"] == 0.0]
    assert clear
    item = clear[0]
    assert item["properties"]["s2:processing_baseline"] == "05.10"
    tile = C.TILES.index(item["properties"]["s2:mgrs_tile"])
    n = truth.shape[0]
    lc = truth[:, tile * n : (tile + 1) * n]
    for band in S2_BANDS:
        dn = _read(small_archive, item, band)
        assert dn.dtype == np.uint16 and dn.min() >= 1  # 0 is nodata
        expect = n if band in S2_10M else n // 2
        assert dn.shape == (expect, expect)
    nir = (_read(small_archive, item, "B08").astype(np.float32) - 1000) / 10000
    red = (_read(small_archive, item, "B04").astype(np.float32) - 1000) / 10000
    assert 0.0 < np.median(nir[lc == WATER]) < 0.02  # FACTS.md: sea NIR ~ .005
    forest = lc == CLASSES.index("Dense Forest")
    assert 0.2 < np.median(nir[forest]) < 0.35 and np.median(red[forest]) < 0.05


def test_sar_backscatter_is_linear_gamma0_with_class_contrast(small_archive: Path) -> None:
    truth = _read_truth(small_archive)
    item = _items(small_archive, C.S1_COLLECTION)[0]
    vv, vh = (_read(small_archive, item, k) for k in ("vv", "vh"))
    assert vv.dtype == np.float32 and vv.shape == truth.shape and (vv > 0).all()
    db = 10 * np.log10(vv)
    water = np.median(db[truth == WATER])
    urban = np.median(db[truth == CLASSES.index("Industrial")])
    assert -24 < water < -17 and urban > water + 8
    assert np.median(10 * np.log10(vh[truth == WATER])) < water - 5  # VH below VV


def test_items_carry_what_stackstac_and_pgstac_need(small_archive: Path) -> None:
    info = archive_info(small_archive)
    w, s, e, n = info["bbox"]
    for coll in C.COLLECTIONS:
        cdoc = json.loads((small_archive / "collections" / f"{coll}.json").read_text())
        assert cdoc["id"] == coll and cdoc["type"] == "Collection"
        assert cdoc["extent"]["spatial"]["bbox"] == [info["bbox"]]
        for item in _items(small_archive, coll):
            props = item["properties"]
            assert item["collection"] == coll and item["type"] == "Feature"
            assert type(props["proj:epsg"]) is int and props["proj:epsg"] == 32632
            assert any("projection" in u for u in item["stac_extensions"])
            ib = item["bbox"]
            assert w <= ib[0] < ib[2] <= e and s <= ib[1] < ib[3] <= n
            ring = item["geometry"]["coordinates"][0]
            assert ring[0] == ring[-1] and len(ring) == 5
            for key, asset in item["assets"].items():
                assert not asset["href"].startswith(("/", "http", "file"))
                assert (small_archive / asset["href"]).exists()
                assert asset["roles"] == ["data"], key
            if coll == C.S2_COLLECTION:
                assert set(item["assets"]) == {*S2_BANDS, "SCL"}
                assert props["s2:mgrs_tile"] in C.TILES
                assert 0 <= props["eo:cloud_cover"] <= 100
                assert item["assets"]["B02"]["eo:bands"][0]["common_name"] == "blue"
            else:
                assert set(item["assets"]) == {"vv", "vh"}
                assert props["sar:polarizations"] == ["VV", "VH"]
                assert props["constellation"] == "Sentinel-1"
    dw, ds_, de, dn = info["demo_bbox"]
    assert w < dw < de < e and s < ds_ < dn < n


def test_stackstac_reads_the_items(small_archive: Path) -> None:
    stackstac = pytest.importorskip("stackstac")
    items = _items(small_archive, C.S2_COLLECTION)[:2]  # both tiles of one date
    first_b04 = _read(small_archive, items[0], "B04")
    for it in items:
        for a in it["assets"].values():
            a["href"] = (small_archive / a["href"]).as_uri()
    with pytest.warns(PendingDeprecationWarning):  # affine, inside stackstac 0.5.1
        stack = stackstac.stack(items, assets=["B04", "B05"], epsg=32632, resolution=10,
                                rescale=False, fill_value=np.uint16(0), dtype="uint16",
                                xy_coords="center")
    assert stack.sizes["x"] == 2 * stack.sizes["y"]  # two adjacent tiles side by side
    west = stack.isel(time=0 if "32UNE" in str(stack.id.values[0]) else 1)
    got = west.sel(band="B04").isel(y=slice(0, 4), x=slice(0, 4)).values
    assert np.array_equal(got, first_b04[:4, :4])


def test_bad_inputs_raise_archive_errors(small_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="unknown archive size 'huge'") as err:
        create_archive(tmp_path / "x", size="huge")
    assert "small" in str(err.value.hint)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ArchiveError, match="not a geoflow archive"):
        create_archive(busy, size="small")
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(ArchiveError, match="already holds an archive"):
        create_archive(small_archive, seed=5, size="small")
    with pytest.raises(ArchiveError, match="does not exist"):
        archive_info(tmp_path / "nothing")
    with pytest.raises(ArchiveError, match=r"archive\.json is missing"):
        archive_info(busy)
    with pytest.raises(GeoflowError, match="seed"):
        create_archive(tmp_path / "neg", seed=-1, size="small")
    # The same settings again reuse the archive without rewriting it.
    stamp = (small_archive / "archive.json").stat().st_mtime_ns
    create_archive(small_archive, seed=0, size="small")
    assert (small_archive / "archive.json").stat().st_mtime_ns == stamp


def test_cli_info_json_and_errors(small_archive: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from geoflow.cli import app

    res = CliRunner().invoke(app, ["archive", "info", str(small_archive), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert {"bbox", "datetime", "collections", "truth", "demo_bbox"} <= set(info)
    assert info["collections"] == ["sentinel-2-l2a", "sentinel-1-rtc"]
    res = CliRunner().invoke(app, ["archive", "create", str(tmp_path / "a"), "--size", "huge"])
    assert isinstance(res.exception, ArchiveError)


# --------------------------------------------------------------------------- world + clouds


def test_world_is_deterministic_and_has_every_class() -> None:
    a, b = landcover(4, (256, 384)), landcover(4, (256, 384))
    assert np.array_equal(a, b) and not np.array_equal(a, landcover(5, (256, 384)))
    assert set(np.unique(a)) == set(range(len(CLASSES)))
    r1 = s2_reflectance(a, np.random.default_rng(0), 160)
    r2 = s2_reflectance(a, np.random.default_rng(0), 160)
    assert np.array_equal(r1, r2) and r1.shape == (10, 256, 384)
    assert r1.min() > 0 and r1.max() <= 1
    db = s1_backscatter_db(a, np.random.default_rng(0), "descending")
    assert db.shape == (2, 256, 384) and np.isfinite(db).all()
    with pytest.raises(ValueError, match="orbit"):
        s1_backscatter_db(a, np.random.default_rng(0), "sideways")  # type: ignore[arg-type]


def test_clouds_follow_cover_and_cast_offset_shadows() -> None:
    shape = (256, 256)
    fracs = [simulate_clouds(np.random.default_rng(3), shape, c).fraction()
             for c in (0.0, 0.2, 0.5, 0.8, 1.0)]
    assert fracs[0] == 0.0 and fracs[-1] == 1.0 and fracs == sorted(fracs)
    c = simulate_clouds(np.random.default_rng(3), shape, 0.4)
    assert (c.shadow > 0.3).any()
    assert not ((c.shadow > 0.3) & (c.thick >= 0.7)).any()  # shadows fall beside clouds
    ground = np.full((10, *shape), 0.1, np.float32)
    out = apply_clouds(ground, c)
    assert out[0][c.thick > 0.9].min() > 0.5  # thick cloud is bright
    assert out[6][(c.shadow > 0.5) & (c.haze < 0.05)].max() < 0.1  # shadow darkens
    lc = np.zeros(shape, np.uint8)
    code = scl(lc, c)
    assert set(np.unique(code)) <= {3, 5, 8, 9, 10}
    assert (code[c.thick >= 0.6] == 9).all()
    with pytest.raises(ValueError, match="shape"):
        scl(lc[:10], c)
    z = np.zeros((4, 4), np.float32)
    assert Clouds(z, z, z).to_20m().shape == (2, 2)
    for seed in range(4):  # patches smaller than the shadow offset (training patches)
        tiny = simulate_clouds(np.random.default_rng(seed), (32, 32), 0.5)
        assert tiny.shape == (32, 32) and np.isfinite(tiny.shadow).all()
