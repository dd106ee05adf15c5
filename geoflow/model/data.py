"""Training and evaluation patches cut from the synthetic Sentinel world.

Two domains, as in the seed method:

- **source**: labelled, cloud-free optical patches (one area, one set of dates);
- **target**: cloudy optical + SAR pairs from *another* area (labels kept only for
  evaluation), cloud cover per cloud cell drawn from 0 to 100 % (with extra mass at exactly 0
  and 100 %), clouds made by the same simulator as the sample archive's scenes, and the cloud
  mask derived from the simulated SCL exactly as the cube derives it (SCL in
  :data:`geoflow.sentinel.HIDDEN_SCL`: cloud, shadow, cirrus and snow).

Dates cover the whole year (two thirds in the growing season, a third anywhere): fields
green up, ripen and lie bare, broadleaf forest loses its leaves, winter dates can be snowy
(snow is not land cover: a snowy patch keeps the label of the ground under it; in the target
domain its SCL says 11 and the mask hides it, so the IRM leans on SAR as under cloud). The
source domain's mask stays empty: it is the labelled, cloud-free optical domain, and its
snowy patches teach the optical models what a snowy field or forest looks like when no SCL
says so (BigEarthNet and other archives ship none).

Train, validation and test areas come from different world seeds (see :func:`split_seed`).
The 20 m bands are degraded like the archive's (2x2 mean, then back to 10 m), so a model sees
the same texture at training and at map time. A patch's label is its majority class; patches
whose majority covers less than ``min_purity`` are skipped.

Examples
--------
>>> ds = make_patches(seed=7, domain="target", n=16, patch_size=32)
>>> ds.s2.shape, ds.s1.shape, ds.cloud.shape, ds.label.shape
((16, 10, 32, 32), (16, 2, 32, 32), (16, 32, 32), (16,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoflow.errors import ModelError
from geoflow.sentinel import HIDDEN_SCL, S2_10M, S2_BANDS
from geoflow.synthetic import clouds as clouds_mod
from geoflow.synthetic import world

#: Cloud-cover bins used by evaluation, as (name, low, high) on the patch's cloud fraction.
CLOUD_BINS = (("0-10", 0.0, 0.1), ("10-30", 0.1, 0.3), ("30-60", 0.3, 0.6),
              ("60-90", 0.6, 0.9), ("90-100", 0.9, 1.01))  # fractions never exceed 1
# The conventions come from the bottom of the house, not copies: indices of the 20 m bands in
# S2_BANDS (B05 B06 B07 B8A B11 B12).
_S2_20M = tuple(i for i, band in enumerate(S2_BANDS) if band not in S2_10M)
_SEED_OFFSETS = {"source": 1_000_003, "target": 2_000_003, "val": 3_000_017}


def split_seed(seed: int, split: str) -> int:
    """World seed of a training split, kept far from small user seeds such as 123 (test).

    Examples
    --------
    >>> split_seed(0, "source") != split_seed(0, "target")
    True
    """
    return int(seed) + _SEED_OFFSETS[split]


@dataclass
class PatchSet:
    """Patches of one domain (arrays stored as float16 to halve memory; labels int64).

    Attributes
    ----------
    s2
        (N, 10, P, P) reflectance (float16, NaN never present in generated sets).
    s1
        (N, 2, P, P) dB (NaN where SAR is missing for that sample).
    cloud
        (N, P, P) 1 cloud/shadow, 0 clear.
    label
        (N,) class index (majority class).
    cloud_frac
        (N,) float32 fraction of cloudy pixels.
    """

    s2: np.ndarray
    s1: np.ndarray
    cloud: np.ndarray
    label: np.ndarray
    cloud_frac: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def summary(self) -> dict[str, object]:
        """Counts per class and per cloud bin, for checkpoint metadata."""
        k = int(self.label.max()) + 1 if len(self) else 0
        return {
            "n": len(self),
            "per_class": np.bincount(self.label, minlength=k).tolist(),
            "per_cloud_bin": {name: int(((self.cloud_frac >= lo) & (self.cloud_frac < hi)).sum())
                              for name, lo, hi in CLOUD_BINS},
            "sar_missing": int((~np.isfinite(self.s1[:, 0, 0, 0])).sum()),
        }


def _mimic_20m(refl: np.ndarray) -> np.ndarray:
    """2x2 mean of the 20 m bands, repeated back to 10 m, as the archive + cube do."""
    out = refl.copy()
    h, w = refl.shape[1] // 2 * 2, refl.shape[2] // 2 * 2
    for b in _S2_20M:
        x = refl[b, :h, :w]
        m = x.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        out[b, :h, :w] = np.repeat(np.repeat(m, 2, axis=0), 2, axis=1)
    return out


def _doy_draw(rng: np.random.Generator) -> int:
    # Two thirds in the growing season (most archives and most clear scenes), a third anywhere
    # in the year (winter, bare fields, snow).
    if rng.random() < 2 / 3:
        return int(rng.integers(100, 290))
    return int(rng.integers(1, 366))


def _cloud_cover_draw(rng: np.random.Generator) -> float:
    # Uniform on [-0.15, 1.05] clipped, squared to offset the shadows and haze fringes that the
    # SCL mask adds to the simulated cover: patch cloud fractions then spread over 0..1 with
    # clear and overcast patches well represented (the extreme evaluation bins).
    u = float(np.clip(rng.uniform(-0.15, 1.05), 0.0, 1.0))
    return u * u if u < 1.0 else 1.0


def make_patches(seed: int, domain: str, n: int, patch_size: int = 32, *,
                 min_purity: float = 0.6, sar_missing: float = 0.1,
                 cell: int = 4) -> PatchSet:
    """Generate ``n`` labelled patches of a domain from a synthetic area with this seed.

    Parameters
    ----------
    seed
        World seed (the area; use :func:`split_seed` for training splits).
    domain
        ``"source"`` (clear optical; SAR also generated) or ``"target"`` (cloudy optical + SAR).
    n
        Number of patches wanted.
    patch_size
        Patch side in 10 m pixels.
    min_purity
        Minimum fraction of the majority class in a patch.
    sar_missing
        Target domain: fraction of patches whose SAR is missing (all NaN).
    cell
        Clouds are simulated per cell of ``cell x cell`` patches with one cover draw each.

    Returns
    -------
    PatchSet

    Examples
    --------
    See the module docstring.
    """
    if domain not in ("source", "target"):
        raise ModelError(f"unknown domain {domain!r}", hint="use 'source' or 'target'")
    rng = np.random.default_rng([int(seed), 0 if domain == "source" else 1])
    p = int(patch_size)
    block = p * cell
    # ~3/4 of the patches are pure enough. The area is made as several tiles of at most 512 px,
    # each on its own date (more dates: more seasons, sea states and snow); at least about four
    # tiles, so that even a small set is not one date (a snowy January alone, say).
    want = int(np.ceil(np.sqrt(2.0 * n))) * p
    side = min(-(-want // (2 * block)), max(1, 512 // block)) * block
    side = max(side, -(-64 // block) * block)
    out_s2, out_s1, out_cl, out_lab = [], [], [], []
    got = 0
    tile = 0
    while got < n:
        lc = world.landcover(int(seed) * 1000 + tile, (side, side))
        tile += 1
        doy = _doy_draw(rng)
        snow = world.snow_cover(lc, rng, doy)
        refl = _mimic_20m(world.s2_reflectance(lc, rng, doy, snow=snow))
        sar = world.s1_backscatter_db(lc, rng, "ascending" if rng.random() < 0.5 else
                                      "descending", doy=doy, snow=snow)
        seen = world.to_20m(world.visible_snow(lc, snow))
        cloud = np.zeros((side, side), np.float32)
        if domain == "target":
            refl_c = np.empty_like(refl)
            for by in range(0, side, block):
                for bx in range(0, side, block):
                    cover = _cloud_cover_draw(rng)
                    sky = clouds_mod.simulate_clouds(rng, (block, block), cover)
                    win = (slice(None), slice(by, by + block), slice(bx, bx + block))
                    refl_c[win] = clouds_mod.apply_clouds(refl[win], sky)
                    # SCL is a 20 m product: classify at 20 m, back to 10 m like the cube.
                    scl20 = clouds_mod.scl(lc[win[1:]][::2, ::2], sky.to_20m(),
                                           seen[by // 2:(by + block) // 2,
                                                bx // 2:(bx + block) // 2])
                    cl10 = np.repeat(np.repeat(np.isin(scl20, HIDDEN_SCL), 2, 0), 2, 1)
                    cloud[win[1:]] = cl10
            refl = refl_c
        for py in range(0, side - p + 1, p):
            for px in range(0, side - p + 1, p):
                lab = lc[py:py + p, px:px + p]
                counts = np.bincount(lab.ravel(), minlength=256)
                major = int(counts.argmax())
                if counts[major] < min_purity * p * p or major == 255:
                    continue
                out_s2.append(refl[:, py:py + p, px:px + p])
                out_s1.append(sar[:, py:py + p, px:px + p])
                out_cl.append(cloud[py:py + p, px:px + p])
                out_lab.append(major)
        got = int(len(out_lab) / 1.25)  # a margin to pick classes evenly from
        if tile > 60:
            raise ModelError(f"could not cut {n} patches of purity >= {min_purity}",
                             hint="lower min_purity or n")
    # Class-balanced pick: weight ~ 1/sqrt(class count), so rare classes (roads, industry) are
    # seen more often without repeating patches.
    labs = np.asarray(out_lab)
    counts = np.bincount(labs, minlength=256).astype(np.float64)
    wts = 1.0 / np.sqrt(counts[labs])
    order = rng.choice(len(labs), size=n, replace=False, p=wts / wts.sum())
    s2 = np.stack(out_s2)[order].astype(np.float16)
    s1 = np.stack(out_s1)[order].astype(np.float16)
    cl = np.stack(out_cl)[order].astype(np.float16)
    lab = np.asarray(out_lab, np.int64)[order]
    if domain == "target" and sar_missing > 0:
        s1[rng.random(len(lab)) < sar_missing] = np.nan
    frac = cl.reshape(len(lab), -1).astype(np.float32).mean(axis=1)
    return PatchSet(s2=s2, s1=s1, cloud=cl, label=lab, cloud_frac=frac)


def norm_stats(source: PatchSet, target: PatchSet) -> dict[str, list[float]]:
    """Per-band mean/std: optical from the clear source domain, SAR from the target domain."""
    s2 = source.s2.astype(np.float32)
    s1 = target.s1.astype(np.float32)
    ok = np.isfinite(s1[:, 0, 0, 0])
    s1 = s1[ok] if ok.any() else np.full((1, 2, 1, 1), -15.0, np.float32)
    return {"s2_mean": s2.mean(axis=(0, 2, 3)).tolist(),
            "s2_std": (s2.std(axis=(0, 2, 3)) + 1e-4).tolist(),
            "s1_mean": s1.mean(axis=(0, 2, 3)).tolist(),
            "s1_std": (s1.std(axis=(0, 2, 3)) + 1e-3).tolist()}
