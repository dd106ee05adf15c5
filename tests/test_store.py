"""MapStore: template + region writes, the ledger, resume, refusal, georeferencing."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr

from geoflow.errors import StoreError, StoreMismatchError
from geoflow.grid import GridSpec
from geoflow.store import MapStore
from geoflow.tiles import plan_chunks

TIMES = pd.to_datetime(["2024-06-01", "2024-06-06"])
REGION = GridSpec(32632, 10.0, 500000.0, 5000000.0, 32 * 5, 32 * 3)  # map 3 x 5 at 320 m
CLASSES = ["Barren", "Dense Forest", "Water"]
COLORS = ["#aa9977", "#116622", "#2255cc"]


def _attrs(**over):
    attrs = {"request": {"bbox": [11.0, 45.0, 11.02, 45.01], "dates": "2024-06-01/2024-06-30"},
             "model_version": "demo-1", "model_checksum": "sha256:abc",
             "classes": CLASSES, "class_colors": COLORS,
             "stac_items": [{"time": "2024-06-01", "s2": ["S2A_1"], "s1": []},
                            {"time": "2024-06-06", "s2": ["S2B_2"], "s1": ["S1A_9"]}],
             "catalog": "https://planetarycomputer.example/api/stac/v1?token=SECRET",
             "signer_token": "SECRET"}
    attrs.update(over)
    return attrs


def _plan(chunk=2):
    return plan_chunks(REGION, 32, 32, chunk)


def _full_maps(plan) -> xr.Dataset:
    rng = np.random.default_rng(1)
    h, w = plan.map_grid.shape
    cls = rng.integers(0, 3, (2, h, w)).astype("uint8")
    cls[0, 0, 0] = 255
    return xr.Dataset({
        "class": (("time", "y", "x"), cls),
        "confidence": (("time", "y", "x"), rng.integers(0, 256, (2, h, w)).astype("uint8")),
        "sar_weight": (("time", "y", "x"), rng.integers(0, 256, (2, h, w)).astype("uint8")),
        "cloud_fraction": (("time", "y", "x"), rng.integers(0, 256, (2, h, w)).astype("uint8")),
        "summary_class": (("y", "x"), cls[1]),
        "summary_confidence": (("y", "x"), rng.integers(0, 256, (h, w)).astype("uint8")),
    }, coords={"time": TIMES.values, "y": plan.map_grid.y_coords, "x": plan.map_grid.x_coords})


def _create(path, plan, **attrs_over):
    return MapStore.open_or_create(path, map_grid=plan.map_grid, times=TIMES,
                                   chunk_shape=plan.chunk_shape, attrs=_attrs(**attrs_over))


def _write(store, plan, maps, chunks=None):
    for chunk in chunks if chunks is not None else plan.chunks:
        store.write_chunk(chunk, maps.isel(y=chunk.out_slices[0], x=chunk.out_slices[1]))


def _tree_state(path: Path) -> dict[str, tuple[str, int]]:
    return {str(f.relative_to(path)): (hashlib.sha256(f.read_bytes()).hexdigest(),
                                       f.stat().st_mtime_ns)
            for f in sorted(path.rglob("*")) if f.is_file()}


def test_template_then_chunk_writes_equal_one_full_write(tmp_path):
    plan = _plan()
    maps = _full_maps(plan)
    a = _create(tmp_path / "a.zarr", plan)
    _write(a, plan, maps)
    # Another store, chunks in another order, through a reopened handle as a worker would.
    b = _create(tmp_path / "b.zarr", plan)
    order = list(plan.chunks)
    random.Random(0).shuffle(order)
    _write(MapStore.open(b.path), plan, maps, order)
    assert a.digest() == b.digest()

    raw = a.dataset(mask_and_scale=False).load()
    for name in maps.data_vars:
        np.testing.assert_array_equal(raw[name].values, maps[name].values)
    # A plain full write by xarray with the same encoding stores the same chunk bytes.
    enc = {v: {"chunks": (1, 2, 2) if maps[v].ndim == 3 else (2, 2)} for v in maps.data_vars}
    maps.drop_vars(["time", "y", "x"]).to_zarr(tmp_path / "full.zarr", encoding=enc,
                                                zarr_format=3, consolidated=False)
    files = sorted((tmp_path / "full.zarr" / "confidence").rglob("c/*/*/*"))
    assert len(files) == 2 * 2 * 3  # dates x chunk rows x chunk columns
    for f in files:
        ours = a.path / f.relative_to(tmp_path / "full.zarr")
        assert ours.read_bytes() == f.read_bytes()


# rioxarray 0.19 multiplies Affine objects with `*`, which affine 2.4 deprecates.
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_store_is_georeferenced_for_rioxarray_and_carries_provenance(tmp_path):
    plan = _plan()
    store = _create(tmp_path / "m.zarr", plan)
    ds = xr.open_zarr(store.path, decode_coords="all", consolidated=False)
    assert ds.rio.crs.to_epsg() == 32632
    assert tuple(ds.rio.transform())[:6] == tuple(plan.map_grid.transform)[:6]
    assert ds["class"].encoding["grid_mapping"] == "spatial_ref"
    # unwritten chunks are no data, not class 0
    assert np.isnan(ds["class"].values).all()
    assert int(store.dataset(mask_and_scale=False)["class"].max()) == 255
    attrs = ds.attrs
    assert attrs["classes"] == CLASSES and attrs["class_colors"] == COLORS
    assert attrs["model_version"] == "demo-1" and attrs["model_checksum"] == "sha256:abc"
    assert attrs["stac_items"][1]["s1"] == ["S1A_9"]
    assert attrs["geoflow_version"] and attrs["created"] and attrs["crs"] == "EPSG:32632"
    assert attrs["catalog"] == "https://planetarycomputer.example/api/stac/v1"
    assert "signer_token" not in attrs
    text = "".join(f.read_text() for f in store.path.rglob("*.json"))
    assert "SECRET" not in text
    assert ds["class"].attrs["flag_meanings"] == "Barren Dense_Forest Water"


@pytest.mark.skipif(tuple(int(v) for v in rasterio.__gdal_version__.split(".")[:2]) < (3, 11),
                    reason="GDAL < 3.11 does not know the Zarr v3 'bytes' codec")
def test_gdal_reads_crs_and_transform(tmp_path):  # pragma: no cover - needs GDAL >= 3.11
    plan = _plan()
    store = _create(tmp_path / "m.zarr", plan)
    _write(store, plan, _full_maps(plan))
    with rasterio.open(f'ZARR:"{store.path}":/summary_class') as src:
        assert src.crs.to_epsg() == 32632
        assert src.transform.almost_equals(plan.map_grid.transform)


def test_reopen_resumes_without_touching_the_store(tmp_path):
    plan = _plan()
    maps = _full_maps(plan)
    store = _create(tmp_path / "m.zarr", plan)
    _write(store, plan, maps, plan.chunks[:2])
    before = _tree_state(store.path)
    again = _create(tmp_path / "m.zarr", plan)
    assert _tree_state(store.path) == before  # created time and all bytes kept
    assert again.done() == {plan.chunks[0].id, plan.chunks[1].id}
    _write(again, plan, maps, [c for c in plan.chunks if c.id not in again.done()])
    full = _create(tmp_path / "full.zarr", plan)
    _write(full, plan, maps)
    assert again.digest() == full.digest()
    assert again.done() == {c.id for c in plan.chunks}


@pytest.mark.parametrize(
    ("change", "named", "fix"),
    [({"model_version": "demo-2"}, "model version", "m-demo-2.zarr"),
     ({"model_checksum": "sha256:def"}, "model checksum", "m-demo-1.zarr"),
     ({"request": {"bbox": [11.0, 45.0, 11.03, 45.01]}}, "request", "--overwrite"),
     ({"grid": GridSpec(32632, 10.0, 500000.0, 5000000.0, 32 * 6, 32 * 3)}, "map grid", "new path"),
     ({"times": TIMES[:1]}, "dates", "new path")],
)
def test_another_job_is_refused_and_the_store_left_untouched(tmp_path, change, named, fix):
    plan = _plan()
    store = _create(tmp_path / "m.zarr", plan)
    _write(store, plan, _full_maps(plan), plan.chunks[:1])
    before = _tree_state(store.path)
    change = dict(change)
    grid = change.pop("grid", None)
    times = change.pop("times", TIMES)
    map_grid = plan_chunks(grid, 32, 32, 2).map_grid if grid else plan.map_grid
    with pytest.raises(StoreMismatchError, match=named) as info:
        MapStore.open_or_create(store.path, map_grid=map_grid, times=times,
                                chunk_shape=plan.chunk_shape, attrs=_attrs(**change))
    assert fix in str(info.value)
    assert _tree_state(store.path) == before
    # overwrite=True replaces our own store
    new = MapStore.open_or_create(store.path, map_grid=map_grid, times=times,
                                  chunk_shape=plan.chunk_shape, attrs=_attrs(**change),
                                  overwrite=True)
    assert new.done() == set()


def test_foreign_directories_are_never_replaced(tmp_path):
    plan = _plan()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not a geoflow map store"):
            MapStore.open_or_create(tmp_path / "data", map_grid=plan.map_grid, times=TIMES,
                                    chunk_shape=plan.chunk_shape, attrs=_attrs(),
                                    overwrite=overwrite)
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"
    with pytest.raises(StoreError, match="not a geoflow map store"):
        MapStore.open(tmp_path / "data")


def test_an_interrupted_template_is_rebuilt(tmp_path):
    plan = _plan()
    store = _create(tmp_path / "m.zarr", plan)
    (store.path / "_geoflow_ledger" / "store.json").unlink()  # killed before the marker
    again = _create(tmp_path / "m.zarr", plan)
    assert again.done() == set() and (again.path / "_geoflow_ledger" / "store.json").is_file()


def test_ledger_marks_only_completed_writes_and_keeps_failures(tmp_path):
    plan = _plan()
    maps = _full_maps(plan)
    store = _create(tmp_path / "m.zarr", plan)
    c0, c1 = plan.chunks[0], plan.chunks[1]
    store.record_failure(c1.id, "HTTP 500 on https://h.example/a.tif?se=2024&sig=SECRET")
    assert store.failures() == {c1.id: "HTTP 500 on https://h.example/a.tif"}
    bad = maps.isel(y=c0.out_slices[0], x=c0.out_slices[1])
    with pytest.raises(StoreError, match="not uint8"):
        store.write_chunk(c0, bad.assign(confidence=bad.confidence.astype("float32") / 255))
    with pytest.raises(StoreError, match="dates"):
        store.write_chunk(c0, bad.isel(time=[1, 0]))
    with pytest.raises(StoreError, match="coordinates"):
        store.write_chunk(c1, bad)  # c0's pixels written at c1's place
    with pytest.raises(StoreError, match="not in the store"):
        store.write_chunk(c0, bad.assign(extra=bad["class"]))
    shifted = type(c0)("bad", (slice(1, 3), slice(0, 2)), c0.read_grid)
    with pytest.raises(StoreError, match="whole Zarr chunk"):
        store.write_chunk(shifted, bad)
    assert store.done() == set()
    # per-date and summary variables may be written separately; both mark the chunk done
    store.write_chunk(c1, maps[["summary_class"]].isel(y=c1.out_slices[0], x=c1.out_slices[1]))
    assert store.done() == {c1.id} and store.failures() == {}
    entry = json.loads((store.path / "_geoflow_ledger" / "done" / f"{c1.id}.json").read_text())
    assert entry["variables"] == ["summary_class"]
    assert not list((store.path / "_geoflow_ledger").rglob(".*tmp*"))


def test_finalize_adds_attributes_but_keeps_creation_time_and_digest(tmp_path):
    plan = _plan()
    store = _create(tmp_path / "m.zarr", plan)
    created, digest = store.attrs["created"], store.digest()
    store.finalize({"run": {"seconds": 1.5}, "created": "tampered", "status": "complete"})
    attrs = store.attrs
    assert attrs["created"] == created and attrs["status"] == "complete"
    assert attrs["run"] == {"seconds": 1.5}
    store.finalize({"run": {"seconds": 9.0}})
    assert store.digest() != digest  # "status" was added ...
    other = _create(tmp_path / "o.zarr", plan)
    other.finalize({"run": {"seconds": 3.0}, "status": "complete"})
    assert other.digest() == store.digest()  # ... but run timings are ignored


def test_bad_arguments_are_explained(tmp_path):
    plan = _plan()
    with pytest.raises(StoreError, match="model_version"):
        MapStore.open_or_create(tmp_path / "m.zarr", map_grid=plan.map_grid, times=TIMES,
                                chunk_shape=plan.chunk_shape, attrs={"request": {}})
    with pytest.raises(StoreError, match="at least one date"):
        MapStore.open_or_create(tmp_path / "m.zarr", map_grid=plan.map_grid, times=[],
                                chunk_shape=plan.chunk_shape, attrs=_attrs())
    with pytest.raises(StoreError, match="cannot open the map store") as info:
        MapStore.open_or_create("nosuchscheme://bucket/m.zarr?X-Amz-Signature=SECRET",
                                map_grid=plan.map_grid, times=TIMES,
                                chunk_shape=plan.chunk_shape, attrs=_attrs())
    assert "SECRET" not in str(info.value)


def test_object_store_urls_work_like_directories(tmp_path):
    pytest.importorskip("fsspec")
    plan = _plan()
    maps = _full_maps(plan)
    url = f"memory://geoflow-test-{tmp_path.name}/m.zarr"
    store = _create(url, plan)
    assert store.path == url and store.url == url
    _write(store, plan, maps, plan.chunks[:3])
    store.record_failure(plan.chunks[4].id, "boom")
    again = _create(url, plan)  # resume through a new handle
    assert again.done() == {c.id for c in plan.chunks[:3]}
    assert again.failures() == {plan.chunks[4].id: "boom"}
    _write(again, plan, maps, plan.chunks[3:])
    assert again.failures() == {}
    with pytest.raises(StoreMismatchError, match="model version"):
        _create(url, plan, model_version="demo-2")
    local = _create(tmp_path / "m.zarr", plan)
    _write(local, plan, maps)
    assert again.digest() == local.digest()
    np.testing.assert_array_equal(again.dataset(mask_and_scale=False)["class"].values,
                                  maps["class"].values)


# --------------------------------------------------------------------------- verification
def _finished(tmp_path: Path):
    plan = _plan()
    store = _create(tmp_path / "map.zarr", plan)
    _write(store, plan, _full_maps(plan))
    return plan, store


def test_the_ledger_records_each_objects_size_and_checksum(tmp_path):
    plan, store = _finished(tmp_path)
    root = Path(store.path)
    chunk = plan.chunks[0]
    entry = json.loads((root / "_geoflow_ledger/done" / f"{chunk.id}.json").read_text())
    # 4 per-date variables x 2 dates + 2 summaries, each at chunk position (0, 0).
    assert len(entry["objects"]) == 4 * 2 + 2
    key = "class/c/1/0/0"
    data = (root / key).read_bytes()
    assert entry["objects"][key] == {"size": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest()}
    assert store.verify()["complete"] and store.verify()["verified"] == len(plan.chunks)


@pytest.mark.parametrize("damage, reason", [
    (lambda root, cid: (root / "class/c/1/0/0").unlink(), "object class/c/1/0/0 is missing"),
    (lambda root, cid: (root / "confidence/c/0/0/0").write_bytes(b"x" * 7), "has 7 bytes"),
    (lambda root, cid: _flip_byte(root / "summary_class/c/0/0"), "differs from what was written"),
    (lambda root, cid: (root / f"_geoflow_ledger/done/{cid}.json").write_text("{garbage"),
     "done entry is unreadable"),
    (lambda root, cid: (root / f"_geoflow_ledger/done/{cid}.json").write_text(
        json.dumps({"chunk": cid, "objects": {}, "variables": ["class"],
                    "out_slices": [[0, 2], [0, 2]]})), "does not list the chunk's objects"),
    (lambda root, cid: (root / f"_geoflow_ledger/done/{cid}.json").write_text(
        json.dumps({"chunk": cid, "objects": {"../../etc/passwd": None},
                    "variables": ["../../etc"], "out_slices": [[0, 2], [0, 2]]})),
     "variables the store does not have"),
])
def test_verify_finds_damage_without_changing_anything_and_a_rerun_repairs_it(
        tmp_path, damage, reason):
    plan, store = _finished(tmp_path)
    root = Path(store.path)
    digest = store.digest()
    chunk = plan.chunks[0]
    damage(root, chunk.id)
    before = _tree_state(root)
    report = store.verify()
    assert _tree_state(root) == before  # verify only reads
    assert not report["ok"] and not report["complete"]
    assert list(report["damaged"]) == [chunk.id] and reason in report["damaged"][chunk.id]
    # A run's view: the damaged chunk is not done any more, every other one is.
    assert store.verified_done() == {c.id for c in plan.chunks} - {chunk.id}
    _write(store, plan, _full_maps(plan), chunks=[chunk])  # what the rerun computes
    assert store.verify()["complete"] and store.digest() == digest


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_failing_chunk_write_leaves_no_done_entry(tmp_path, monkeypatch):
    """Fault injection for the write-before-mark rule: the region write raises, so the
    ledger must not mark the chunk (a mark first would survive as a lie)."""
    plan = _plan()
    store = _create(tmp_path / "map.zarr", plan)
    maps = _full_maps(plan)

    def broken(self, *args, **kwargs):
        if kwargs.get("region") is not None:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    real = xr.Dataset.to_zarr
    monkeypatch.setattr(xr.Dataset, "to_zarr", broken)
    with pytest.raises(StoreError, match="No space left on device") as err:
        _write(store, plan, maps, chunks=plan.chunks[:1])
    assert "rerun to resume" in str(err.value)
    assert store.done() == set()
    assert not list((Path(store.path) / "_geoflow_ledger").rglob("*.tmp-*"))


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB file system (tmpfs), where writes fail with ENOSPC once it is full."""
    from _tmpfs import mount_tmpfs, unmount

    mount = mount_tmpfs(tmp_path / "disk", 256)
    try:
        yield mount
    finally:
        unmount(mount)


def test_a_full_disk_is_a_clear_error_and_leaves_no_temporary_files(tiny_disk):
    (tiny_disk / "filler").write_bytes(b"\0" * (256 * 1024 - 8 * 4096))
    plan = _plan(1)
    with pytest.raises(StoreError, match=r"No space left|free space") as err:
        store = _create(tiny_disk / "map.zarr", plan)
        _write(store, plan, _full_maps(plan))
    assert "Fix:" in str(err.value)
    assert not [p for p in tiny_disk.rglob("*") if ".tmp-" in p.name]


# --------------------------------------------------------------------------- other tools
def test_plain_xarray_opens_the_store_without_warnings_before_and_after_finalize(tmp_path):
    import warnings

    plan = _plan()
    maps = _full_maps(plan)
    store = _create(tmp_path / "map.zarr", plan)
    for step in ("template", "finalized"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. xarray's "failed to open consolidated"
            ds = xr.open_zarr(store.path)
            root = json.loads((Path(store.path) / "zarr.json").read_text())
        assert set(root["consolidated_metadata"]["metadata"]) == {
            *maps.data_vars, "time", "y", "x", "spatial_ref"}  # the map, not the ledger
        if step == "template":
            _write(store, plan, maps)
            store.finalize({"run": {"seconds": 1.5}})
    # Attributes set by finalize are in the consolidated view that xarray read.
    assert ds.attrs["run"] == {"seconds": 1.5}
    np.testing.assert_array_equal(ds["confidence"].values, maps["confidence"].values)
    # Readers that ignore consolidated metadata see the same store.
    again = xr.open_zarr(store.path, consolidated=False, mask_and_scale=False)
    np.testing.assert_array_equal(again["class"].values, maps["class"].values)


def test_open_map_gives_uint8_classes_with_255_and_the_crs(tmp_path):
    import geoflow

    plan = _plan()
    maps = _full_maps(plan)
    store = _create(tmp_path / "map.zarr", plan)
    _write(store, plan, maps, plan.chunks[:-1])  # the last chunk stays unwritten: no data
    m = geoflow.open_map(f"file://{store.path}")
    for name in ("class", "summary_class"):
        assert m[name].dtype == np.uint8 and m[name].attrs["_FillValue"] == 255
    ys, xs = plan.chunks[-1].out_slices
    values = m["class"].values
    assert (values[:, ys, xs] == 255).all() and values[0, 0, 0] == 255
    np.testing.assert_array_equal(values[:, :ys.start], maps["class"].values[:, :ys.start])
    assert m.rio.crs.to_epsg() == 32632 and m.rio.transform() == plan.map_grid.transform
    assert m.attrs["classes"] == CLASSES
    assert m["class"].chunks is not None  # lazy
    with pytest.raises(StoreError, match="no map store"):
        geoflow.open_map(tmp_path / "nothing.zarr")
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(tmp_path / "other.zarr", zarr_format=3,
                                                   consolidated=False)
    with pytest.raises(StoreError, match="not a geoflow map store"):
        geoflow.open_map(tmp_path / "other.zarr")


def test_done_lists_ledger_entries_by_name_and_ignores_leftovers(tmp_path):
    """Ids longer than five characters keep their full name; a temporary file left by a
    crash mid-write and files that are not entries are not chunks."""
    grid = GridSpec(32632, 10.0, 500000.0, 5000000.0, 32 * 2, 32 * 11)  # map 11 x 2
    plan = plan_chunks(grid, 32, 32, 1)
    store = MapStore.open_or_create(tmp_path / "m.zarr", map_grid=plan.map_grid, times=TIMES,
                                    chunk_shape=plan.chunk_shape, attrs=_attrs())
    chunk = next(c for c in plan.chunks if c.id == "r10_c1")
    store.write_chunk(chunk, xr.Dataset({"class": (("time", "y", "x"),
                                                   np.ones((2, 1, 1), "uint8"))}))
    done_dir = Path(store.path) / "_geoflow_ledger" / "done"
    (done_dir / ".r10_c0.json.tmp-123-456").write_text("{")
    (done_dir / "notes.txt").write_text("not an entry")
    assert store.done() == {"r10_c1"}
    assert store.verified_done() == {"r10_c1"}


def test_an_entry_without_checksums_is_not_trusted(tmp_path):
    """A done entry as an older geoflow wrote it (no object list) cannot be verified: the
    chunk is computed again rather than trusted."""
    plan, store = _finished(tmp_path)
    cid = plan.chunks[0].id
    entry = Path(store.path) / "_geoflow_ledger" / "done" / f"{cid}.json"
    old = json.loads(entry.read_text())
    old.pop("objects")
    entry.write_text(json.dumps(old))
    reason = store.check_chunk(cid)
    assert reason == ("its done entry is not a geoflow ledger entry for this chunk (written "
                      "by an older geoflow, without checksums)")
    assert store.check_chunk("r9_c9") == "not done"
    report = store.verify()
    assert report["damaged"] == {cid: reason} and "r9_c9" not in report["missing"]
    assert cid not in store.verified_done()


def test_integer_maps_in_0_255_are_stored_as_uint8(tmp_path):
    """A chunk's map may come as any integer type holding 0-255: stored as the same uint8."""
    plan = _plan()
    store = _create(tmp_path / "m.zarr", plan)
    chunk = plan.chunks[0]
    ys, xs = chunk.out_slices
    shape = (2, ys.stop - ys.start, xs.stop - xs.start)
    values = np.arange(np.prod(shape)).reshape(shape) % 256 * 50 % 256  # 0..250, int64
    store.write_chunk(chunk, xr.Dataset({"confidence": (("time", "y", "x"), values)}))
    stored = store.dataset(mask_and_scale=False)["confidence"].values[:, ys, xs]
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, values.astype(np.uint8))


@pytest.mark.parametrize("values, dims, named", [
    (np.full((2, 2, 2), 256), ("time", "y", "x"), "is int64, not uint8"),
    (np.full((2, 2, 2), -1), ("time", "y", "x"), "is int64, not uint8"),
    (np.full((2, 2, 2), 0.5), ("time", "y", "x"), "is float64, not uint8"),
    (np.zeros((2, 2, 1), "uint8"), ("time", "y", "x"), r"shape \(2, 2, 1\)"),  # right dims
    (np.zeros((2, 2, 2), "uint8"), ("time", "x", "y"), r"dims \('time', 'x', 'y'\)"),  # shape
    (np.zeros((2, 2), "uint8"), ("y", "x"), r"dims \('y', 'x'\)"),  # a date-less class map
])
def test_a_chunk_of_the_wrong_type_or_shape_is_refused_with_a_hint(tmp_path, values, dims,
                                                                  named):
    plan = _plan()
    store = _create(tmp_path / "m.zarr", plan)
    with pytest.raises(StoreError, match=named) as err:
        store.write_chunk(plan.chunks[0], xr.Dataset({"class": (dims, values)}))
    assert err.value.hint and store.done() == set()
    with pytest.raises(StoreError, match=r"\['bogus'\] are not in the store") as err:
        store.write_chunk(plan.chunks[0], xr.Dataset({"bogus": (("y", "x"),
                                                                np.zeros((2, 2), "uint8"))}))
    assert err.value.hint


def test_ledger_of_non_square_chunks_with_fill_only_objects_and_a_list_entry(tmp_path):
    """Chunks 1 x 2 map pixels, so rows and columns cannot be confused; a per-date layer that
    is all fill is not stored, and must stay absent; an entry that is valid JSON but not a
    mapping is not trusted."""
    plan = plan_chunks(REGION, 32, 32, 1)  # map 3 x 5, chunks of one pixel...
    grid = plan.map_grid
    store = MapStore.open_or_create(tmp_path / "m.zarr", map_grid=grid, times=TIMES,
                                    chunk_shape=(1, 2), attrs=_attrs())
    from geoflow.tiles import Chunk

    chunk = Chunk("r2_c1", (slice(2, 3), slice(2, 4)), None)  # ...written as 1 x 2 chunks
    cls = np.array([[[1, 2]], [[255, 255]]], "uint8")  # the second date is all no data
    store.write_chunk(chunk, xr.Dataset({"class": (("time", "y", "x"), cls),
                                         "confidence": (("time", "y", "x"),
                                                        np.full((2, 1, 2), 255, "uint8"))}))
    root = Path(store.path)
    entry = json.loads((root / "_geoflow_ledger/done/r2_c1.json").read_text())
    assert sorted(entry["objects"]) == ["class/c/0/2/1", "class/c/1/2/1",
                                        "confidence/c/0/2/1", "confidence/c/1/2/1"]
    assert entry["objects"]["class/c/1/2/1"] is None  # all fill: not stored
    assert (root / "class/c/0/2/1").is_file()
    assert store.check_chunk("r2_c1") is None
    # Something written where the ledger recorded nothing is damage too.
    (root / "class/c/1/2").mkdir(parents=True, exist_ok=True)
    (root / "class/c/1/2/1").write_bytes((root / "class/c/0/2/1").read_bytes())
    assert store.check_chunk("r2_c1") == "object class/c/1/2/1 was recorded as not stored " \
                                         "but exists"
    (root / "_geoflow_ledger/done/r2_c1.json").write_text("[1, 2]")
    assert "not a geoflow ledger entry" in store.check_chunk("r2_c1")


def test_integer_maps_may_hold_255(tmp_path):
    plan = _plan()
    store = _create(tmp_path / "m.zarr", plan)
    store.write_chunk(plan.chunks[0], xr.Dataset({"class": (("time", "y", "x"),
                                                            np.full((2, 2, 2), 255))}))
    assert store.check_chunk(plan.chunks[0].id) is None
