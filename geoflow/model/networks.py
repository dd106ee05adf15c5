"""The networks: compact residual encoders per modality, classifier heads and the fused student.

Plain torch layers only (no torchvision). Every network takes the same prepared inputs, built
by :func:`geoflow.model.networks.prepare_inputs` from raw reflectance, backscatter and cloud
mask, so that any stage (source, auxiliary optical, auxiliary SAR, student) can be run and
evaluated the same way:

- ``opt``: (N, 11, P, P) = 10 normalised S2 bands + 1 "not visible" mask channel
  (cloud, cloud shadow or no data);
- ``sar``: (N, 3, P, P) = normalised VV, VH (dB) + 1 availability channel;
- ``cloud_frac`` (N,) the not-visible fraction of each patch, ``sar_avail`` (N,) whether SAR
  exists for the patch at all.

Every forward returns a dict with ``probs`` (N, K) and ``sar_weight`` (N,), so callers never
need to know which stage they hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoflow.errors import ModelError

#: Names of the architectures :func:`build_network` knows.
ARCHITECTURES = ("optical", "sar", "student")
N_OPT_CHANNELS = 11  # 10 bands + not-visible mask
N_SAR_CHANNELS = 3  # VV, VH + availability
_CLAMP = 8.0  # normalised inputs beyond +-8 sigma carry no extra information, only risk


@dataclass(frozen=True)
class ArchSpec:
    """Architecture settings, recorded in every checkpoint.

    Parameters
    ----------
    name
        ``"optical"`` (f_S, f_Opt), ``"sar"`` (f_SAR) or ``"student"`` (fused f_T).
    n_classes
        Number of output classes.
    width
        Channels of the first stage; stages double it (width, 2*width, 4*width).
    depth
        Residual blocks per stage.
    patch_size
        Side of the input patch in pixels (a multiple of 8).

    Examples
    --------
    >>> ArchSpec("student", n_classes=10).to_dict()["width"]
    16
    """

    name: str
    n_classes: int
    width: int = 16
    depth: int = 1
    patch_size: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        return cls(**{k: d[k] for k in ("name", "n_classes", "width", "depth", "patch_size")})

    def validate(self) -> None:
        if self.name not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {self.name!r}",
                             hint=f"use one of {', '.join(ARCHITECTURES)}")
        if self.patch_size < 8 or self.patch_size % 8:
            raise ModelError(f"patch size {self.patch_size} is not a multiple of 8 (>= 8)",
                             hint="use a patch size such as 16, 32 or 64")
        if self.width < 4 or self.depth < 1 or self.n_classes < 2:
            raise ModelError(f"invalid architecture size: {self.to_dict()}",
                             hint="width >= 4, depth >= 1, n_classes >= 2")


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class Encoder(nn.Module):
    """Compact residual encoder: strided stem, three stages, global average pooling.

    The stem halves the patch (32 -> 16 px) because 10 m pixels of a 32 px scene patch carry
    texture more than fine detail, and CPU inference must stay cheap.
    """

    def __init__(self, c_in: int, width: int, depth: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c_in, width, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        c = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(depth):
                blocks.append(_ResBlock(c, c_out, 2 if (i == 0 and stage > 0) else 1))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


class OpticalNet(nn.Module):
    """Optical classifier (f_S and f_Opt): optical encoder + linear head; SAR weight 0."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.enc = Encoder(N_OPT_CHANNELS, spec.width, spec.depth)
        self.head = nn.Linear(self.enc.out_dim, spec.n_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.head(self.enc(batch["opt"]))
        n = logits.shape[0]
        return {"logits": logits, "probs": logits.float().softmax(-1),
                "sar_weight": logits.new_zeros(n, dtype=torch.float32)}


class SarNet(nn.Module):
    """SAR classifier (f_SAR). Without SAR for a sample it answers uniform probabilities."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.enc = Encoder(N_SAR_CHANNELS, spec.width, spec.depth)
        self.head = nn.Linear(self.enc.out_dim, spec.n_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.head(self.enc(batch["sar"]))
        avail = batch["sar_avail"].to(logits.dtype)[:, None]
        logits = logits * avail  # no SAR -> zero logits -> uniform probs, never a guess
        return {"logits": logits, "probs": logits.float().softmax(-1),
                "sar_weight": batch["sar_avail"].float()}


class StudentNet(nn.Module):
    """Fused optical + SAR student f_T with a learned modality gate.

    Two branches (optical, SAR) each give class probabilities; a gate reads both feature
    vectors plus the patch's cloud fraction and SAR availability and outputs the SAR weight
    ``g`` in [0, 1]. The prediction is the mixture ``(1 - g) p_opt + g p_sar``. A mixture (not a
    concatenation) lets the student lean on SAR *fully* (g -> 1) when the optical patch is
    gone, which a shared head did not manage in the trial described in FACTS.md. Without SAR the
    gate is forced to 0, so missing SAR can never pull the answer.
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.enc_opt = Encoder(N_OPT_CHANNELS, spec.width, spec.depth)
        self.enc_sar = Encoder(N_SAR_CHANNELS, spec.width, spec.depth)
        self.head_opt = nn.Linear(self.enc_opt.out_dim, spec.n_classes)
        self.head_sar = nn.Linear(self.enc_sar.out_dim, spec.n_classes)
        d = self.enc_opt.out_dim + self.enc_sar.out_dim + 2 + 2 * spec.n_classes
        self.gate = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fo = self.enc_opt(batch["opt"])
        fs = self.enc_sar(batch["sar"])
        lo = self.head_opt(fo)
        ls = self.head_sar(fs)
        avail = batch["sar_avail"].float()
        cf = batch["cloud_frac"].float()
        p_opt = lo.float().softmax(-1)
        p_sar = ls.float().softmax(-1)
        # The gate also sees both branches' answers (detached: they are trained by their own
        # losses), so it can notice when the modalities disagree, as the IRM does.
        z = torch.cat([fo.float(), fs.float(), cf[:, None], avail[:, None],
                       p_opt.detach(), p_sar.detach()], dim=1)
        gate_logit = self.gate(z.to(fo.dtype)).float().squeeze(1)
        g = torch.sigmoid(gate_logit) * avail
        probs = (1.0 - g)[:, None] * p_opt + g[:, None] * p_sar
        return {"probs": probs, "sar_weight": g, "gate_logit": gate_logit,
                "logits_opt": lo.float(), "logits_sar": ls.float(),
                "p_opt": p_opt, "p_sar": p_sar}


def build_network(spec: ArchSpec) -> nn.Module:
    """Build the network an :class:`ArchSpec` describes (weights freshly initialised).

    Examples
    --------
    >>> net = build_network(ArchSpec("sar", n_classes=10, width=8))
    >>> sum(p.numel() for p in net.parameters()) > 0
    True
    """
    spec.validate()
    cls = {"optical": OpticalNet, "sar": SarNet, "student": StudentNet}[spec.name]
    return cls(spec)


def default_norm(n_bands: int = 10, n_pol: int = 2) -> dict[str, list[float]]:
    """Normalisation statistics to use before any have been measured (untrained checkpoints)."""
    return {"s2_mean": [0.1] * n_bands, "s2_std": [0.1] * n_bands,
            "s1_mean": [-12.0, -19.0][:n_pol], "s1_std": [4.0, 4.0][:n_pol]}


def prepare_inputs(s2: np.ndarray | torch.Tensor, s1: np.ndarray | torch.Tensor,
                   cloud: np.ndarray | torch.Tensor, norm: dict[str, list[float]],
                   device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Turn raw patches into the tensors every network takes, with NaN made harmless.

    Parameters
    ----------
    s2
        (N, B, P, P) surface reflectance; NaN marks missing pixels.
    s1
        (N, 2, P, P) backscatter in dB; NaN marks missing pixels (all NaN: no SAR).
    cloud
        (N, P, P) 1 cloud/shadow, 0 clear, NaN no data.
    norm
        ``s2_mean``, ``s2_std``, ``s1_mean``, ``s1_std`` lists.
    device
        Where the tensors go.

    Returns
    -------
    dict
        ``opt`` (N, B+1, P, P), ``sar`` (N, 3, P, P), ``cloud_frac`` (N,), ``sar_avail`` (N,).

    Examples
    --------
    >>> import numpy as np
    >>> b = prepare_inputs(np.full((1, 10, 8, 8), np.nan, "f4"), np.zeros((1, 2, 8, 8), "f4"),
    ...                    np.zeros((1, 8, 8), "f4"), default_norm())
    >>> float(b["cloud_frac"][0]), bool(b["opt"].isfinite().all())
    (1.0, True)
    """
    s2t = torch.as_tensor(s2, dtype=torch.float32, device=device)
    s1t = torch.as_tensor(s1, dtype=torch.float32, device=device)
    ct = torch.as_tensor(cloud, dtype=torch.float32, device=device)
    m2 = torch.tensor(norm["s2_mean"], dtype=torch.float32, device=device)[None, :, None, None]
    d2 = torch.tensor(norm["s2_std"], dtype=torch.float32, device=device)[None, :, None, None]
    m1 = torch.tensor(norm["s1_mean"], dtype=torch.float32, device=device)[None, :, None, None]
    d1 = torch.tensor(norm["s1_std"], dtype=torch.float32, device=device)[None, :, None, None]

    # A pixel is "not visible" if it is cloudy, has no cloud information, or any band is missing:
    # all three mean the optical value cannot be trusted for the ground.
    opt_valid = torch.isfinite(s2t).all(dim=1)
    not_visible = ~opt_valid | ~torch.isfinite(ct) | (ct > 0.5)
    x2 = torch.nan_to_num((s2t - m2) / d2, nan=0.0, posinf=0.0, neginf=0.0)
    x2 = x2.clamp(-_CLAMP, _CLAMP) * opt_valid[:, None]
    opt = torch.cat([x2, not_visible[:, None].float()], dim=1)

    sar_valid = torch.isfinite(s1t).all(dim=1)
    x1 = torch.nan_to_num((s1t - m1) / d1, nan=0.0, posinf=0.0, neginf=0.0)
    x1 = x1.clamp(-_CLAMP, _CLAMP) * sar_valid[:, None]
    sar = torch.cat([x1, sar_valid[:, None].float()], dim=1)
    return {"opt": opt, "sar": sar,
            "cloud_frac": not_visible.float().mean(dim=(1, 2)),
            "sar_avail": sar_valid.any(dim=2).any(dim=1).float()}


def count_parameters(net: nn.Module) -> int:
    """Number of parameters of a network."""
    return int(sum(p.numel() for p in net.parameters()))
