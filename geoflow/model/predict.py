"""Load a checkpoint and classify patches: :func:`load` -> :class:`LoadedModel`.

Examples
--------
>>> import numpy as np
>>> import geoflow.model
>>> model = geoflow.model.load()                       # the shipped demo weights
>>> p = model.patch_size
>>> s2 = np.full((2, 10, p, p), 0.1, "float32")
>>> s1 = np.full((2, 2, p, p), np.nan, "float32")      # no SAR for these dates
>>> pred = model.predict(s2, s1, np.zeros((2, p, p), "float32"))
>>> pred.probs.shape, float(pred.sar_weight.max())
((2, 10), 0.0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoflow.errors import ModelError
from geoflow.model import DEFAULT_CHECKPOINT
from geoflow.model.checkpoint import (
    Checkpoint,
    no_train_checkpoint,
    read_checkpoint,
    train_dir_checkpoint,
)
from geoflow.model.networks import prepare_inputs


@dataclass
class Prediction:
    """Model output for N patches.

    Attributes
    ----------
    probs
        (N, K) float32 class probabilities (rows sum to 1, never NaN).
    sar_weight
        (N,) float32 in [0, 1]: how much the answer leans on SAR (0 without SAR).
    """

    probs: np.ndarray
    sar_weight: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """(N,) uint8 most probable class."""
        return self.probs.argmax(axis=1).astype(np.uint8)

    @property
    def confidence(self) -> np.ndarray:
        """(N,) float32 probability of the most probable class."""
        return self.probs.max(axis=1).astype(np.float32)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is usable, else ``cpu``; other names are checked.

    Examples
    --------
    >>> resolve_device("cpu").type
    'cpu'
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}", hint="use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but no CUDA GPU is usable here",
                         hint="use device='auto' or 'cpu'")
    return dev


class LoadedModel:
    """A verified checkpoint ready to classify patches on one device.

    Use :func:`load` to make one. Attributes: ``meta`` (the checkpoint metadata), ``patch_size``,
    ``classes``, ``colors``, ``version``, ``checksum``, ``device``, ``stage``.
    """

    def __init__(self, ckpt: Checkpoint, device: torch.device) -> None:
        self.meta: dict[str, Any] = ckpt.meta
        self.path = ckpt.path
        self.device = device
        self.network = ckpt.network.to(device).eval()
        self.patch_size: int = int(ckpt.meta["patch_size"])
        self.classes: tuple[str, ...] = tuple(ckpt.meta["classes"])
        self.colors: tuple[str, ...] = tuple(ckpt.meta["colors"])
        self.version: str = str(ckpt.meta["version"])
        self.checksum: str = str(ckpt.meta["checksum"])
        self.stage: str = str(ckpt.meta.get("stage", "unknown"))
        self._n_bands = len(ckpt.meta["bands"])
        self._n_pol = len(ckpt.meta["sar_bands"])

    def __repr__(self) -> str:
        return (f"LoadedModel(version={self.version!r}, stage={self.stage!r}, "
                f"patch_size={self.patch_size}, device={self.device})")

    def _check(self, s2: np.ndarray, s1: np.ndarray, cloud: np.ndarray) -> None:
        p = self.patch_size
        want = {"s2": (self._n_bands, p, p), "s1": (self._n_pol, p, p), "cloud": (p, p)}
        n = None
        for name, arr in (("s2", s2), ("s1", s1), ("cloud", cloud)):
            shape = tuple(np.shape(arr))
            if shape[1:] != want[name]:
                raise ModelError(f"{name} patches have shape {shape}, expected (N, "
                                 f"{', '.join(map(str, want[name]))})",
                                 hint=f"cut {p}x{p} px patches with bands in the checkpoint's "
                                 "order (model.meta['bands'], model.meta['sar_bands'])")
            if n is not None and shape[0] != n:
                raise ModelError(f"s2, s1 and cloud hold different numbers of patches "
                                 f"({np.shape(s2)[0]}, {np.shape(s1)[0]}, {np.shape(cloud)[0]})",
                                 hint="pass the same N patches for every input")
            n = shape[0]

    def predict(self, s2: np.ndarray, s1: np.ndarray, cloud: np.ndarray,
                batch_size: int = 256) -> Prediction:
        """Classify N patches.

        Parameters
        ----------
        s2
            (N, 10, P, P) float32 surface reflectance; NaN = missing pixel.
        s1
            (N, 2, P, P) float32 backscatter in dB; an all-NaN patch means no SAR.
        cloud
            (N, P, P) float32: 1 cloud, shadow or snow, 0 clear, NaN no data.
        batch_size
            Patches per forward pass.

        Returns
        -------
        Prediction
            ``probs`` (N, K) and ``sar_weight`` (N,), float32, never NaN.

        Examples
        --------
        See the module docstring.
        """
        self._check(s2, s1, cloud)
        n = int(np.shape(s2)[0])
        k = len(self.classes)
        probs = np.empty((n, k), np.float32)
        sar_w = np.empty(n, np.float32)
        if n == 0:
            return Prediction(probs, sar_w)
        bs = max(1, int(batch_size))
        cuda = self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        with torch.inference_mode():
            for i in range(0, n, bs):
                batch = prepare_inputs(s2[i:i + bs], s1[i:i + bs], cloud[i:i + bs],
                                       self.meta["norm"], device=self.device)
                with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=cuda):
                    out = self.network(batch)
                p = torch.nan_to_num(out["probs"].float(), nan=0.0).clamp_min(0.0)
                total = p.sum(dim=1, keepdim=True)
                # A row that lost all mass (never expected, but NaN must not leak) -> uniform.
                p = torch.where(total > 0, p / total.clamp_min(1e-12), torch.full_like(p, 1.0 / k))
                w = torch.nan_to_num(out["sar_weight"].float(), nan=0.0).clamp(0.0, 1.0)
                probs[i:i + bs] = p.cpu().numpy()
                sar_w[i:i + bs] = w.cpu().numpy()
        return Prediction(probs, sar_w)


def load(path: str | os.PathLike[str] | None = None, device: str | torch.device = "auto", *,
         bands: tuple[str, ...] | None = None, patch_size: int | None = None) -> LoadedModel:
    """Load a checkpoint (default: the shipped demo weights) without executing code from it.

    Parameters
    ----------
    path
        ``NAME.safetensors`` (or ``NAME.json``, or ``NAME``), or a directory written by
        ``geoflow train`` (its ``student_irm`` checkpoint). ``None``: :data:`DEFAULT_CHECKPOINT`.
    device
        ``"auto"`` (CUDA with mixed precision if available, else CPU), ``"cpu"`` or ``"cuda"``.
    bands
        S2 band order the caller will supply (default geoflow's ten bands).
    patch_size
        Patch size the caller will cut (default: whatever the checkpoint uses).

    Returns
    -------
    LoadedModel

    Raises
    ------
    CheckpointError
        Missing, truncated, tampered or incompatible checkpoint.

    Examples
    --------
    >>> import geoflow.model
    >>> geoflow.model.load(device="cpu").patch_size
    32
    """
    p = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if p.is_dir():
        found = train_dir_checkpoint(p)
        if found is None:
            raise no_train_checkpoint(p, hint="pass a NAME.safetensors file, or a directory "
                                              "written by `geoflow train --out DIR` after it "
                                              "finished")
        p = found
    ckpt = read_checkpoint(p, bands=bands, patch_size=patch_size)
    return LoadedModel(ckpt, resolve_device(device))
