"""The IRM weights move the way the formula in geoflow.model.irm says."""

from __future__ import annotations

import pytest
import torch

from geoflow.model.irm import certainty, irm_weights, js_divergence, sar_share


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


# --------------------------------------------------------------------------- exact values
# Hand-derived from the formula in geoflow.model.irm's docstring.  One-hot answers have
# certainty exactly 1, so r_opt = v**gamma and r_sar = a * (1 - r_opt); the _EPS = 1e-6 terms
# move the results by less than 1e-5.
ONE_HOT, OTHER = [1.0, 0.0], [0.0, 1.0]
KW = {"sar_avail": torch.tensor([1.0])}


def _sar_weight(p_opt: list[float], p_sar: list[float], cloud: float, **kw: float) -> float:
    o, s = _p(p_opt), _p(p_sar)
    w = irm_weights(o, o, s, cloud_frac=torch.tensor([cloud]), **KW, **kw)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    return w[0, 2].item()


def test_certainty_is_normalised_by_log_of_the_class_count() -> None:
    # [.5, .5, 0, 0]: H = log 2, K = 4 -> 1 - log 2 / log 4 = 0.5 (per row, 2 rows).
    c = certainty(_p([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]))
    assert c.tolist() == pytest.approx([0.5, 1.0], abs=1e-6)


def test_js_divergence_of_a_one_hot_and_a_uniform_answer() -> None:
    # m = [.75, .25]; KL(p||m) = log(4/3) = 0.2876821;
    # KL(q||m) = .5 log(.5/.75) + .5 log(.5/.25) = .5 (-0.4054651 + 0.6931472) = 0.1438410;
    # JS = (0.2876821 + 0.1438410) / 2 = 0.2157616 nats, the same both ways round.
    a, b = _p(ONE_HOT), _p([0.5, 0.5])
    assert js_divergence(a, b).item() == pytest.approx(0.2157616, abs=1e-6)
    assert js_divergence(b, a).item() == pytest.approx(0.2157616, abs=1e-6)
    # Per row: a second, identical pair adds nothing to the first row's value.
    two = js_divergence(_p(ONE_HOT, ONE_HOT), _p([0.5, 0.5], ONE_HOT))
    assert two.tolist() == pytest.approx([0.2157616, 0.0], abs=1e-6)


def test_sar_reliability_is_what_optical_leaves_unexplained() -> None:
    # Agreeing one-hot teachers: D = 0, k = k0 = 2.  Half clouded: v = 0.5, r_opt = 0.5,
    # r_sar = 1 * (1 - 0.5) = 0.5 -> m_sar = .25 / (.25 + .25) = 0.5.
    # (Without the (1 - r_opt) complement r_sar = 1 and m_sar = 1 / 1.25 = 0.8.)
    assert _sar_weight(ONE_HOT, ONE_HOT, 0.5) == pytest.approx(0.5, abs=1e-5)
    # Clear patch: r_opt = 1, r_sar = 0 -> 0 (a sure SAR teacher gets no say on clear ground).
    assert _sar_weight(ONE_HOT, ONE_HOT, 0.0) == pytest.approx(0.0, abs=1e-5)
    # Cloud 0.25: r_opt = .75, r_sar = .25 -> .0625 / (.5625 + .0625) = 0.1.
    assert _sar_weight(ONE_HOT, ONE_HOT, 0.25) == pytest.approx(0.1, abs=1e-5)


def test_gamma_is_the_exponent_on_the_visible_fraction() -> None:
    # gamma 2, cloud .5: r_opt = .5**2 = .25, r_sar = .75 -> .5625 / (.0625 + .5625) = 0.9.
    assert _sar_weight(ONE_HOT, ONE_HOT, 0.5, gamma=2.0) == pytest.approx(0.9, abs=1e-5)
    # gamma .5, cloud .75: r_opt = .25**.5 = .5, r_sar = .5 -> 0.5 ...
    assert _sar_weight(ONE_HOT, ONE_HOT, 0.75, gamma=0.5) == pytest.approx(0.5, abs=1e-5)
    # ... where the default gamma 1 gives r_opt = .25, r_sar = .75 -> 0.9.
    assert _sar_weight(ONE_HOT, ONE_HOT, 0.75) == pytest.approx(0.9, abs=1e-5)


def test_discrepancy_raises_the_ratio_exponent_by_beta() -> None:
    # Opposite one-hot answers: JS = log 2, D = 1, k = k0 + beta = 2 + 4 = 6.  Cloud .25:
    # r_opt = .75, r_sar = .25 -> .25**6 / (.75**6 + .25**6) = 1 / (3**6 + 1) = 1 / 730.
    assert _sar_weight(ONE_HOT, OTHER, 0.25) == pytest.approx(1 / 730, abs=1e-5)
    # beta = 0: k = 2 as when they agree -> 0.1;  k0 = 1, beta = 0: .25 / (.75 + .25) = .25.
    assert _sar_weight(ONE_HOT, OTHER, 0.25, beta=0.0) == pytest.approx(0.1, abs=1e-5)
    assert _sar_weight(ONE_HOT, OTHER, 0.25, beta=0.0, k0=1.0) == pytest.approx(0.25, abs=1e-5)
    # beta = 1: k = 3 -> .25**3 / (.75**3 + .25**3) = 1 / 28.
    assert _sar_weight(ONE_HOT, OTHER, 0.25, beta=1.0) == pytest.approx(1 / 28, abs=1e-5)


def test_optical_share_is_split_in_proportion_to_certainty() -> None:
    # No SAR: m_sar = 0.  c_S = 1 (one-hot), c_Opt = 0.5 ([.5, .5, 0, 0], K = 4):
    # shares 1 / 1.5 = 2/3 and 0.5 / 1.5 = 1/3.
    w = irm_weights(_p([1.0, 0, 0, 0]), _p([0.5, 0.5, 0, 0]), _p([0.25] * 4),
                    cloud_frac=torch.tensor([0.3]), sar_avail=torch.tensor([0.0]))
    assert w[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0], abs=1e-5)


def test_inputs_outside_their_range_are_clamped() -> None:
    # sar_avail 2 counts as 1 (uniform: 1, 1, 1 -> thirds, not 1, 1, 2 -> .25, .25, .5);
    # cloud_frac -1 counts as 0 (clear: v = 1, not 2): SAR weight 0 as on a clear patch.
    p = _p([0.9, 0.1])
    w = irm_weights(p, p, p, cloud_frac=torch.tensor([0.0]), sar_avail=torch.tensor([2.0]),
                    mode="uniform")
    assert w[0].tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)
    assert _sar_weight(ONE_HOT, ONE_HOT, -1.0) == pytest.approx(0.0, abs=1e-5)
    # Cloud 2: no visible ground at all, so SAR only (v = 0, not -1: with gamma .5 a
    # negative v would give NaN).
    assert _sar_weight(ONE_HOT, ONE_HOT, 2.0, gamma=0.5) == pytest.approx(1.0, abs=1e-6)
    # sar_avail -1 counts as 0 (uniform: 1, 1, 0 -> halves).
    w = irm_weights(p, p, p, cloud_frac=torch.tensor([0.0]), sar_avail=torch.tensor([-1.0]),
                    mode="uniform")
    assert w[0].tolist() == pytest.approx([0.5, 0.5, 0.0], abs=1e-6)


def test_an_unsure_sar_teacher_gets_no_say_unless_optical_is_gone() -> None:
    # SAR uniform: c_SAR = 0, r_sar = 0; D = JS([1, 0], [.5, .5]) / log 2 = 0.311, so
    # k = 2 + 4 * 0.311 = 3.245 (not an integer: the EPS terms must keep the bases > 0).
    # Half clouded: m_sar = EPS**k / (EPS**k + .5**k) = 0.
    assert _sar_weight(ONE_HOT, [0.5, 0.5], 0.5) == pytest.approx(0.0, abs=1e-5)
    # Fully clouded: optical gets no say at all, so SAR has everything even when unsure.
    assert _sar_weight(ONE_HOT, [0.5, 0.5], 1.0) == 1.0


def test_two_unsure_optical_teachers_share_equally() -> None:
    # c_S = c_Opt = 0: share (0 + EPS) / (0 + 0 + 2 EPS) = 1/2 each; no SAR.
    u = _p([0.25] * 4)
    w = irm_weights(u, u, u, cloud_frac=torch.tensor([0.0]), sar_avail=torch.tensor([0.0]))
    assert w[0].tolist() == pytest.approx([0.5, 0.5, 0.0], abs=1e-6)


def test_sar_share_is_the_sar_teachers_column() -> None:
    w = _p([0.7, 0.2, 0.1], [0.0, 0.25, 0.75])
    assert sar_share(w).tolist() == pytest.approx([0.1, 0.75])
