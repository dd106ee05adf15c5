"""Catalog profiles on real items (tests/data/real_items, see its README) and their rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoflow.catalog import scenes_from_items
from geoflow.errors import CatalogError, CubeError
from geoflow.profiles import (
    PROFILES,
    get_profile,
    guess_profile,
    item_offset,
    missing_polarisations,
    normalize_item,
    s2_offset,
    sensor_of,
)
from geoflow.sentinel import S2_BANDS

DATA = Path(__file__).parent / "data" / "real_items"


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def test_planetary_computer_item_parses_as_published() -> None:
    raw = _load("planetary-computer-s2-l2a.json")
    before = json.dumps(raw, sort_keys=True)
    scenes = scenes_from_items([raw], signer=None)
    assert json.dumps(raw, sort_keys=True) == before  # the user's item is not changed
    item = scenes.s2[0]
    props = item["properties"]
    assert props["geoflow:profile"] == "planetary-computer"  # from its links' host
    assert set(item["assets"]) == {*S2_BANDS, "SCL"}
    assert item["assets"]["B8A"]["href"].endswith("_B8A_20m.tif")
    assert item["assets"]["SCL"]["proj:transform"][0] == 20.0
    assert props["geoflow:offset"] == 0.0  # baseline 02.12: no offset
    assert props["eo:cloud_cover"] == pytest.approx(0.314306)
    assert props["proj:epsg"] == 32606
    assert scenes.summary()[0]["cloud_cover"] == pytest.approx(0.314306)
    # The workers sign its blob hrefs with Planetary Computer's signer.
    assert [type(s).__name__ for s in scenes.signers] == ["PlanetaryComputerSigner"]


def test_planetary_computer_sentinel1_rtc_item_is_accepted_as_published() -> None:
    raw = _load("planetary-computer-s1-rtc.json")
    # As published: the RTC item says sar:product_type GRD (it is made from GRD); its
    # collection (sentinel-1-rtc) says it is terrain corrected.
    assert raw["properties"]["sar:product_type"] == "GRD"
    assert sensor_of(raw) == "s1"
    item = normalize_item(raw, "s1", PROFILES["planetary-computer"])
    assert set(item["assets"]) == {"vv", "vh"}
    assert item["assets"]["vv"]["href"] == raw["assets"]["vv"]["href"]
    assert item["assets"]["vv"]["href"].endswith("/measurement/iw-vv.rtc.tiff")
    assert item["assets"]["vh"]["href"].endswith("/measurement/iw-vh.rtc.tiff")
    assert item["properties"]["proj:epsg"] == 32633
    assert item["properties"]["geoflow:profile"] == "planetary-computer"
    # Brought in as items beside a Sentinel-2 one: profile and signer from its links.
    s2 = _load("planetary-computer-s2-l2a.json")
    scenes = scenes_from_items([s2, raw])
    assert scenes.ids["S1"] == [raw["id"]]
    assert [type(s).__name__ for s in scenes.signers] == ["PlanetaryComputerSigner"]
    # Without its collection, the product type (GRD) is all there is: refused.
    bare = {k: v for k, v in raw.items() if k != "collection"}
    bare["id"] = "S1A_IW_GRDH_1SDV_20240419T045904"
    with pytest.raises(CatalogError, match="radar geometry"):
        normalize_item(bare, "s1", PROFILES["generic"])


def test_items_record_the_catalogs_their_root_links_name() -> None:
    pc = "https://planetarycomputer.microsoft.com/api/stac/v1"
    s2, s1 = _load("planetary-computer-s2-l2a.json"), _load("planetary-computer-s1-rtc.json")
    scenes = scenes_from_items([s2, s1])
    assert scenes.settings is not None and scenes.s1_settings is None
    assert (scenes.settings.url, scenes.settings.s2_collection, scenes.settings.s1_collection,
            scenes.settings.profile_name) == (pc, "sentinel-2-l2a", "sentinel-1-rtc",
                                              "planetary-computer")
    # Earth Search's Sentinel-2 beside Planetary Computer's Sentinel-1: one catalog each.
    scenes = scenes_from_items([_load("earth-search-s2-l2a.json"), s1])
    assert scenes.settings is not None and scenes.s1_settings is not None
    assert (scenes.settings.url, scenes.settings.s1_collection) == (
        "https://earth-search.aws.element84.com/v1", None)
    assert (scenes.s1_settings.url, scenes.s1_settings.s1_collection,
            scenes.s1_settings.s2_collection) == (pc, "sentinel-1-rtc", None)
    # Items that do not all say where they came from record nothing (a reprocess then needs
    # --catalog), rather than half a record that would drop Sentinel-1.
    s1["links"] = [link for link in s1["links"] if link["rel"] != "root"]
    scenes = scenes_from_items([s2, s1])
    assert scenes.settings is None and scenes.s1_settings is None


def test_signatures_no_signer_owns_are_kept() -> None:
    # A pre-signed mirror read with the generic profile: no signer re-signs its hrefs, so
    # the signature they carry is what lets the read through.
    raw = _load("planetary-computer-s2-l2a.json")
    sas = "?st=2024-01-01&se=2030-01-01&sp=rl&sv=2021-06-08&sr=c&sig=abc%3D"
    for asset in raw["assets"].values():
        asset["href"] = asset["href"].replace("sentinel2l2a01.blob.core.windows.net",
                                              "mirror.example.org") + sas
    scenes = scenes_from_items([raw], profile="generic")
    assert scenes.signers == ()
    assert all(a["href"].endswith(sas) for a in scenes.s2[0]["assets"].values())


def test_sentinel1_items_without_both_polarisations_are_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    raw = _load("planetary-computer-s1-rtc.json")
    vv_only = json.loads(json.dumps(raw))
    vv_only["id"] = raw["id"].replace("1SDV", "1SSV")
    del vv_only["assets"]["vh"]
    assert missing_polarisations(vv_only, PROFILES["planetary-computer"]) == ["vh"]
    with caplog.at_level("INFO", logger="geoflow.catalog"):
        scenes = scenes_from_items([_load("planetary-computer-s2-l2a.json"), raw, vv_only])
    assert scenes.ids["S1"] == [raw["id"]]
    assert any(vv_only["id"] in r.getMessage() and "vh" in r.getMessage()
               for r in caplog.records)


# Earth Search v1 asset keys -> geoflow's canonical bands; its COG files are named canonically.
_ES_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
            "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22",
            "SCL": "scl"}


def test_earth_search_item_parses_as_published_and_its_offset_is_not_removed_twice() -> None:
    raw = _load("earth-search-s2-l2a.json")  # baseline 04.00, boa_offset_applied true
    before = json.dumps(raw, sort_keys=True)
    scenes = scenes_from_items([raw], signer=None)
    assert json.dumps(raw, sort_keys=True) == before  # the user's item is not changed
    item = scenes.s2[0]
    props = item["properties"]
    assert props["geoflow:profile"] == "earth-search"  # from its self link's host
    assert guess_profile(raw["links"][0]["href"]).name == "earth-search"
    assert set(item["assets"]) == {*S2_BANDS, "SCL"} == set(_ES_KEYS)
    cogs = ("https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/33/T/WN/"
            "2022/1/S2B_33TWN_20220130_0_L2A")
    for canon, key in _ES_KEYS.items():
        assert item["assets"][canon]["href"] == raw["assets"][key]["href"] == (
            f"{cogs}/{canon}.tif"), canon
    assert item["assets"]["B8A"]["proj:transform"][0] == 20
    assert item["assets"]["SCL"]["raster:bands"][0]["data_type"] == "uint8"
    # Baseline 04.00 and raster:bands offset -0.1 on every band, but Earth Search says the
    # COGs already had the offset removed: 0, once.
    assert raw["properties"]["s2:processing_baseline"] == "04.00"
    assert raw["assets"]["red"]["raster:bands"][0]["offset"] == -0.1
    assert props["geoflow:offset"] == 0.0
    assert props["eo:cloud_cover"] == pytest.approx(55.048245)
    assert props["proj:epsg"] == 32633
    assert scenes.summary()[0]["cloud_cover"] == pytest.approx(55.048245)
    assert sensor_of(raw) == "s2"
    # Normalising again keeps the decision (no second offset).
    assert normalize_item(item, "s2", get_profile("earth-search"))["properties"][
        "geoflow:offset"] == 0.0
    # The flag is what keeps the offset from being removed: without it, raster:bands decides.
    unflagged = json.loads(before)
    del unflagged["properties"]["earthsearch:boa_offset_applied"]
    assert normalize_item(unflagged, "s2", get_profile("earth-search"))["properties"][
        "geoflow:offset"] == -1000.0
    # Read with another catalog's profile, the missing keys are named with the fix.
    with pytest.raises(CubeError, match=r"lacks assets \['B02 \(B02\)'") as err:
        normalize_item(raw, "s2", get_profile("planetary-computer"))
    assert "Profile.with_assets" in str(err.value.hint)


def test_earth_search_old_baseline_item_is_read_without_an_offset() -> None:
    old = _load("earth-search-s2-l2a-baseline-00.01.json")  # 2016, boa_offset_applied false
    new = _load("earth-search-s2-l2a.json")
    scenes = scenes_from_items([new, old], signer=None)
    assert [r["id"] for r in scenes.summary()] == [old["id"], new["id"]]  # by datetime
    assert [r["cloud_cover"] for r in scenes.summary()] == [
        pytest.approx(51.059555), pytest.approx(55.048245)]
    item = next(i for i in scenes.s2 if i["id"] == old["id"])
    props = item["properties"]
    assert props["geoflow:profile"] == "earth-search"
    assert props["proj:epsg"] == 32633
    assert item["assets"]["B11"]["href"] == old["assets"]["swir16"]["href"]
    assert item["assets"]["B11"]["href"].endswith("/2016/12/S2A_33TWN_20161202_0_L2A/B11.tif")
    # Flag false (not taken as "applied"), raster:bands offset 0: 0 from raster:bands.
    assert old["properties"]["earthsearch:boa_offset_applied"] is False
    assert old["assets"]["red"]["raster:bands"][0]["offset"] == 0
    assert props["geoflow:offset"] == 0.0
    # Without raster:bands the baseline (00.01, before 04.00) decides: still 0.
    bare = json.loads(json.dumps(old))
    for asset in bare["assets"].values():
        asset.pop("raster:bands", None)
    assert item_offset(bare) == 0.0
    assert s2_offset(old["properties"]["s2:processing_baseline"]) == 0.0


@pytest.mark.parametrize(("props", "band", "offset"), [
    ({"s2:processing_baseline": "05.09"}, {}, -1000.0),
    ({"s2:processing_baseline": "03.01"}, {}, 0.0),
    ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True},
     {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, 0.0),
    ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False},
     {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, -1000.0),
    ({"s2:processing_baseline": "02.12"}, {"raster:bands": [{"scale": 0.0001, "offset": 0}]},
     0.0),
    ({"geoflow:offset": -1000.0, "earthsearch:boa_offset_applied": True}, {}, -1000.0),
    # raster:bands wins where it and the baseline disagree.
    ({"s2:processing_baseline": "03.01"}, {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]},
     -1000.0),
    ({"s2:processing_baseline": "05.09"}, {"raster:bands": [{"scale": 0.0001, "offset": 0}]},
     0.0),
])
def test_offset_rules(props: dict, band: dict, offset: float) -> None:
    assert item_offset({"id": "x", "properties": props, "assets": {"B04": band}}) == offset


def test_offset_rule_refuses_another_scale() -> None:
    with pytest.raises(CubeError, match="scale"):
        item_offset({"id": "x", "properties": {},
                     "assets": {"B04": {"raster:bands": [{"scale": 2e-4, "offset": -0.2}]}}})
    assert s2_offset("04.00") == -1000.0


def test_profiles_are_guessed_from_hosts_and_named_clearly() -> None:
    assert guess_profile("https://planetarycomputer.microsoft.com/api/stac/v1").signer == (
        "planetary-computer")
    assert guess_profile("https://earth-search.aws.element84.com/v1").s1_collection is None
    assert guess_profile("https://example.org/stac").name == "generic"
    assert guess_profile("https://evil-planetarycomputer.microsoft.com.example.org").name == (
        "generic")
    with pytest.raises(CatalogError, match="unknown catalog profile 'aws'"):
        get_profile("aws")
    assert set(PROFILES) == {"planetary-computer", "earth-search", "generic"}


def test_sentinel1_grd_and_unknown_items_are_refused() -> None:
    grd = {"id": "g", "properties": {"platform": "SENTINEL-1A", "sar:product_type": "GRD",
                                     "proj:epsg": 32632}, "assets": {}}
    with pytest.raises(CatalogError, match="radar geometry"):
        normalize_item(grd, "s1", PROFILES["generic"])
    es_grd = {"id": "S1A_IW_GRDH_1SDV_20230101T000000", "collection": "sentinel-1-grd",
              "links": [{"rel": "self", "href": "https://earth-search.aws.element84.com/v1/"
                         "collections/sentinel-1-grd/items/S1A_IW_GRDH_1SDV_20230101T000000"}],
              "properties": {"sar:product_type": "GRD", "proj:epsg": 32632},
              "assets": {"vv": {"href": "s3://sentinel-s1-l1c/vv.tiff"},
                         "vh": {"href": "s3://sentinel-s1-l1c/vh.tiff"}}}
    s2 = _load("earth-search-s2-l2a.json")
    with pytest.raises(CatalogError, match="radar geometry") as err:
        scenes_from_items([s2, es_grd])
    assert "planetarycomputer" in err.value.hint and "--s1-catalog" in err.value.hint
    with pytest.raises(CatalogError, match="neither Sentinel-2 nor Sentinel-1"):
        scenes_from_items([{"id": "l8", "collection": "landsat-c2-l2", "properties": {},
                            "assets": {}}])
    with pytest.raises(CatalogError, match="ItemCollection or a list"):
        scenes_from_items(42)


def test_items_outside_the_request_are_left_out_as_a_search_would() -> None:
    from geoflow.errors import NoScenesError
    from geoflow.request import Request

    raw = _load("planetary-computer-s2-l2a.json")  # Alaska, 2019-06-29
    inside = Request.from_user("-148.0,60.5,-147.9,60.6", "2019-06-01/2019-06-30")
    assert [i["id"] for i in scenes_from_items([raw], request=inside).s2] == [raw["id"]]
    # Cloud cover 0.31 %: kept under max_cloud=1, left out under max_cloud=0.1.
    cloudy = Request.from_user("-148.0,60.5,-147.9,60.6", "2019-06-01/2019-06-30", max_cloud=1)
    assert [i["id"] for i in scenes_from_items([raw], request=cloudy).s2] == [raw["id"]]
    clear = Request.from_user("-148.0,60.5,-147.9,60.6", "2019-06-01/2019-06-30",
                              max_cloud=0.1)
    with pytest.raises(NoScenesError, match="no Sentinel-2 scene in bbox"):
        scenes_from_items([raw], request=clear)
    for bbox, dates in (("10.0,53.5,10.1,53.6", "2019-06-01/2019-06-30"),
                        ("-148.0,60.5,-147.9,60.6", "2019-07-01/2019-07-31")):
        with pytest.raises(NoScenesError, match="no Sentinel-2 scene in bbox"):
            scenes_from_items([raw], request=Request.from_user(bbox, dates))
