"""BigEarthNet patches in memory (:class:`BenPatches`, geoflow's conventions), the cloud and
snow pixels estimated for flagged patches, and the windows evaluation and fine-tuning cut.
"""


from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoflow.errors import ModelError
from geoflow.model.bigearthnet.labels import _check_labels

#: Patch side of BigEarthNet patches at 10 m.
PATCH_PX = 120


# --------------------------------------------------------------------------- patches


@dataclass
class BenPatches:
    """BigEarthNet patches in memory, in geoflow's conventions.

    Attributes
    ----------
    s2
        float32 (N, 10, 120, 120) reflectance in geoflow's band order, NaN no data.
    s1
        float32 (N, 2, 120, 120) backscatter in dB, VV then VH (all NaN: no SAR).
    cloud
        float32 (N, 120, 120): 1 where the patch's optical view is not usable (cloud, shadow,
        and snow when geoflow counts snow as cloud), 0 clear.
    snow
        float32 (N, 120, 120): 1 estimated snow, 0 not.
    labels
        The CORINE labels of each patch (v1 or reBEN names).
    ids
        S2 patch names.
    groups
        The S2 acquisition (product and tile) each patch comes from: split by it to keep areas
        apart.
    cloudy, snowy
        bool (N,): the dataset's own per-patch flags.
    source
        Which layout each patch came from (``v1-folders``, ``v1-lmdb``, ``reben``).
    conditions_known
        False when v1 patches were read without BigEarthNet's cloud/snow lists: ``cloudy`` and
        ``snowy`` are then all False because nothing is known, not because the patches are
        clear.
    """

    s2: np.ndarray
    s1: np.ndarray
    cloud: np.ndarray
    snow: np.ndarray
    labels: list[tuple[str, ...]]
    ids: list[str]
    groups: list[str]
    cloudy: np.ndarray
    snowy: np.ndarray
    source: list[str] = field(default_factory=list)
    conditions_known: bool = True

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> BenPatches:
        """The patches at ``index`` (a new object).

        Examples
        --------
        >>> p.subset([0, 2]).ids  # doctest: +SKIP
        """
        ix = np.asarray(index, int)
        return BenPatches(self.s2[ix], self.s1[ix], self.cloud[ix], self.snow[ix],
                          [self.labels[i] for i in ix], [self.ids[i] for i in ix],
                          [self.groups[i] for i in ix], self.cloudy[ix], self.snowy[ix],
                          [self.source[i] for i in ix], self.conditions_known)

    @staticmethod
    def concat(parts: Sequence[BenPatches]) -> BenPatches:
        """One set from several (in order)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ModelError("no BigEarthNet patches to join", hint="check the dataset paths")
        return BenPatches(
            np.concatenate([p.s2 for p in parts]), np.concatenate([p.s1 for p in parts]),
            np.concatenate([p.cloud for p in parts]), np.concatenate([p.snow for p in parts]),
            [x for p in parts for x in p.labels], [x for p in parts for x in p.ids],
            [x for p in parts for x in p.groups], np.concatenate([p.cloudy for p in parts]),
            np.concatenate([p.snowy for p in parts]), [x for p in parts for x in p.source],
            all(p.conditions_known for p in parts))

    def condition(self) -> np.ndarray:
        """Per patch ``"snowy"``, ``"cloudy"`` or ``"clear"`` (snow first: it is the rarer flag)."""
        return np.where(self.snowy, "snowy", np.where(self.cloudy, "cloudy", "clear"))


def estimate_masks(s2: np.ndarray, *, cloudy: bool, snowy: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Estimate per-pixel cloud (+ shadow) and snow in a patch the dataset flags as cloudy/snowy.

    BigEarthNet has no pixel masks, and a patch of the cloud list may hold one small cloud. The
    tests stand in for Sen2Cor's SCL: snow where NDSI = (B03 - B11) / (B03 + B11) > 0.4 and
    B08 > 0.11 (the NDSI snow test of Sen2Cor and MODIS, Dozier 1989); cloud where the visible
    mean exceeds 0.12 reflectance and the pixel is not snow; shadow where NIR and SWIR are both
    dark (B08 < 0.08, B11 < 0.06) but the pixel is not open water (NDWI <= 0). Unflagged patches
    get no mask at all (the flags come from visual screening).

    Parameters
    ----------
    s2
        (10, H, W) reflectance in geoflow's band order.
    cloudy, snowy
        The dataset's flags for the patch.

    Returns
    -------
    (cloud, snow)
        float32 (H, W) each, 1 or 0.

    Examples
    --------
    >>> import numpy as np
    >>> s2 = np.full((10, 2, 2), 0.05, np.float32); s2[6:] = 0.3   # vegetation: bright NIR
    >>> s2[:, 0, 0] = 0.4                                              # one cloudy pixel
    >>> c, s = estimate_masks(s2, cloudy=True, snowy=False)
    >>> c.tolist(), float(s.sum())
    ([[1.0, 0.0], [0.0, 0.0]], 0.0)
    """
    from geoflow.sentinel import S2_BANDS

    shape = s2.shape[1:]
    snow = np.zeros(shape, bool)
    cloud = np.zeros(shape, bool)
    if not (cloudy or snowy):  # most patches: nothing to test
        return cloud.astype(np.float32), snow.astype(np.float32)
    b = {name: s2[i].astype(np.float64) for i, name in enumerate(S2_BANDS)}
    with np.errstate(invalid="ignore", divide="ignore"):
        if snowy:
            ndsi = (b["B03"] - b["B11"]) / (b["B03"] + b["B11"])
            snow = (ndsi > 0.4) & (b["B08"] > 0.11)
        if cloudy:
            vis = (b["B02"] + b["B03"] + b["B04"]) / 3
            ndwi = (b["B03"] - b["B08"]) / (b["B03"] + b["B08"])
            cloud = ((vis > 0.12) & ~snow) | ((b["B08"] < 0.08) & (b["B11"] < 0.06)
                                              & ~(ndwi > 0))
    return cloud.astype(np.float32), snow.astype(np.float32)


def _upsample(band: np.ndarray, size: int = PATCH_PX) -> np.ndarray:
    """Nearest-neighbour onto the 10 m grid (20 m: 60 -> 120 px, 60 m: 20 -> 120 px)."""
    h, w = band.shape
    if (h, w) == (size, size):
        return band
    if size % h or size % w:
        raise ModelError(f"a {h}x{w} px band does not divide a {size} px patch",
                         hint="BigEarthNet bands are 120, 60 or 20 px")
    return np.repeat(np.repeat(band, size // h, axis=0), size // w, axis=1)


def _s2_from_bands(bands: dict[str, np.ndarray], what: str) -> np.ndarray:
    """(10, 120, 120) float32 reflectance from BigEarthNet's uint16 DN per band name."""
    from geoflow.sentinel import S2_BANDS

    missing = [b for b in S2_BANDS if b not in bands]
    if missing:
        raise ModelError(f"{what} has no band(s) {', '.join(missing)}",
                         hint="BigEarthNet S2 patches carry B01-B12 and B8A")
    out = np.empty((len(S2_BANDS), PATCH_PX, PATCH_PX), np.float32)
    for i, name in enumerate(S2_BANDS):
        dn = _upsample(np.asarray(bands[name]))
        refl = dn.astype(np.float32) / 10000.0
        refl[dn == 0] = np.nan  # DN 0 is no data in Sentinel-2 products
        out[i] = refl
    return out


def _s1_from_bands(bands: dict[str, np.ndarray] | None, what: str = "S1 patch") -> np.ndarray:
    """(2, 120, 120) float32 sigma0 dB, VV then VH (all NaN when the patch has no S1)."""
    if bands is None:
        return np.full((2, PATCH_PX, PATCH_PX), np.nan, np.float32)
    missing = [b for b in ("VV", "VH") if b not in bands]
    if missing:
        raise ModelError(f"{what} has no {' or '.join(missing)} band",
                         hint="BigEarthNet S1 patches carry both VV and VH (dB); leave a "
                              "patch's S1 out entirely to use it optical-only")
    out = np.empty((2, PATCH_PX, PATCH_PX), np.float32)
    for i, pol in enumerate(("VV", "VH")):
        band = np.asarray(bands[pol])
        if band.shape != (PATCH_PX, PATCH_PX):
            raise ModelError(f"{what}'s {pol} band is {'x'.join(map(str, band.shape))} px, "
                             f"not {PATCH_PX}x{PATCH_PX}",
                             hint="BigEarthNet S1 bands are 120 x 120 px at 10 m")
        out[i] = band
    out[~np.isfinite(out)] = np.nan
    return out


def _group_of(name: str) -> str:
    """The acquisition a patch belongs to, as satellite and date: v1
    ``S2A_MSIL2A_20170613T101031_37_88`` and reBEN
    ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_37_88`` are both ``S2A_20170613`` (v1
    names carry no tile, and their times drop leading zeros)."""
    m = re.match(r"(S2[AB])_MSIL2A_(\d{8})T", name)
    return f"{m.group(1)}_{m.group(2)}" if m else re.sub(r"_\d+_\d+$", "", name)


def _assemble(records: list[dict[str, Any]], snow_as_cloud: bool,
              conditions_known: bool = True) -> BenPatches:
    if not records:
        return BenPatches(np.empty((0, 10, PATCH_PX, PATCH_PX), np.float32),
                          np.empty((0, 2, PATCH_PX, PATCH_PX), np.float32),
                          np.empty((0, PATCH_PX, PATCH_PX), np.float32),
                          np.empty((0, PATCH_PX, PATCH_PX), np.float32),
                          [], [], [], np.zeros(0, bool), np.zeros(0, bool), [])
    clouds, snows = [], []
    for r in records:
        cloud, snow = estimate_masks(r["s2"], cloudy=r["cloudy"], snowy=r["snowy"])
        if snow_as_cloud:  # as the cube's SCL mask hides snow (geoflow.sentinel.HIDDEN_SCL)
            cloud = np.maximum(cloud, snow)
        clouds.append(cloud)
        snows.append(snow)
    return BenPatches(
        s2=np.stack([r["s2"] for r in records]), s1=np.stack([r["s1"] for r in records]),
        cloud=np.stack(clouds), snow=np.stack(snows),
        labels=[tuple(_check_labels(r["labels"])) for r in records],
        ids=[r["id"] for r in records], groups=[_group_of(r["id"]) for r in records],
        cloudy=np.array([r["cloudy"] for r in records], bool),
        snowy=np.array([r["snowy"] for r in records], bool),
        source=[r["source"] for r in records], conditions_known=conditions_known)


# --------------------------------------------------------------------------- windows


def window_origins(size: int, patch: int = PATCH_PX) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping ``size`` px windows of a patch, centred.

    Examples
    --------
    >>> window_origins(32)[:2]
    [(12, 12), (12, 44)]
    """
    n = patch // size
    if n < 1:
        raise ModelError(f"window size {size} is larger than the {patch} px patch",
                         hint=f"use a model with patch_size <= {patch}")
    off = (patch - n * size) // 2
    return [(off + r * size, off + c * size) for r in range(n) for c in range(n)]


def cut_windows(patches: Any, size: int) -> dict[str, np.ndarray]:
    """Cut every patch into its centred ``size`` px windows (3 x 3 for 32 px of 120).

    ``patches`` is anything with ``s2`` (N, 10, H, H), ``s1`` (N, 2, H, H) and ``cloud``
    (N, H, H) arrays (and ``snow``, if it has one): :class:`BenPatches` or fine-tuning's
    ``LabelledPatches``. The real-patch evaluation and fine-tuning's fit rates both cut here.

    Returns
    -------
    dict
        ``s2`` (M, 10, size, size), ``s1`` (M, 2, size, size), ``cloud`` (and ``snow``)
        (M, size, size) and ``patch`` (M,) int: the patch each window comes from.

    Examples
    --------
    >>> w = cut_windows(patches, 32)  # doctest: +SKIP
    >>> w["s2"].shape[0] == 9 * len(patches)  # doctest: +SKIP
    True
    """
    origins = window_origins(size, int(patches.s2.shape[-1]))
    keys = ["s2", "s1", "cloud"] + (["snow"] if getattr(patches, "snow", None) is not None
                                    else [])
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for r, c in origins:
        for k in keys:
            out[k].append(getattr(patches, k)[..., r:r + size, c:c + size])
    # window-major stacking -> patch-major order (patch 0's windows first)
    res = {k: np.stack(v, axis=1).reshape(-1, *v[0].shape[1:]).astype(np.float32)
           for k, v in out.items()}
    res["patch"] = np.repeat(np.arange(len(patches.s2)), len(origins))
    return res
