"""Real-data loaders on small generated fixtures in the exact published layouts."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoflow.errors import ModelError
from geoflow.model.loaders import (
    PatchFolderDataset,
    SEN12MSCRDataset,
    estimate_cloud,
    load_arrays,
)

DATA = Path(__file__).parent / "data"
L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
GEOFLOW = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_geoflow_fixture_{name}", DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_sen12mscr = _script("make_sen12mscr")
make_folder_csv = _script("make_folder_csv")


@pytest.fixture(scope="module")
def sen12(tmp_path_factory):
    root = tmp_path_factory.mktemp("sen12mscr")
    truth = make_sen12mscr.make(root, size=32, scenes=2, patches=2)
    return root, truth


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder_csv.make(tmp_path_factory.mktemp("folder"), size=16)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- SEN12MS-CR


def test_sen12mscr_reads_every_triplet_in_geoflow_bands_and_units(sen12):
    root, truth = sen12
    ds = SEN12MSCRDataset(root)
    assert len(ds) == len(truth) == 8
    assert sorted(s.id for s in ds.samples) == sorted(truth)
    item = ds[0]
    want = truth[item["id"]]
    assert item["s2"].dtype == item["s2_clear"].dtype == item["s1"].dtype == np.float32
    assert item["s2"].shape == item["s2_clear"].shape == (10, 32, 32)
    assert item["s1"].shape == (2, 32, 32) and item["cloud"].shape == (32, 32)
    # s2 is the cloudy patch, s2_clear its twin; 13 L1C bands reduced to geoflow's 10, DN/10000.
    for k, band in enumerate(GEOFLOW):
        np.testing.assert_allclose(item["s2"][k], want["s2_cloudy_dn"][L1C.index(band)] / 1e4,
                                   rtol=1e-6)
        np.testing.assert_allclose(item["s2_clear"][k],
                                   want["s2_clear_dn"][L1C.index(band)] / 1e4, rtol=1e-6)
    np.testing.assert_array_equal(item["s1"], want["s1"])
    assert item["label"] == -1


def test_sen12mscr_cloud_estimate_finds_the_cloud_and_shadow(sen12):
    root, truth = sen12
    ds = SEN12MSCRDataset(root)
    for i in range(len(ds)):
        item = ds[i]
        agree = (item["cloud"] == truth[item["id"]]["cloud"]).mean()
        assert agree > 0.97, (item["id"], agree)
    assert np.isnan(SEN12MSCRDataset(root, cloud=None)[0]["cloud"]).all()


def test_sen12mscr_cuts_files_into_model_patches(sen12):
    root, _ = sen12
    whole = SEN12MSCRDataset(root)
    cut = SEN12MSCRDataset(root, patch_size=16)
    assert len(cut) == 4 * len(whole)
    ids = [cut[i]["id"] for i in range(len(cut))]
    assert len(set(ids)) == len(ids)
    first = whole[0]
    # Window 3 of file 0 is its bottom-right quarter.
    np.testing.assert_array_equal(cut[3]["s2"], first["s2"][:, 16:, 16:])
    np.testing.assert_array_equal(cut[3]["s1"], first["s1"][:, 16:, 16:])
    assert cut[3]["id"] == f"{first['id']}_r16_c16"
    assert cut.scenes[:4] == [whole.samples[0].scene] * 4
    # 20 px windows do not fit twice into 32 px: one per file, the rest dropped.
    assert len(SEN12MSCRDataset(root, patch_size=20)) == len(whole)
    with pytest.raises(ModelError, match="larger than the 32x32"):
        SEN12MSCRDataset(root, patch_size=64)


def test_sen12mscr_season_filter_and_errors(sen12):
    root, _ = sen12
    spring = SEN12MSCRDataset(root, seasons=["spring"])
    assert len(spring) == 4 and all(s.id.startswith("ROIs1158_spring") for s in spring.samples)
    assert len(SEN12MSCRDataset(root, seasons=["ROIs2017_winter"])) == 4
    with pytest.raises(ModelError, match="unknown SEN12MS-CR season 'monsoon'") as err:
        SEN12MSCRDataset(root, seasons=["monsoon"])
    assert "spring, summer, fall or winter" in str(err.value)
    with pytest.raises(ModelError, match="ROIs1868_summer is not in"):
        SEN12MSCRDataset(root, seasons=["summer"])


def test_sen12mscr_missing_files(sen12, tmp_path):
    missing_cloudy = "ROIs1158_spring_1_p107"
    no_s1 = "ROIs2017_winter_2_p100"
    root = tmp_path / "partial"
    make_sen12mscr.make(root, without_s1=(no_s1,), without_cloudy=(missing_cloudy,))
    with pytest.raises(ModelError, match="1 cloud-free S2 patches have no cloudy twin") as err:
        SEN12MSCRDataset(root)
    assert "on_missing='skip'" in str(err.value)
    ds = SEN12MSCRDataset(root, on_missing="skip")
    ids = [s.id for s in ds.samples]
    assert missing_cloudy not in ids and len(ids) == 7
    item = ds[ids.index(no_s1)]
    assert np.isnan(item["s1"]).all() and not np.isnan(item["s2"]).any()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no SEN12MS-CR triplets") as err:
        SEN12MSCRDataset(empty)
    assert "ROIs1158_spring_s2_cloudy/s2_cloudy_1" in str(err.value)
    with pytest.raises(ModelError, match="is not a folder"):
        SEN12MSCRDataset(tmp_path / "nowhere")


def test_sen12mscr_wrong_band_count_is_named(sen12, tmp_path):
    root = _copy(sen12[0], tmp_path / "copy")
    bad = next((root / "ROIs2017_winter_s1").glob("s1_*/*.tif"))
    with rasterio.open(bad) as src:
        profile, data = src.profile, src.read()
    profile.update(count=3)
    with rasterio.open(bad, "w", **profile) as dst:
        dst.write(np.concatenate([data, data[:1]]))
    ds = SEN12MSCRDataset(root)
    index = next(i for i, s in enumerate(ds.samples) if s.s1 == bad)
    with pytest.raises(ModelError, match=r"has 3 bands; geoflow expects 2 \(VV then VH\)"):
        ds[index]


def test_sen12mscr_labels_by_patch_id(sen12):
    root, _ = sen12
    ds = SEN12MSCRDataset(root, labels={"ROIs1158_spring_1_p100": "Water",
                                        "ROIs1158_spring_2_p100": 3})
    got = {s.id: s.label for s in ds.samples}
    assert got["ROIs1158_spring_1_p100"] == 8
    assert got["ROIs1158_spring_2_p100"] == 3
    assert got["ROIs2017_winter_1_p100"] == -1
    with pytest.raises(ModelError, match="unknown class name 'Cloud'") as err:
        SEN12MSCRDataset(root, labels={"ROIs1158_spring_1_p100": "Cloud"})
    assert "'Dense Forest'" in str(err.value) and "'Harbor'" in str(err.value)
    with pytest.raises(ModelError, match="not in the dataset"):
        SEN12MSCRDataset(root, labels={"ROIs9999_spring_1_p1": 0})


def test_datasets_batch_with_a_torch_dataloader(sen12):
    import torch
    from torch.utils.data import DataLoader

    batch = next(iter(DataLoader(SEN12MSCRDataset(sen12[0], patch_size=16), batch_size=5)))
    assert batch["s2"].shape == (5, 10, 16, 16) and batch["s2"].dtype == torch.float32
    assert batch["s1"].shape == (5, 2, 16, 16) and batch["cloud"].shape == (5, 16, 16)
    assert batch["label"].tolist() == [-1] * 5 and len(batch["id"]) == 5


def test_estimate_cloud_marks_nodata_as_unknown():
    clear = np.full((10, 3, 3), 0.1, np.float32)
    cloudy = clear.copy()
    cloudy[:, 0, 0] = 0.6          # bright: cloud
    cloudy[6, 1, 1] = 0.02         # NIR (B08) much darker: shadow
    cloudy[:, 2, 2] = np.nan       # no data
    cloudy[:, 2, 0] += 0.03        # a faint change: not cloud
    out = estimate_cloud(cloudy, clear)
    assert out[0, 0] == 1 and out[1, 1] == 1 and out[2, 0] == 0 and np.isnan(out[2, 2])
    assert np.nansum(out) == 2


# --------------------------------------------------------------------------- folder + CSV


def test_folder_csv_reads_every_variant_exactly(folder):
    ds = PatchFolderDataset(folder["csv"])
    assert len(ds) == 5
    for i in range(len(ds)):
        item = ds[i]
        want = folder["expected"][item["id"]]
        assert item["s2"].shape == (10, 16, 16) and item["s2"].dtype == np.float32
        np.testing.assert_allclose(item["s2"], want["s2"], rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(item["s1"], want["s1"], rtol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(item["cloud"], want["cloud"])
        assert item["label"] == want["label"], item["id"]
    assert ds.samples[0].extra == {"site": "a"}
    info = ds.summary()
    assert info["files"] == info["patches"] == 5 and info["patch_size"] == 16
    assert info["files_with_s1"] == 3 and info["files_labelled"] == 4
    assert info["label_counts"] == {"Water": 1, "Herbaceous": 1, "Dense Forest": 1, "Harbor": 1}
    assert repr(ds) == ("PatchFolderDataset(5 files, 5 patches of 16 px, 3 with S1, "
                        "4 labelled)")


def test_folder_csv_patches_and_load_arrays(folder):
    ds = PatchFolderDataset(folder["csv"], patch_size=8)
    assert len(ds) == 20
    seen = []
    arrays = load_arrays(ds, range(4, 8), progress=lambda done, total: seen.append((done, total)))
    assert arrays["s2"].shape == (4, 10, 8, 8) and arrays["cloud"].shape == (4, 8, 8)
    assert arrays["label"].tolist() == [2] * 4 and arrays["label"].dtype == np.int64
    assert list(arrays["id"]) == ["p_l2a_r0_c0", "p_l2a_r0_c8", "p_l2a_r8_c0", "p_l2a_r8_c8"]
    assert seen[-1] == (4, 4)


def _rewrite_csv(src_csv: Path, dst_dir: Path, edit) -> Path:
    dst = _copy(src_csv.parent, dst_dir)
    with (dst / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    rows = edit(rows)
    with (dst / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst / "labels.csv"


def test_folder_csv_errors_name_the_row_and_the_fix(folder, tmp_path):
    def set_(key, value, row=0):
        def edit(rows):
            rows[row][key] = value
            return rows
        return edit

    bad = _rewrite_csv(folder["csv"], tmp_path / "a", set_("label", "Glacier", 1))
    with pytest.raises(ModelError, match="line 3: unknown class name 'Glacier'") as err:
        PatchFolderDataset(bad)
    assert "'Barren'" in str(err.value) and "classes=" in str(err.value)
    # Own class names are accepted.
    own = ["Barren", "Dense Forest", "Herbaceous", "Glacier", "Residential", "Road", "Scrub",
           "Sparsely Built", "Water", "Harbor"]
    assert PatchFolderDataset(bad, classes=own)[1]["label"] == 3

    bad = _rewrite_csv(folder["csv"], tmp_path / "b", set_("label", "10"))
    with pytest.raises(ModelError, match=r"label 10 is not a class index \(0-9\)"):
        PatchFolderDataset(bad)

    bad = _rewrite_csv(folder["csv"], tmp_path / "c", set_("s1", "s1/gone.tif", 2))
    with pytest.raises(ModelError, match=r"line 4: s1 file s1/gone\.tif does not exist"):
        PatchFolderDataset(bad)

    bad = _rewrite_csv(folder["csv"], tmp_path / "d",
                       lambda rows: [{k: v for k, v in r.items() if k != "s2"} for r in rows])
    with pytest.raises(ModelError, match="has no 's2' column"):
        PatchFolderDataset(bad)

    with pytest.raises(ModelError, match="does not exist"):
        PatchFolderDataset(tmp_path / "nope.csv")


def test_folder_csv_bad_rasters_are_explained(folder, tmp_path):
    root = _copy(folder["csv"].parent, tmp_path / "r")
    size = 16

    def write(name, data, **kw):
        with rasterio.open(root / name, "w", driver="GTiff", width=data.shape[2],
                           height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                           crs=kw.get("crs", "EPSG:32632"),
                           transform=Affine(kw.get("res", 10), 0, 500_000, 0,
                                            -kw.get("res", 10), 5_200_000)) as dst:
            dst.write(data)

    write("four.tif", np.ones((4, size, size), np.uint16))
    write("coarse.tif", np.ones((10, size, size), np.uint16), res=20)
    write("small_s1.tif", np.zeros((2, 8, 8), np.float32))
    write("other_crs.tif", np.zeros((2, size, size), np.float32), crs="EPSG:32633")
    write("scl_as_cloud.tif", np.full((1, size, size), 9, np.uint8))
    (root / "ben" / "p_bands" / "P_B11.tif").unlink()
    good = "s2/p_float.tif"
    cases = {
        "four": ({"s2": "four.tif"}, r"has 4 bands; geoflow reads S2 patches with 10 bands"),
        "coarse": ({"s2": "coarse.tif"}, r"has 20 x 20 m pixels; .* 10 m pixels"),
        "small": ({"s2": good, "s1": "small_s1.tif"}, r"is 8x8 px but the S2 patch is 16x16"),
        "crs": ({"s2": good, "s1": "other_crs.tif"}, "EPSG:32633 but its S2 patch is in"),
        "scl": ({"s2": good, "cloud": "scl_as_cloud.tif"}, "give a Sentinel-2 scene class"),
        "bands": ({"s2": "ben/p_bands"}, r"p_bands has no file for band\(s\) B11"),
    }
    for name, (row, message) in cases.items():
        path = root / f"{name}.csv"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row)
        with pytest.raises(ModelError, match=message):
            PatchFolderDataset(path)[0]


def test_folder_csv_linear_s1_is_converted_to_db(tmp_path):
    s2 = np.full((10, 4, 4), 0.1, np.float32)
    s1 = np.stack([np.full((4, 4), 0.1), np.full((4, 4), 0.01)]).astype(np.float32)
    s1[1, 0, 0] = 0.0  # no power: no dB value
    for name, data in (("s2.tif", s2), ("s1.tif", s1)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=4, height=4,
                           count=data.shape[0], dtype="float32", crs="EPSG:32632",
                           transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
            dst.write(data)
    (tmp_path / "l.csv").write_text("s2,s1,label\ns2.tif,s1.tif,Road\n")
    item = PatchFolderDataset(tmp_path / "l.csv", s1_units="linear")[0]
    np.testing.assert_allclose(item["s1"][0], -10.0, rtol=1e-6)
    assert np.isnan(item["s1"][1, 0, 0]) and item["s1"][1, 1, 1] == pytest.approx(-20.0)
    assert item["label"] == 5
    with pytest.raises(ModelError, match="s1_units='dbm' is not known"):
        PatchFolderDataset(tmp_path / "l.csv", s1_units="dbm")
