"""Write a tiny folder of GeoTIFF patches with a label CSV (the layout PatchFolderDataset reads).

Usage: ``python make_folder_csv.py OUT_DIR`` or ``make(out_dir)`` from a test, which returns
the CSV path and, per sample id, the values geoflow should read back (reflectance in geoflow's
band order, S1 in dB, cloud 0/1/NaN, label index).

Rows cover the variants the loader must handle:

- ``p_float``: 10 float32 reflectance bands in geoflow's order, S1 in dB, a 0/1 cloud mask,
  label by class name;
- ``p_l2a``: 12 uint16 DN bands (Level-2A, no B10), no S1, an SCL raster, label by index;
- ``p_l1c``: 13 uint16 DN bands (Level-1C), S1 in dB, no cloud information, unlabelled;
- ``p_named``: 10 bands in reverse order, named in the band descriptions, label in lower case;
- ``p_bands``: the BigEarthNet layout, one file per band at native resolution (10 m B02 B03 B04
  B08, 20 m B05 B06 B07 B8A B11 B12, 60 m B01 B09) and one per polarisation.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

GEOFLOW = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
L2A = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def _write(path: Path, data: np.ndarray, *, nodata=None, descriptions=None, res=10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs="EPSG:32632",
                       transform=Affine(res, 0, 500_000, 0, -res, 5_200_000),
                       nodata=nodata) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)


def make(root: str | Path, *, size: int = 16, seed: int = 0) -> dict:
    """Write the folder; return ``{"csv": Path, "expected": {id: {...}}}``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    expected: dict[str, dict] = {}
    rows = []

    def refl_for(bands: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {b: rng.uniform(0.01, 0.5, (size, size)) for b in bands}

    def s1_db() -> np.ndarray:
        return np.stack([rng.uniform(-15, -5, (size, size)),
                         rng.uniform(-25, -12, (size, size))]).astype(np.float32)

    nan_cloud = np.full((size, size), np.nan, np.float32)

    # p_float: float reflectance, geoflow order; S1 dB; 0/1 cloud mask; label by name.
    r = refl_for(GEOFLOW)
    s2 = np.stack([r[b] for b in GEOFLOW]).astype(np.float32)
    s2[:, 0, 0] = np.nan  # a no-data pixel
    _write(root / "s2" / "p_float.tif", s2)
    s1 = s1_db()
    _write(root / "s1" / "p_float.tif", s1)
    cloud = (rng.random((size, size)) < 0.3).astype(np.uint8)
    _write(root / "cloud" / "p_float.tif", cloud[None])
    rows.append({"s2": "s2/p_float.tif", "s1": "s1/p_float.tif", "label": "Water",
                 "cloud": "cloud/p_float.tif", "scl": "", "site": "a"})
    expected["p_float"] = {"s2": s2, "s1": s1, "cloud": cloud.astype(np.float32), "label": 8}

    # p_l2a: 12-band L2A DN (uint16, baseline < 04.00, DN = refl * 10000); no S1; SCL; index.
    r = refl_for(L2A)
    dn = np.stack([np.round(r[b] * 10000) for b in L2A]).astype(np.uint16)
    dn[:, 1, 1] = 0  # no data
    _write(root / "s2" / "p_l2a.tif", dn, nodata=0)
    scl = rng.choice(np.array([0, 3, 4, 5, 6, 8, 9, 10], np.uint8), (size, size))
    _write(root / "scl" / "p_l2a.tif", scl[None])
    rows.append({"s2": "s2/p_l2a.tif", "s1": "", "label": "2", "cloud": "",
                 "scl": "scl/p_l2a.tif", "site": "b"})
    want = np.stack([dn[L2A.index(b)] / 10000.0 for b in GEOFLOW]).astype(np.float32)
    want[:, 1, 1] = np.nan
    cl = np.isin(scl, [3, 8, 9, 10]).astype(np.float32)
    cl[scl == 0] = np.nan
    expected["p_l2a"] = {"s2": want, "s1": np.full((2, size, size), np.nan, np.float32),
                         "cloud": cl, "label": 2}

    # p_l1c: 13-band L1C DN; S1 dB; nothing about clouds; unlabelled.
    r = refl_for(L1C)
    dn = np.stack([np.round(r[b] * 10000) for b in L1C]).astype(np.uint16)
    _write(root / "s2" / "p_l1c.tif", dn)
    s1 = s1_db()
    _write(root / "s1" / "p_l1c.tif", s1)
    rows.append({"s2": "s2/p_l1c.tif", "s1": "s1/p_l1c.tif", "label": "", "cloud": "",
                 "scl": "", "site": "c"})
    expected["p_l1c"] = {"s2": np.stack([dn[L1C.index(b)] / 10000.0 for b in GEOFLOW])
                         .astype(np.float32), "s1": s1, "cloud": nan_cloud, "label": -1}

    # p_named: bands reversed, named in the descriptions; label name in lower case.
    r = refl_for(GEOFLOW)
    order = GEOFLOW[::-1]
    _write(root / "s2" / "p_named.tif", np.stack([r[b] for b in order]).astype(np.float32),
           descriptions=order)
    rows.append({"s2": "s2/p_named.tif", "s1": "", "label": "dense forest", "cloud": "",
                 "scl": "", "site": "d"})
    expected["p_named"] = {"s2": np.stack([r[b] for b in GEOFLOW]).astype(np.float32),
                           "s1": np.full((2, size, size), np.nan, np.float32),
                           "cloud": nan_cloud, "label": 1}

    # p_bands: one file per band at native resolution (BigEarthNet); label "Harbor".
    res = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B01": 60, "B09": 60}
    want = {}
    for band in L2A:
        r = res.get(band, 20)
        n = size * 10 // r if size * 10 % r == 0 else -(-size * 10 // r)
        dn = np.round(rng.uniform(0.01, 0.5, (n, n)) * 10000).astype(np.uint16)
        _write(root / "ben" / "p_bands" / f"P_{band}.tif", dn[None], res=r)
        f = r // 10
        want[band] = np.repeat(np.repeat(dn, f, 0), f, 1)[:size, :size] / 10000.0
    s1 = s1_db()
    for k, pol in enumerate(("VV", "VH")):
        _write(root / "ben" / "p_bands_s1" / f"P_{pol}.tif", s1[k:k + 1])
    rows.append({"s2": "ben/p_bands", "s1": "ben/p_bands_s1", "label": "Harbor", "cloud": "",
                 "scl": "", "site": "e"})
    expected["p_bands"] = {"s2": np.stack([want[b] for b in GEOFLOW]).astype(np.float32),
                           "s1": s1, "cloud": nan_cloud, "label": 9}

    csv_path = root / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["s2", "s1", "label", "cloud", "scl", "site"])
        writer.writeheader()
        writer.writerows(rows)
    return {"csv": csv_path, "expected": expected}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python make_folder_csv.py OUT_DIR")
    out = make(sys.argv[1])
    print(f"wrote {len(out['expected'])} patches and {out['csv']}")
