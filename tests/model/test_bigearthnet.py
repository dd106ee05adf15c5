"""BigEarthNet: the fetch of the public samples, the three readers, the safe decoding of v1
LMDB pickles and the CORINE label table."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoflow.errors import ModelError
from geoflow.model._constants import CLASSES
from geoflow.model.bigearthnet import (
    BEN19,
    BEN19_COLORS,
    LABEL_TABLE,
    V1_TO_19,
    WHEELS,
    BenPatches,
    BigEarthNetDataset,
    allowed_classes,
    allowed_mask,
    cut_windows,
    decode_v1_pickle,
    fetch_samples,
    open_sets,
    read_path,
    read_v1_folders,
    to_ben19,
    window_origins,
)
from geoflow.sentinel import S2_BANDS


def test_label_table_covers_both_nomenclatures_with_known_classes() -> None:
    assert set(V1_TO_19) <= set(LABEL_TABLE) and set(BEN19) <= set(LABEL_TABLE)
    assert len(V1_TO_19) == 43 and len(BEN19) == 19
    for family, classes in LABEL_TABLE.values():
        assert family and classes and set(classes) <= set(CLASSES)
    # the direction of the mapping
    assert allowed_classes(["Mixed forest"]) == {"Dense Forest"}
    assert allowed_classes(["Sea and ocean"]) == allowed_classes(["Marine waters"]) == {"Water"}
    assert allowed_classes(["Port areas"]) >= {"Harbor"}
    assert "Road" in allowed_classes(["Road and rail networks and associated land"])
    assert to_ben19(["Discontinuous urban fabric", "Bare rock"]) == ["Urban fabric"]
    with pytest.raises(ModelError, match="unknown BigEarthNet label"):
        allowed_classes(["Moon dust"])
    m = allowed_mask([["Pastures", "Coniferous forest"]], BEN19)
    assert [BEN19[i] for i in np.flatnonzero(m[0])] == ["Pastures", "Coniferous forest"]
    # a v1 label allows what its merged 19-class label allows (same family too)
    for v1, new in V1_TO_19.items():
        if new is not None:
            assert LABEL_TABLE[v1][0] == LABEL_TABLE[new][0], v1
            assert allowed_classes([v1]) == allowed_classes([new]), v1
    # Marine waters takes CORINE's sea-and-ocean colour, not the water-courses one
    assert BEN19_COLORS[BEN19.index("Marine waters")] == "#e6f2ff"
    assert len(set(BEN19_COLORS)) == 19


def test_window_origins_are_centred_and_inside() -> None:
    assert window_origins(32) == [(12 + 32 * r, 12 + 32 * c) for r in range(3) for c in range(3)]
    assert window_origins(120) == [(0, 0)]
    with pytest.raises(ModelError, match="larger than"):
        window_origins(128)


def test_public_sets_are_real_and_kept_apart(ben_sets: dict) -> None:
    dev, held = ben_sets["dev"], ben_sets["heldout"]
    assert len(dev) == 54 and len(held) == 6
    # ids are disjoint, and no patch's pixels repeat between the sets ...
    assert not set(dev.ids) & set(held.ids)
    held_s2 = {p.tobytes() for p in held.s2}
    assert not any(p.tobytes() in held_s2 for p in dev.s2)
    # ... but acquisitions (satellite + date) are not: 3 of the 6 held-out pairs come from
    # overpasses dev also has (another area of the same tile / orbit); the real-patch report
    # splits the held-out figures by this (evaluate_real's ``by_acquisition``)
    shared = [i for i, g in zip(held.ids, held.groups, strict=True) if g in set(dev.groups)]
    assert sorted({g for g in held.groups if g in set(dev.groups)}) == ["S2A_20170613",
                                                                       "S2A_20170617"]
    assert len(shared) == 3
    assert sorted(set(dev.source)) == ["reben", "v1-lmdb"] and set(held.source) == {"v1-folders"}
    for p in (dev, held):
        assert p.s2.shape[1:] == (10, 120, 120) and p.s1.shape[1:] == (2, 120, 120)
        # real L2A reflectance and sigma0 dB, not DN or linear power
        assert 0.0 < np.nanmedian(p.s2) < 0.5 and -30 < np.nanmedian(p.s1) < 0
        assert all(p.labels)
    # reBEN's own flags: 3 cloudy and 3 snowy patches; the held-out February patch is snowy
    assert (dev.cloudy.sum(), dev.snowy.sum()) == (3, 3) and held.snowy.sum() == 1
    assert dev.snow[dev.snowy].mean() > 0.3 and dev.snow[~dev.snowy].max() == 0
    # snow is hidden like cloud, as the cube's SCL mask hides SCL 11
    assert (dev.cloud >= dev.snow).all()
    assert dev.cloud[dev.cloudy].mean() > 0 and dev.cloud[~dev.cloudy & ~dev.snowy].max() == 0


def test_v1_folders_read_bands_on_the_10m_grid(ben_root: Path) -> None:
    common = ben_root / f"bigearthnet_common-{WHEELS['bigearthnet_common'][0]}"
    held = read_v1_folders(common)
    name = held.ids[0]
    folder = common / "BigEarthNet-S2-Example" / name
    with rasterio.open(folder / f"{name}_B05.tif") as src:  # 20 m, 60 x 60 px
        b05 = src.read(1)
    with rasterio.open(folder / f"{name}_B02.tif") as src:
        b02 = src.read(1)
    s2 = held.s2[0]
    np.testing.assert_allclose(s2[S2_BANDS.index("B02")], b02 / 1e4, rtol=1e-6)
    np.testing.assert_allclose(s2[S2_BANDS.index("B05"), ::2, ::2], b05 / 1e4, rtol=1e-6)
    np.testing.assert_array_equal(s2[S2_BANDS.index("B05"), 1::2, 1::2],
                                  s2[S2_BANDS.index("B05"), ::2, ::2])
    assert np.isfinite(held.s1).all()  # every example pair has its S1 patch


def test_read_path_recognises_each_layout(ben_root: Path) -> None:
    cfg = ben_root / f"configilm-{WHEELS['configilm'][0]}"
    assert set(read_path(cfg / "BENv2").source) == {"reben"}
    assert len(read_path(cfg / "BENv2" / "BigEarthNet-V2-LMDB")) == 24
    assert set(read_path(cfg / "BENv1" / "BigEarthNetEncoded.lmdb").source) == {"v1-lmdb"}
    with pytest.raises(ModelError, match="does not exist"):
        read_path(ben_root / "nope")
    with pytest.raises(ModelError, match="unknown real dataset"):
        open_sets("eurosat:/x")


def test_v1_conditions_come_from_the_given_cache_or_are_unknown(ben_root: Path,
                                                               tmp_path: Path) -> None:
    common = ben_root / f"bigearthnet_common-{WHEELS['bigearthnet_common'][0]}"
    known = read_path(common, cache=ben_root)
    assert known.conditions_known and known.snowy.sum() == 1
    with pytest.warns(UserWarning, match="conditions of these v1 patches are unknown"):
        unknown = read_path(common, cache=tmp_path)  # lists not fetched into this cache
    assert not unknown.conditions_known and not unknown.snowy.any()
    assert not BenPatches.concat([known, unknown]).conditions_known
    reben = read_path(ben_root / "configilm-0.7.1" / "BENv2", cache=tmp_path)  # own flags
    assert reben.conditions_known


def test_v1_pickles_are_decoded_without_running_anything(ben_root: Path,
                                                         tmp_path: Path) -> None:
    import lmdb

    env = lmdb.open(str(ben_root / "configilm-0.7.1" / "BENv1" / "BigEarthNetEncoded.lmdb"),
                    readonly=True, lock=False)
    with env.begin() as txn:
        _, value = next(iter(txn.cursor()))
        value = bytes(value)
    env.close()
    patch = decode_v1_pickle(value)
    assert patch["bands"]["B02"].shape == (120, 120) and patch["bands"]["B05"].shape == (60, 60)
    assert patch["bands"]["VV"].dtype == np.float32 and patch["labels"]

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (shutil.copy, (__file__, str(marker)))

    with pytest.raises(ModelError, match="no bands"):
        decode_v1_pickle(pickle.dumps({"x": Evil()}))
    assert not marker.exists()


def test_s1_bands_missing_or_wrong_size_are_clear_errors() -> None:
    from geoflow.model.bigearthnet.patches import _s1_from_bands

    vv = np.full((120, 120), -12.0, np.float32)
    assert _s1_from_bands({"VV": vv, "VH": vv - 6})[1, 0, 0] == -18.0
    assert np.isnan(_s1_from_bands(None)).all()
    with pytest.raises(ModelError, match="patch p has no VH band"):
        _s1_from_bands({"VV": vv}, "patch p")
    with pytest.raises(ModelError, match="VH band is 60x60 px"):
        _s1_from_bands({"VV": vv, "VH": vv[:60, :60]}, "patch p")


def test_v1_pickle_decoding_of_protocol_5_and_deep_nesting() -> None:
    band = np.arange(6, dtype=np.uint16).reshape(2, 3)
    value = {"labels": ["Pastures"], "bands": [{"name": "B2", "data": band}]}
    for protocol in (3, 5):  # protocol 5 reduces arrays through numpy's _frombuffer
        patch = decode_v1_pickle(pickle.dumps(value, protocol=protocol))
        np.testing.assert_array_equal(patch["bands"]["B02"], band)
        assert patch["labels"] == ["Pastures"]
    # out-of-band buffers cannot be read from an LMDB value: a clear error, not a traceback
    oob = pickle.dumps(value, protocol=5, buffer_callback=lambda b: False)
    with pytest.raises(ModelError, match="cannot be decoded safely"):
        decode_v1_pickle(oob)
    # 200,000 nested lists (built by opcodes, the unpickler itself does not recurse): walking
    # them must not raise RecursionError
    depth = 200_000
    deep = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    with pytest.raises(ModelError, match="no bands or no labels"):
        decode_v1_pickle(deep)
    with pytest.raises(ModelError, match="cannot be decoded safely"):
        decode_v1_pickle(b"\x80\x04garbage")
    # an object dtype inside an "array" is refused, never materialised
    buf = io.BytesIO()
    pickle.dump(np.array([1, "a"], dtype=object), buf)
    with pytest.raises(ModelError):
        decode_v1_pickle(buf.getvalue())


def test_fetch_checks_the_wheel_checksum(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake = wheels / f"configilm-{WHEELS['configilm'][0]}-py3-none-any.whl"
    fake.write_bytes(b"not the published wheel")
    with pytest.raises(ModelError, match="sha256"):
        fetch_samples(tmp_path)
    assert not fake.exists()  # a bad download is not kept
    assert not (tmp_path / f"configilm-{WHEELS['configilm'][0]}").exists()


def test_fetch_waits_for_the_lock_and_rechecks(tmp_path: Path) -> None:
    import threading

    from geoflow.model.bigearthnet.samples import _cache_lock

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake = wheels / f"configilm-{WHEELS['configilm'][0]}-py3-none-any.whl"
    fake.write_bytes(b"not the published wheel")
    result: list[object] = []
    with _cache_lock(tmp_path):  # another process is filling the cache
        worker = threading.Thread(target=lambda: result.append(fetch_samples(tmp_path)))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not result  # it waits for the lock
        for name, (version, sha) in WHEELS.items():  # the other process finishes
            (tmp_path / f"{name}-{version}").mkdir()
            (tmp_path / f"{name}-{version}" / ".complete").write_text(sha)
    worker.join(10)
    assert result == [tmp_path]
    assert fake.exists()  # re-checked under the lock: nothing fetched, nothing deleted


def test_fetch_error_names_the_real_offline_folder(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "1")
    with pytest.raises(ModelError) as exc:
        fetch_samples(tmp_path / "cache")
    assert str(tmp_path / "cache" / "wheels") in (exc.value.hint or "")
    assert not list((tmp_path / "cache").glob(".configilm-*"))  # the private temp dir is gone


def test_tar_members_are_checked(tmp_path: Path) -> None:
    import tarfile

    from geoflow.model.bigearthnet.samples import _extract_tar

    bad = tmp_path / "bad.tar.bz2"
    with tarfile.open(bad, "w:bz2") as tf:
        link = tarfile.TarInfo("x/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(ModelError, match="unsafe tar member"):
        _extract_tar(bad, tmp_path / "out", "test.whl")
    assert not (tmp_path / "out" / "x" / "link").exists()


def test_cut_windows_keeps_patch_order(ben_sets: dict) -> None:
    held = ben_sets["heldout"]
    w = cut_windows(held, 32)
    assert w["s2"].shape == (54, 10, 32, 32) and list(w["patch"][:10]) == [0] * 9 + [1]
    np.testing.assert_array_equal(w["s2"][10], held.s2[1, :, 12:44, 44:76])


def test_dataset_items_follow_the_loaders_conventions(ben_sets: dict) -> None:
    from geoflow.model.loaders import load_arrays

    held = ben_sets["heldout"]
    ds = BigEarthNetDataset(held, patch_size=32)
    assert len(ds) == 54
    item = ds[10]
    assert item["s2"].shape == (10, 32, 32) and item["s1"].shape == (2, 32, 32)
    assert item["cloud"].shape == (32, 32) and item["id"] == f"{held.ids[1]}_r12_c44"
    assert [CLASSES[k] for k in np.flatnonzero(item["allowed"])] == sorted(
        allowed_classes(held.labels[1]), key=CLASSES.index)
    arrays = load_arrays(ds, range(9))
    assert arrays["s2"].shape == (9, 10, 32, 32) and arrays["label"].shape == (9,)
    whole = BigEarthNetDataset(held, classes=BEN19)
    assert whole[0]["s2"].shape == (10, 120, 120) and whole[0]["allowed"].shape == (19,)
    with pytest.raises(IndexError):
        ds[54]
