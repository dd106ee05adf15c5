"""The IRM weights move the way the formula in geoflow.model.irm says."""

from __future__ import annotations

import pytest
import torch

from geoflow.model.irm import certainty, irm_weights, js_divergence


def _p(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_certainty_and_divergence_bounds() -> None:
    assert certainty(_p([0.25] * 4)).item() == pytest.approx(0.0, abs=1e-6)
    assert certainty(_p([1.0, 0, 0, 0])).item() == pytest.approx(1.0, abs=1e-4)
    a, b = _p([1.0, 0.0]), _p([0.0, 1.0])
    assert js_divergence(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert js_divergence(a, b).item() == pytest.approx(0.6931, abs=1e-3)


def test_sar_weight_rises_with_cloud_and_is_total_when_optical_is_gone() -> None:
    opt, sar = _p([0.8, 0.1, 0.1]), _p([0.2, 0.7, 0.1])
    clouds = torch.linspace(0, 1, 11)
    w = irm_weights(opt.expand(11, 3), opt.expand(11, 3), sar.expand(11, 3),
                    cloud_frac=clouds, sar_avail=torch.ones(11))
    sar_w = w[:, 2]
    assert (sar_w[1:] >= sar_w[:-1] - 1e-6).all()
    assert sar_w[0] < 0.2 and sar_w[-1] == 1.0
    assert torch.allclose(w.sum(1), torch.ones(11))


def test_no_sar_means_no_sar_weight() -> None:
    p = _p([0.5, 0.3, 0.2])
    for mode in ("irm", "uniform"):
        w = irm_weights(p, p, p, cloud_frac=torch.tensor([1.0]), sar_avail=torch.tensor([0.0]),
                        mode=mode)
        assert w[0, 2] == 0.0
        assert torch.isfinite(w).all() and w.sum() == pytest.approx(1.0)


def test_discrepancy_sharpens_towards_the_more_reliable_modality() -> None:
    opt = _p([0.7, 0.2, 0.1])
    agree, disagree = _p([0.6, 0.3, 0.1]), _p([0.1, 0.3, 0.6])
    kw = {"cloud_frac": torch.tensor([0.5]), "sar_avail": torch.tensor([1.0])}
    w_agree = irm_weights(opt, opt, agree, **kw)[0, 2].item()
    w_dis = irm_weights(opt, opt, disagree, **kw)[0, 2].item()
    w_flat = irm_weights(opt, opt, disagree, beta=0.0, **kw)[0, 2].item()
    w_flat_agree = irm_weights(opt, opt, agree, beta=0.0, **kw)[0, 2].item()
    # Same certainties, so without the discrepancy term the weight would not change ...
    assert w_flat == pytest.approx(w_flat_agree, abs=0.05)
    # ... with it, disagreement pushes the weight away from 0.5 towards the more reliable side.
    assert abs(w_dis - 0.5) > abs(w_flat - 0.5)
    assert w_agree != pytest.approx(w_dis)


def test_optical_share_follows_teacher_certainty() -> None:
    sure, unsure = _p([0.95, 0.03, 0.02]), _p([0.4, 0.35, 0.25])
    w = irm_weights(sure, unsure, unsure, cloud_frac=torch.tensor([0.0]),
                    sar_avail=torch.tensor([1.0]))
    assert w[0, 0] > w[0, 1]


def test_uniform_mode() -> None:
    p = _p([0.9, 0.1], [0.9, 0.1])
    w = irm_weights(p, p, p, cloud_frac=torch.tensor([0.0, 1.0]),
                    sar_avail=torch.tensor([1.0, 1.0]), mode="uniform")
    assert torch.allclose(w, torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="mode"):
        irm_weights(p, p, p, cloud_frac=torch.zeros(2), sar_avail=torch.ones(2), mode="x")
