"""The information regulation mechanism (IRM): per-sample weights of the three teachers.

In step F2 the fused student is distilled from three teachers: f_S and f_Opt, which see the
(cloudy) optical patch, and f_SAR, which sees the SAR patch. The seed paper weights each
teacher per sample "from a discrepancy ratio between the modalities' outputs" but does not
publish the formula. geoflow's formula, for one sample with K classes:

1. Certainty of each teacher ``t``: ``c_t = 1 - H(p_t) / log K`` (0 for a uniform answer, 1 for
   a one-hot answer).
2. Reliability of each modality. Optical: ``r_opt = v**gamma * (c_S + c_Opt) / 2`` where
   ``v = 1 - cloud_fraction`` is the visible fraction of the patch (from the SCL mask). SAR
   is complementary: ``r_sar = a * c_SAR * (1 - r_opt)`` with ``a`` = 1 if SAR exists for the
   sample, else 0 — SAR counts for what optical cannot see or is unsure of.
3. Discrepancy between the modalities: ``D = JS(p_opt, p_SAR) / log 2`` in [0, 1], the
   Jensen-Shannon divergence between the optical teachers' mean answer and the SAR answer.
4. SAR weight = a ratio of reliabilities, sharpened by the discrepancy:
   ``m_sar = r_sar**k / (r_opt**k + r_sar**k)`` with ``k = k0 + beta * D``.
5. Teacher weights: ``w_SAR = m_sar``; the optical share ``1 - m_sar`` is split between f_S
   and f_Opt in proportion to their certainties.

Why this shape:

- Certainty alone is not enough: FACTS.md's trial showed that a source model trained on clear
  optical is *over*-confident under clouds (85 % of cloudy patches above 0.8 confidence, 24 %
  right), so a pure confidence ratio keeps trusting optical under thick cloud. The SCL cloud
  fraction is independent evidence of how much ground the optical patch shows, so the optical
  reliability is scaled by the visible fraction ``v``. At ``v = 0`` the SAR weight is exactly
  1: with optical gone the student can lean on SAR fully.
- When the two modalities agree, it matters little whom we trust and both should teach (mild
  ratio, ``k = k0``); when they disagree, averaging two contradicting answers teaches a
  meaningless blend, so the weights sharpen towards the more reliable modality (``k`` grows
  with ``D``). That is the "discrepancy ratio".
- SAR is complementary, not a peer, on clear patches. Tried first: ``r_sar = a * c_SAR`` with
  ``k0 = 1`` and then ``k0 = 3``. The SAR teacher (trained on pseudo-labels) is about as
  *confident* as the optical ones while being ~20 points less accurate, so either ratio handed
  it ~40 % of the say on clear patches; the student's gate copied that and lost 2-6 points
  against the source model on clear patches. Discounting SAR by what optical already explains
  (``1 - r_opt``) keeps clear, confident optical patches optical (SAR weight near 0) and still
  gives SAR everything at ``v = 0``. With it ``k0 = 2`` suffices (the default).
- Without SAR (``a = 0``) the SAR teacher's (uniform) answer must not teach: ``m_sar = 0``.

The uniform alternative (``mode="uniform"``) gives every available teacher the same weight;
``geoflow evaluate`` compares both (``fused_uniform`` vs ``student_irm``). With uniform
weights two of three teachers are optical, so under thick cloud two confident-but-wrong
answers outvote SAR; the uniform student stays near the source model there (README model
card: ~25-35 % vs ~80 % in the 60-100 % cloud bins).

Examples
--------
>>> import torch
>>> p = torch.tensor([[0.9, 0.05, 0.05]])
>>> q = torch.tensor([[0.05, 0.9, 0.05]])
>>> w = irm_weights(p, p, q, cloud_frac=torch.tensor([1.0]), sar_avail=torch.tensor([1.0]))
>>> w[0].tolist()  # fully clouded: only the SAR teacher counts
[0.0, 0.0, 1.0]
"""

from __future__ import annotations

import math

import torch

TEACHERS = ("source", "aux_optical", "aux_sar")
_EPS = 1e-6


def certainty(p: torch.Tensor) -> torch.Tensor:
    """``1 - H(p)/log K`` per row: 0 for a uniform answer, 1 for a one-hot answer."""
    k = p.shape[1]
    h = -(p.clamp_min(1e-12).log() * p).sum(dim=1)
    return (1.0 - h / math.log(k)).clamp(0.0, 1.0)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row, in nats (0 .. log 2)."""
    m = 0.5 * (p + q)
    lm = m.clamp_min(1e-12).log()
    kl_p = (p * (p.clamp_min(1e-12).log() - lm)).sum(dim=1)
    kl_q = (q * (q.clamp_min(1e-12).log() - lm)).sum(dim=1)
    return (0.5 * (kl_p + kl_q)).clamp_min(0.0)


def irm_weights(p_source: torch.Tensor, p_aux_opt: torch.Tensor, p_aux_sar: torch.Tensor, *,
                cloud_frac: torch.Tensor, sar_avail: torch.Tensor, gamma: float = 1.0,
                beta: float = 4.0, k0: float = 2.0, mode: str = "irm") -> torch.Tensor:
    """Per-sample teacher weights (N, 3) in :data:`TEACHERS` order; rows sum to 1.

    Parameters
    ----------
    p_source, p_aux_opt, p_aux_sar
        (N, K) teacher probabilities.
    cloud_frac
        (N,) not-visible fraction of the optical patch (0 clear .. 1 fully clouded).
    sar_avail
        (N,) 1 where SAR exists for the sample, else 0.
    gamma
        Exponent on the visible fraction (how fast optical loses trust with cloud).
    beta
        How strongly the modality discrepancy sharpens the ratio.
    k0
        Sharpness of the ratio when the modalities agree.
    mode
        ``"irm"`` (the formula in the module docstring) or ``"uniform"``.

    Returns
    -------
    torch.Tensor
        (N, 3) float32 weights.

    Examples
    --------
    >>> import torch
    >>> p = torch.full((1, 4), 0.25)
    >>> irm_weights(p, p, p, cloud_frac=torch.zeros(1), sar_avail=torch.zeros(1),
    ...             mode="uniform")[0].tolist()
    [0.5, 0.5, 0.0]
    """
    a = sar_avail.float().clamp(0, 1)
    if mode == "uniform":
        w = torch.stack([torch.ones_like(a), torch.ones_like(a), a], dim=1)
        return w / w.sum(dim=1, keepdim=True)
    if mode != "irm":
        raise ValueError(f"mode must be 'irm' or 'uniform', not {mode!r}")
    v = (1.0 - cloud_frac.float()).clamp(0.0, 1.0)
    c_s, c_o, c_r = certainty(p_source), certainty(p_aux_opt), certainty(p_aux_sar)
    r_opt = v.pow(gamma) * 0.5 * (c_s + c_o)
    r_sar = a * c_r * (1.0 - r_opt)
    d = js_divergence(0.5 * (p_source + p_aux_opt), p_aux_sar) / math.log(2.0)
    k = k0 + beta * d.clamp(0.0, 1.0)
    num = (r_sar + _EPS).pow(k) * a
    # (v > 0): a patch with no visible ground gives optical no say at all, exactly.
    den = num + (r_opt + _EPS).pow(k) * (v > 0).float()
    m_sar = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(den))
    share_s = (c_s + _EPS) / (c_s + c_o + 2 * _EPS)
    w = torch.stack([(1 - m_sar) * share_s, (1 - m_sar) * (1 - share_s), m_sar], dim=1)
    return w / w.sum(dim=1, keepdim=True)


def sar_share(weights: torch.Tensor) -> torch.Tensor:
    """The SAR teacher's weight (N,): what the student's gate learns to reproduce."""
    return weights[:, 2]
