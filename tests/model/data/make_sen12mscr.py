"""Write a tiny dataset in the SEN12MS-CR layout (real GeoTIFFs, made-up pixels) into a folder.

Layout, as the dataset's ``dl_data.sh`` extracts it (github.com/PatrickTUM/SEN12MS-CR-TS)::

    ROOT/ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p407.tif         2 x float32 dB (VV, VH)
    ROOT/ROIs1158_spring_s2/s2_1/ROIs1158_spring_s2_1_p407.tif         13 x uint16 L1C DN
    ROOT/ROIs1158_spring_s2_cloudy/s2_cloudy_1/ROIs1158_spring_s2_cloudy_1_p407.tif

Usage: ``python make_sen12mscr.py OUT_DIR`` or ``make(out_dir)`` from a test. The cloudy
patch is the clear one plus a known bright block (cloud) and a known dark block (shadow);
``make`` returns those truth masks per patch id.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

# Top-of-atmosphere-like reflectance per band B01..B12 (13 bands incl. B10) for two surfaces.
_VEG = [0.12, 0.09, 0.08, 0.05, 0.10, 0.25, 0.30, 0.33, 0.34, 0.12, 0.01, 0.20, 0.10]
_WATER = [0.11, 0.08, 0.06, 0.04, 0.03, 0.02, 0.02, 0.02, 0.02, 0.01, 0.005, 0.01, 0.01]
SEASONS = ("ROIs1158_spring", "ROIs2017_winter")


def _write(path: Path, data: np.ndarray, transform, nodata=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs="EPSG:32633",
                       transform=transform, nodata=nodata) as dst:
        dst.write(data)


def make(root: str | Path, *, size: int = 32, scenes: int = 2, patches: int = 2,
         seed: int = 0, without_s1: tuple[str, ...] = (),
         without_cloudy: tuple[str, ...] = ()) -> dict[str, dict[str, np.ndarray]]:
    """Write the dataset; return ``{patch id: {"cloud": bool (H, W), "s2_clear_dn": ...}}``.

    ``without_s1`` / ``without_cloudy`` name patch ids whose S1 / cloudy file is left out.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    truth: dict[str, dict[str, np.ndarray]] = {}
    for season in SEASONS:
        for scene in range(1, scenes + 1):
            for k in range(patches):
                patch = 100 + k * 7
                pid = f"{season}_{scene}_p{patch}"
                water = np.zeros((size, size), bool)
                water[:, : size // 3] = True
                refl = np.where(water[None], np.array(_WATER)[:, None, None],
                                np.array(_VEG)[:, None, None])
                refl = refl * rng.uniform(0.95, 1.05, refl.shape)
                clear = np.round(refl * 10000).astype(np.uint16)
                # A cloud block (bright in every band) and a shadow block (dark) on the cloudy date.
                cloud = np.zeros((size, size), bool)
                cloud[size // 2:, size // 2:] = True
                shadow = np.zeros((size, size), bool)
                shadow[: size // 4, size // 2:] = True
                cloudy_refl = refl + 0.01 * rng.standard_normal(refl.shape)
                cloudy_refl = np.where(cloud[None], cloudy_refl + 0.45, cloudy_refl)
                cloudy_refl = np.where(shadow[None], cloudy_refl * 0.35, cloudy_refl)
                cloudy = np.round(np.clip(cloudy_refl, 0.0001, 1.5) * 10000).astype(np.uint16)
                vv = np.where(water, -20.0, -9.0) + rng.normal(0, 0.5, (size, size))
                vh = np.where(water, -28.0, -16.0) + rng.normal(0, 0.5, (size, size))
                s1 = np.stack([vv, vh]).astype(np.float32)
                x0 = 400_000 + 10_000 * scene + size * 10 * k
                transform = Affine(10, 0, x0, 0, -10, 5_000_000)
                _write(root / f"{season}_s2" / f"s2_{scene}" / f"{season}_s2_{scene}_p{patch}.tif",
                       clear, transform)
                if pid not in without_cloudy:
                    _write(root / f"{season}_s2_cloudy" / f"s2_cloudy_{scene}"
                           / f"{season}_s2_cloudy_{scene}_p{patch}.tif", cloudy, transform)
                if pid not in without_s1:
                    _write(root / f"{season}_s1" / f"s1_{scene}"
                           / f"{season}_s1_{scene}_p{patch}.tif", s1, transform)
                truth[pid] = {"cloud": cloud | shadow, "s2_clear_dn": clear,
                              "s2_cloudy_dn": cloudy, "s1": s1}
    return truth


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python make_sen12mscr.py OUT_DIR")
    print(f"wrote {len(make(sys.argv[1]))} SEN12MS-CR triplets into {sys.argv[1]}")
