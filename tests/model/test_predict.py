"""geoflow.model.load / LoadedModel.predict: the contract H6 and H7 build on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import geoflow.model
from geoflow.errors import CheckpointError, ModelError


@pytest.fixture(scope="module")
def model() -> geoflow.model.LoadedModel:
    return geoflow.model.load(device="cpu")


def _inputs(n: int, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (rng.uniform(0.01, 0.4, (n, 10, p, p)).astype("f4"),
            rng.normal(-12, 3, (n, 2, p, p)).astype("f4"),
            (rng.random((n, p, p)) > 0.5).astype("f4"))


def test_shipped_weights_load_with_their_metadata(model: geoflow.model.LoadedModel) -> None:
    assert geoflow.model.DEFAULT_CHECKPOINT.is_file()
    assert model.patch_size == model.meta["patch_size"]
    assert len(model.classes) == len(model.colors) == 10
    assert model.version and model.checksum.startswith("sha256:")
    assert model.device.type == "cpu"


def test_predict_is_nan_safe(model: geoflow.model.LoadedModel) -> None:
    p = model.patch_size
    s2, s1, cloud = _inputs(6, p)
    s2[0] = np.nan  # optical missing
    s1[1] = np.nan  # SAR missing
    cloud[2] = 1.0  # fully clouded
    s2[3, :, :5] = np.nan  # partly missing
    cloud[4] = np.nan  # no cloud mask
    s2[5], s1[5], cloud[5] = np.nan, np.nan, np.nan  # nothing at all
    pred = model.predict(s2, s1, cloud, batch_size=4)
    assert pred.probs.dtype == np.float32 and pred.probs.shape == (6, 10)
    assert np.isfinite(pred.probs).all() and np.isfinite(pred.sar_weight).all()
    np.testing.assert_allclose(pred.probs.sum(1), 1.0, atol=1e-5)
    assert pred.sar_weight[1] == 0.0 and pred.sar_weight[5] == 0.0
    assert ((pred.sar_weight >= 0) & (pred.sar_weight <= 1)).all()
    assert pred.labels.shape == (6,) and pred.confidence.max() <= 1.0


def test_batches_do_not_change_the_answer(model: geoflow.model.LoadedModel) -> None:
    s2, s1, cloud = _inputs(5, model.patch_size)
    a = model.predict(s2, s1, cloud, batch_size=2)
    b = model.predict(s2, s1, cloud, batch_size=256)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    assert model.predict(s2[:0], s1[:0], cloud[:0]).probs.shape == (0, 10)


def test_wrong_shapes_are_explained(model: geoflow.model.LoadedModel) -> None:
    s2, s1, cloud = _inputs(2, model.patch_size)
    with pytest.raises(ModelError, match=r"s2 patches have shape.*Fix:"):
        model.predict(s2[:, :4], s1, cloud)
    with pytest.raises(ModelError, match="different numbers of patches"):
        model.predict(s2, s1[:1], cloud)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        geoflow.model.load(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="no student_irm, demo or finetuned checkpoint"):
        geoflow.model.load(tmp_path)
    with pytest.raises(CheckpointError, match="not 64 px"):
        geoflow.model.load(patch_size=64)
    with pytest.raises(ModelError, match="unknown device"):
        geoflow.model.load(device="tpu")
