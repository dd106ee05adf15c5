"""classify_window: centred patches, no-data handling, cloud fraction, and the model cache."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from geoflow.errors import CubeError, ModelError
from geoflow.grid import GridSpec
from geoflow.infer import classify_window, get_model
from geoflow.tiles import plan_chunks


def _save_tiny_checkpoint(path, seed: int) -> None:
    import torch

    from geoflow.model.checkpoint import save_checkpoint
    from geoflow.model.networks import ArchSpec, build_network

    torch.manual_seed(seed)
    spec = ArchSpec("student", n_classes=10, width=4, depth=1, patch_size=16)
    save_checkpoint(path, build_network(spec), spec, stage="untrained")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # A small freshly initialised student: independent of the shipped demo weights.
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    _save_tiny_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    return get_model(ckpt, device="cpu")


def _cube(model, grid: GridSpec, n_t: int = 2, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    h, w = grid.shape
    refl = rng.uniform(0.0, 0.4, (n_t, 10, h, w)).astype("float32")
    sar = rng.uniform(-25.0, -5.0, (n_t, 2, h, w)).astype("float32")
    cloud = (rng.uniform(size=(n_t, h, w)) < 0.3).astype("float32")
    times = np.array(["2024-06-01", "2024-06-06", "2024-06-11"][:n_t], "datetime64[ns]")
    # Band order deliberately reversed: classify_window must select by name.
    bands = list(model.meta["bands"])
    return xr.Dataset(
        {"reflectance": (("time", "band", "y", "x"), refl[:, ::-1]),
         "sar": (("time", "pol", "y", "x"), sar),
         "cloud": (("time", "y", "x"), cloud)},
        coords={"time": times, "band": bands[::-1], "pol": ["VV", "VH"],
                "y": grid.y_coords, "x": grid.x_coords})


def test_overlapping_patches_match_a_plain_loop_and_land_on_the_map_grid(model):
    p = model.patch_size
    stride = p // 2
    region = GridSpec(32632, 10.0, 500000.0, 5000000.0, 3 * stride, 2 * stride)
    plan = plan_chunks(region, p, stride, chunk_patches=8)
    chunk = plan.chunks[0]
    cube = _cube(model, chunk.read_grid)
    out = classify_window(cube, model, stride)

    ny, nx = chunk.shape
    assert out["class"].shape == (2, ny, nx)
    np.testing.assert_allclose(out.y.values, plan.map_grid.y_coords[chunk.out_slices[0]])
    np.testing.assert_allclose(out.x.values, plan.map_grid.x_coords[chunk.out_slices[1]])
    np.testing.assert_array_equal(out.time.values, cube.time.values)

    refl = cube.reflectance.sel(band=list(model.meta["bands"])).values
    s2, s1, cl = [], [], []
    for t in range(2):
        for i in range(ny):
            for j in range(nx):
                win = np.s_[i * stride:i * stride + p, j * stride:j * stride + p]
                s2.append(refl[t][(slice(None), *win)])
                s1.append(cube.sar.values[t][(slice(None), *win)])
                cl.append(cube.cloud.values[t][win])
    # Same patches in the same order and batch: the model's answers must be identical.
    pred = model.predict(np.stack(s2), np.stack(s1), np.stack(cl))
    np.testing.assert_array_equal(out["class"].values, pred.probs.argmax(1).reshape(2, ny, nx))
    np.testing.assert_array_equal(out["confidence"].values,
                                  np.rint(255 * pred.probs.max(1)).reshape(2, ny, nx))
    np.testing.assert_array_equal(out["sar_weight"].values,
                                  np.rint(255 * pred.sar_weight).reshape(2, ny, nx))
    want_cf = np.rint(255 * np.stack(cl).mean(axis=(1, 2))).reshape(2, ny, nx)
    assert np.abs(out["cloud_fraction"].values.astype(int) - want_cf).max() <= 1
    for name in ("class", "confidence", "sar_weight", "cloud_fraction"):
        assert out[name].dtype == np.uint8


def test_no_data_patches_get_255_and_sar_only_patches_are_classified(model):
    p = model.patch_size
    grid = GridSpec(32632, 10.0, 0.0, 0.0, 3 * p, p)
    cube = _cube(model, grid, n_t=1)
    refl, sar, cloud = (cube[v].values for v in ("reflectance", "sar", "cloud"))
    refl[..., :2 * p] = np.nan      # patches 0 and 1: no optical
    cloud[..., :2 * p] = np.nan
    sar[..., :p] = np.nan           # patch 0: no SAR either
    cloud[..., 2 * p:] = 0.0
    cloud[..., :p // 2, 2 * p:] = 1.0  # patch 2: top half cloudy -> rint(127.5) = 128
    out = classify_window(cube, model, stride=p, probabilities=True)
    cls = out["class"].values[0, 0]
    assert cls[0] == 255 and cls[1] != 255 and cls[2] != 255
    assert out["confidence"].values[0, 0, 0] == 0 and out["sar_weight"].values[0, 0, 0] == 0
    assert list(out["cloud_fraction"].values[0, 0]) == [255, 255, 128]
    probs = out["probability"].values[0, :, 0]
    assert list(out.label.values) == list(model.classes)
    assert (probs[:, 0] == 0).all() and abs(int(probs[:, 1].sum()) - 255) <= len(model.classes)


def test_windows_that_do_not_fit_are_refused(model):
    p = model.patch_size
    cube = _cube(model, GridSpec(32632, 10.0, 0.0, 0.0, p + 3, p), n_t=1)
    with pytest.raises(CubeError, match="whole"):
        classify_window(cube, model, stride=p)
    with pytest.raises(ModelError, match="stride"):
        classify_window(cube, model, stride=p + 2)
    with pytest.raises(CubeError, match="lacks B02"):
        classify_window(cube.drop_sel(band="B02"), model, stride=p)
    with pytest.raises(CubeError, match="lacks sar"):
        classify_window(cube.drop_vars("sar"), model, stride=p)
    with pytest.raises(CubeError, match="has dims"):
        classify_window(cube.isel(time=0), model, stride=p)


def test_model_is_loaded_once_per_process_and_again_when_replaced(model, ckpt, tmp_path):
    assert get_model(str(ckpt), device="cpu") is model
    assert get_model(ckpt, device="auto").device.type in ("cpu", "cuda")
    path = tmp_path / "w.safetensors"
    _save_tiny_checkpoint(path, seed=1)
    first = get_model(path, device="cpu")
    assert get_model(path, device="cpu") is first
    _save_tiny_checkpoint(path, seed=2)  # retrained in place: new checksum, loaded again
    second = get_model(path, device="cpu")
    assert second is not first and second.checksum != first.checksum
