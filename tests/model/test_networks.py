"""Networks and input preparation: shapes, NaN safety, missing SAR, fully clouded optical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoflow.errors import ModelError
from geoflow.model.networks import ArchSpec, build_network, default_norm, prepare_inputs


def _raw(n: int = 4, p: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    s2 = rng.uniform(0.01, 0.4, (n, 10, p, p)).astype("f4")
    s1 = rng.normal(-12, 3, (n, 2, p, p)).astype("f4")
    cloud = (rng.random((n, p, p)) > 0.7).astype("f4")
    return s2, s1, cloud


def test_prepare_inputs_makes_nan_harmless_and_flags_missing() -> None:
    s2, s1, cloud = _raw()
    s2[0] = np.nan  # optical missing entirely
    s2[1, 3, :4, :4] = np.nan  # some pixels missing in one band
    s1[2] = np.nan  # no SAR for this date
    cloud[3] = np.nan  # no cloud information
    b = prepare_inputs(s2, s1, cloud, default_norm())
    for key in ("opt", "sar", "cloud_frac", "sar_avail"):
        assert torch.isfinite(b[key]).all(), key
    assert b["cloud_frac"][0] == 1.0  # missing optical counts as not visible
    assert b["cloud_frac"][3] == 1.0
    assert (b["opt"][1, 10, :4, :4] == 1).all()  # mask channel flags the missing pixels
    assert b["sar_avail"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert (b["sar"][2] == 0).all()


@pytest.mark.parametrize("name", ["optical", "sar", "student"])
def test_every_network_answers_probabilities_and_sar_weight(name: str) -> None:
    net = build_network(ArchSpec(name, n_classes=10, width=4, patch_size=16)).eval()
    s2, s1, cloud = _raw()
    out = net(prepare_inputs(s2, s1, cloud, default_norm()))
    assert out["probs"].shape == (4, 10)
    assert torch.allclose(out["probs"].sum(1), torch.ones(4), atol=1e-5)
    assert out["sar_weight"].shape == (4,)
    assert ((out["sar_weight"] >= 0) & (out["sar_weight"] <= 1)).all()


def test_student_ignores_missing_sar_and_survives_full_cloud() -> None:
    torch.manual_seed(0)
    net = build_network(ArchSpec("student", n_classes=10, width=4, patch_size=16)).eval()
    s2, s1, cloud = _raw()
    s1[:2] = np.nan
    cloud[2:] = 1.0
    s2[3] = np.nan  # fully clouded *and* no reflectance
    out = net(prepare_inputs(s2, s1, cloud, default_norm()))
    assert out["sar_weight"][:2].tolist() == [0.0, 0.0]
    # Without SAR the answer is the optical branch's, whatever SAR values were fed.
    assert torch.allclose(out["probs"][:2], out["p_opt"][:2])
    assert torch.isfinite(out["probs"]).all()


def test_sar_network_answers_uniform_without_sar() -> None:
    net = build_network(ArchSpec("sar", n_classes=10, width=4, patch_size=16)).eval()
    s2, s1, cloud = _raw(2)
    s1[0] = np.nan
    out = net(prepare_inputs(s2, s1, cloud, default_norm()))
    assert torch.allclose(out["probs"][0], torch.full((10,), 0.1))
    assert out["sar_weight"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("kwargs", [{"name": "resnet"}, {"patch_size": 20}, {"width": 2}])
def test_invalid_architecture_is_refused(kwargs: dict) -> None:
    spec = ArchSpec(**{"name": "student", "n_classes": 10, **kwargs})
    with pytest.raises(ModelError, match="Fix:"):
        build_network(spec)
