"""classify_window: centred patches, no-data handling, cloud fraction, and the model cache."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from geoflow.errors import CubeError, ModelError
from geoflow.grid import GridSpec
from geoflow.infer import add_summary, classify_window, get_model, period_summary
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
    # A fine-tuning's folder stands for its finetuned checkpoint, here as in load().
    folder = tmp_path / "ft"
    folder.mkdir()
    _save_tiny_checkpoint(folder / "finetuned.safetensors", seed=1)
    first = get_model(folder, device="cpu")
    _save_tiny_checkpoint(folder / "finetuned.safetensors", seed=2)
    second = get_model(folder, device="cpu")
    assert second is not first and second.checksum != first.checksum


# --------------------------------------------------------------------------- period summary
# Every expected number below is worked out by hand from the rule in period_summary's
# docstring (vote weight = confidence + 1; ties to the lower class; summary confidence =
# round-half-up of (winner's confidence summed) / (valid dates)), never by calling it.
def _stack(*dates: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(class, confidence) per date for a row of pixels -> (time, 1, x) uint8 arrays."""
    cls = np.array([[[c for c, _ in d]] for d in dates], dtype=np.uint8)
    conf = np.array([[[q for _, q in d]] for d in dates], dtype=np.uint8)
    return cls, conf


def test_summary_vote_is_weighted_by_confidence_not_counted():
    # pixel 0: class 1 once at 250 (weight 251) vs class 2 twice at 40 (41 + 41 = 82): a
    #          head count would pick 2, the weighted vote picks 1.
    # pixel 1: class 2 once at 200 (201) vs class 1 twice at 99 (100 + 100 = 200): 2 wins by
    #          one, so the "+ 1" counts and the weights are confidence, not confidence squared.
    cls, conf = _stack([(1, 250), (1, 99)], [(2, 40), (2, 200)], [(2, 40), (1, 99)])
    s_cls, _ = period_summary(cls, conf, 10)
    assert s_cls.tolist() == [[1, 2]]


def test_summary_every_valid_observation_counts_even_at_zero_confidence():
    # Weights are confidence + 1 = 1 each: class 5 has 2 votes, class 3 has 1 -> 5.  Without
    # the + 1 every class would total 0 and the winner would be class 0, never observed.
    cls, conf = _stack([(3, 0)], [(5, 0)], [(5, 0)])
    s_cls, s_conf = period_summary(cls, conf, 10)
    assert s_cls.tolist() == [[5]] and s_conf.tolist() == [[0]]


def test_summary_tie_goes_to_the_lower_class_index():
    # Both weights 99 + 1 = 100; the higher class comes first in time so that "first seen"
    # or "last seen" would not give the lower index by accident.
    # pixel 0: class 4 then 2 -> 2.  pixel 1: class 9 then 0 -> 0 (both ends of the range).
    cls, conf = _stack([(4, 99), (9, 7)], [(2, 99), (0, 7)])
    s_cls, s_conf = period_summary(cls, conf, 10)
    assert s_cls.tolist() == [[2, 0]]
    # Winner's confidence over 2 valid dates: 99 / 2 = 49.5 -> 50;  7 / 2 = 3.5 -> 4.
    assert s_conf.tolist() == [[50, 4]]


def test_summary_first_and_last_class_index_take_part():
    # n_classes = 10: class 9 (the last index) must be counted; so must class 0.
    # pixel 0: class 9 at 10 (11) beats class 8 at 5 (6) -> 9.
    # pixel 1: class 0 at 10 (11) beats class 1 at 5 (6) -> 0.
    cls, conf = _stack([(9, 10), (0, 10)], [(8, 5), (1, 5)])
    s_cls, s_conf = period_summary(cls, conf, 10)
    assert s_cls.tolist() == [[9, 0]]
    assert s_conf.tolist() == [[5, 5]]  # 10 / 2 valid dates


def test_summary_confidence_is_the_winners_mean_over_valid_dates_rounded_half_up():
    # pixel 0: winner 1 (251 vs 82); (250 + 0 + 0) / 3 = 83.33 -> 83: losers count as 0.
    # pixel 1: 3 + 2 = 5 over 2 valid dates (the 255 date is not one) = 2.5 -> 3 (half up;
    #          numpy's rint would give 2; over all 3 dates it would be 1.67 -> 2).
    # pixel 2: 2 + 2 + 1 = 5 over 3 dates = 1.67 -> 2 (rounded, not floored to 1).
    # pixel 3: 255 on all 3 dates -> 255, in int64 (uint8 sums would wrap).
    cls, conf = _stack([(1, 250), (1, 3), (7, 2), (4, 255)],
                       [(2, 40), (1, 2), (7, 2), (4, 255)],
                       [(2, 40), (255, 0), (7, 1), (4, 255)])
    s_cls, s_conf = period_summary(cls, conf, 10)
    assert s_cls.tolist() == [[1, 1, 7, 4]]
    assert s_conf.tolist() == [[83, 3, 2, 255]]
    assert s_cls.dtype == np.uint8 and s_conf.dtype == np.uint8


def test_summary_without_valid_dates_is_no_data_whatever_the_confidence():
    # pixel 0: never observed (255), even with a stray confidence -> 255 / 0.
    # pixel 1: one date of no data beside a valid one: the 255 date's confidence (200) is
    #          neither a vote nor part of the mean: 60 / 1 -> 60.
    cls, conf = _stack([(255, 200), (255, 200)], [(255, 0), (3, 60)])
    s_cls, s_conf = period_summary(cls, conf, 10)
    assert s_cls.tolist() == [[255, 3]]
    assert s_conf.tolist() == [[0, 60]]


def test_summary_is_per_pixel_on_a_2d_map():
    # (time 2, y 2, x 2); each pixel votes on its own:
    # (0,0): 1@10, 1@20 -> 1, 30/2 = 15.   (0,1): 2@50, 3@60 -> 3, 60/2 = 30.
    # (1,0): 255, 255 -> no data.          (1,1): 4@9, 255 -> 4, 9/1 = 9.
    cls = np.array([[[1, 2], [255, 4]], [[1, 3], [255, 255]]], dtype=np.uint8)
    conf = np.array([[[10, 50], [0, 9]], [[20, 60], [0, 0]]], dtype=np.uint8)
    s_cls, s_conf = period_summary(cls, conf, 10)
    assert s_cls.tolist() == [[1, 3], [255, 4]]
    assert s_conf.tolist() == [[15, 30], [0, 9]]


def test_add_summary_adds_both_layers_on_the_map_grid():
    cls, conf = _stack([(1, 250), (2, 10)], [(2, 40), (255, 0)], [(2, 40), (2, 30)])
    ds = xr.Dataset({"class": (("time", "y", "x"), cls), "confidence": (("time", "y", "x"), conf)},
                    coords={"y": [5.0], "x": [1.0, 2.0]})
    out = add_summary(ds, 10)
    # pixel 0 as above: 1, 250 / 3 = 83.33 -> 83.  pixel 1: class 2 at 10 and 30 over 2
    # valid dates: 40 / 2 = 20.
    assert out["summary_class"].dims == out["summary_confidence"].dims == ("y", "x")
    assert out["summary_class"].values.tolist() == [[1, 2]]
    assert out["summary_confidence"].values.tolist() == [[83, 20]]
    assert "summary_class" not in ds  # the input is left as it was
