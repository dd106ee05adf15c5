"""geoflow.reprocess.reprocess_catalog: a whole maps catalog reprocessed in one run.

Two maps of two small sub-regions are made with one untrained model (seed 0) and put in a
maps catalog; the catalog is reprocessed with another model (seed 1) on one in-process Dask
cluster, against the real local STAC API. Checked: both maps done in one run, their reports
and the summary agree, the new catalog finds the new maps by the new model, the old stores'
bytes are unchanged, a rerun skips everything, a map made by the target model is skipped, a
failing map is recorded while the others go on, and the command line takes a catalog.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _helpers import file_hashes

from geoflow.errors import RequestError, RunFailedError
from geoflow.retry import RetryPolicy

pytestmark = pytest.mark.server

DATES = "2025-06-01/2025-06-10"  # two Sentinel-2 dates of the small archive: a fast run
FAST = RetryPolicy(attempts=2, backoff_s=0.1)


@pytest.fixture(scope="module")
def archive_catalog(tmp_path_factory, small_archive, stac_url, client, models):
    """Two maps of the first model in a maps catalog; their stores and file hashes."""
    from geoflow.regional import classify_region
    from geoflow.stac_maps import add_to_catalog, item_path

    info = json.loads((Path(small_archive) / "archive.json").read_text())
    w, s, e, n = info["demo_bbox"]
    cy, hy, qx = (s + n) / 2, (n - s) / 6, (e - w) / 8
    base = tmp_path_factory.mktemp("maps")
    stores = []
    # Two small boxes in the west and east halves: two maps of different footprints.
    for name, cx in (("kiel", w + 2 * qx), ("lund", e - 2 * qx)):
        out = base / name / f"{name}.zarr"  # different folders: names stay the store's own
        out.parent.mkdir()
        classify_region((cx - qx, cy - hy, cx + qx, cy + hy), DATES, out=str(out),
                        catalog=stac_url, client=client, model=models[0], chunk_patches=2,
                        progress=False, retry=FAST)
        stores.append(out)
    cat_dir = base / "catalog"
    for store in stores:
        add_to_catalog(item_path(store), cat_dir)
    return cat_dir / "catalog.json", stores, {s: file_hashes(s) for s in stores}


def _version(store: Path) -> str:
    return str(json.loads((store / "zarr.json").read_text())["attributes"]["model_version"])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, archive_catalog, client, models):
    from geoflow.reprocess import reprocess_catalog

    catalog, stores, _ = archive_catalog
    out_dir = tmp_path_factory.mktemp("v2")
    summary = reprocess_catalog(catalog, model=models[1], out_dir=out_dir,
                                where=f"model={_version(stores[0])}", client=client,
                                progress=False, retry=FAST)
    return out_dir, summary


# --------------------------------------------------------------------------- tests
def test_both_maps_reprocessed_with_reports_and_summary(archive_catalog, first_run):
    _, stores, _ = archive_catalog
    out_dir, summary = first_run
    assert summary == json.loads((out_dir / "summary.json").read_text())
    assert summary["counts"] == {"selected": 2, "done": 2, "skipped": 0, "failed": 0}
    rows = {Path(r["store"]).name: r for r in summary["maps"]}
    assert set(rows) == {"kiel.zarr", "lund.zarr"}
    for store in stores:
        row = rows[store.name]
        assert row["status"] == "done" and row["reason"] is None
        assert Path(row["out"]) == out_dir / store.name
        report_path = out_dir / f"{store.stem}-changes.json"
        assert Path(row["report"]) == report_path
        report = json.loads(report_path.read_text())
        assert report["previous"] == str(store)
        for key in ("changed_fraction", "changed_pixels", "compared_pixels"):
            assert row[key] == report[key], key
        assert report["compared_pixels"] > 0 and Path(row["png"]).is_file()
        assert report["model"]["checksum"] == summary["model"]["checksum"]


def test_new_catalog_finds_the_new_maps_by_the_new_model(archive_catalog, first_run):
    from geoflow.stac_maps import find_maps

    _, stores, _ = archive_catalog
    out_dir, summary = first_run
    new_version = summary["model"]["version"]
    assert new_version != _version(stores[0])
    found = find_maps(out_dir / "catalog.json", model=new_version)
    hrefs = sorted(Path(i.assets["zarr"].href).name for i in found)
    assert hrefs == ["kiel.zarr", "lund.zarr"]
    assert all(Path(i.assets["zarr"].href).parent == out_dir for i in found)
    assert find_maps(out_dir / "catalog.json", model=_version(stores[0])) == []


def test_rerun_skips_everything_and_old_stores_untouched(archive_catalog, first_run, client,
                                                         models):
    from geoflow.reprocess import reprocess_catalog

    catalog, stores, hashes = archive_catalog
    out_dir, _ = first_run
    new_hashes = {s.name: file_hashes(out_dir / s.name) for s in stores}
    again = reprocess_catalog(catalog, model=models[1], out_dir=out_dir,
                              where=[f"model={_version(stores[0])}"], client=client,
                              progress=False, retry=FAST)
    assert again["counts"] == {"selected": 2, "done": 0, "skipped": 2, "failed": 0}
    assert all("earlier run" in r["reason"] for r in again["maps"])
    assert all(r["changed_fraction"] is not None for r in again["maps"])
    assert {s.name: file_hashes(out_dir / s.name) for s in stores} == new_hashes
    for store in stores:  # the previous maps: the same bytes, file by file
        assert file_hashes(store) == hashes[store]


def test_map_of_the_target_model_is_skipped(first_run, client, models, tmp_path):
    from geoflow.reprocess import reprocess_catalog

    out_dir, _ = first_run
    # The new catalog holds only maps of the second model: nothing to do, no store made.
    summary = reprocess_catalog(out_dir / "catalog.json", model=models[1],
                                out_dir=tmp_path / "v3", client=client, progress=False)
    assert summary["counts"] == {"selected": 2, "done": 0, "skipped": 2, "failed": 0}
    assert all("target model" in r["reason"] for r in summary["maps"])
    assert not list((tmp_path / "v3").glob("*.zarr"))
    assert json.loads((tmp_path / "v3" / "summary.json").read_text()) == summary


def test_failed_map_is_recorded_and_the_others_go_on(archive_catalog, client, models,
                                                     tmp_path):
    from geoflow.reprocess import reprocess_catalog
    from geoflow.stac_maps import add_to_catalog, write_map_item

    _, stores, _ = archive_catalog
    broken = tmp_path / "broken" / "gone.zarr"
    shutil.copytree(stores[0], broken)
    root = json.loads((broken / "zarr.json").read_text())
    attrs = root["attributes"]
    # As if the catalog had dropped one of the pinned items.
    gone = attrs["stac_items"][0]["s2"][0]
    attrs["stac_items"][0]["s2"][0] = "S2Z_GONE_FROM_THE_CATALOG"
    attrs["stac_inputs"]["s2"][attrs["stac_inputs"]["s2"].index(gone)] = \
        "S2Z_GONE_FROM_THE_CATALOG"
    (broken / "zarr.json").write_text(json.dumps(root))
    cat = tmp_path / "cat"
    add_to_catalog(write_map_item(broken), cat)
    with pytest.raises(RunFailedError) as err:
        reprocess_catalog(cat / "catalog.json", model=models[1], out_dir=tmp_path / "out",
                          client=client, progress=False, retry=FAST)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1 and err.value.exit_code == 1
    [row] = summary["maps"]
    assert row["status"] == "failed" and "S2Z_GONE_FROM_THE_CATALOG" in row["reason"]
    assert list(err.value.failures) == [row["id"]]


def test_where_is_parsed_strictly():
    from geoflow.reprocess import parse_where

    assert parse_where(["model=a@v1", "bbox=1,2,3,4"]) == {"model": "a@v1",
                                                          "bbox": (1.0, 2.0, 3.0, 4.0)}
    assert parse_where("bbox=1,2,3,4,model=a") == {"model": "a", "bbox": (1.0, 2.0, 3.0, 4.0)}
    for bad, match in (("cloud=10", "unknown --where key 'cloud'"), ("model", "KEY=VALUE"),
                       ("bbox=1,2,3", "four numbers"), ("model=a,model=b", "twice"),
                       ("bbox=3,2,1,4", "W < E"), ("model=", "no value")):
        with pytest.raises(RequestError, match=match):
            parse_where(bad)


def test_command_line_takes_a_catalog(archive_catalog, first_run, models, client, capsys):
    from geoflow.cli import main

    catalog, stores, _ = archive_catalog
    out_dir, _ = first_run

    def run(*args: str) -> int:
        try:
            main(["reprocess", *args])  # returns on success, exits with the status otherwise
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0

    # The module's client is the current one: the command uses it (no cluster of its own).
    assert run(str(catalog), "--model", models[1], "--out-dir", str(out_dir), "--where",
               f"model={_version(stores[0])}", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"] == {"selected": 2, "done": 0, "skipped": 2, "failed": 0}
    assert run(str(catalog), "--model", models[1], "--out-dir", str(out_dir), "--where",
               f"model={_version(stores[0])}") == 0
    assert "0 done, 2 skipped, 0 failed of 2 maps" in capsys.readouterr().out
    # Wrong combinations: a clear error and status 2, before any work.
    for args, match in (
            ((str(catalog), "--model", models[1], "--out", "x.zarr"), "--out is for one store"),
            ((str(catalog), "--model", models[1]), "needs --out-dir"),
            ((str(stores[0]), "--model", models[1], "--out-dir", "d"), "--out-dir is for a "),
            ((str(stores[0]), "--model", models[1], "--out", "x.zarr", "--where", "model=a"),
             "--where is for a"),
            ((str(stores[0]), "--model", models[1]), "needs --out"),
            ((str(catalog), "--model", models[1], "--out-dir", str(out_dir), "--where",
              "colour=red"), "unknown --where key")):
        assert run(*args) == 2, args
        assert match in capsys.readouterr().err, args
