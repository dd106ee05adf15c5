"""BigEarthNet patches (real Sentinel-1 + Sentinel-2 pairs with CORINE labels) for evaluation and
fine-tuning: readers for the three published layouts, the fetch of the public samples, and the
table that maps CORINE labels to the classes of a geoflow model.

Layouts read (every patch is 120 x 120 px at 10 m; 20 m bands are brought onto the 10 m grid by
nearest neighbour, as the cube and :mod:`geoflow.model.loaders` do):

BigEarthNet v1 folders (``BigEarthNet-S2/<name>/<name>_B02.tif`` ... ``_labels_metadata.json``,
``BigEarthNet-S1/<s1name>/<s1name>_VV.tif`` with ``corresponding_s2_patch`` in its JSON)
    S2 L2A uint16 DN (reflectance = DN / 10000, processing baseline before 04.00), S1 sigma0 dB.
reBEN / BigEarthNet v2 (an LMDB of safetensors keyed by patch id, ``metadata.parquet``)
    The same units; labels are the 19-class nomenclature; ``contains_seasonal_snow`` and
    ``contains_cloud_or_shadow`` come from the metadata (and from
    ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``).
BigEarthNet v1 LMDB (values are pickles of ``bigearthnet_patch_interface`` objects)
    Decoded by :class:`_InertUnpickler`, which imports nothing: numpy arrays are rebuilt from
    their raw bytes, every other object becomes an inert record. ``pickle.load`` is never used.

Cloud and snow are flagged per patch (BigEarthNet's visual screening: the v1 lists
``patches_with_cloud_and_shadow`` and ``patches_with_seasonal_snow`` of ``bigearthnet-common``,
reBEN's metadata columns), not per pixel. For a flagged patch geoflow estimates the pixels with
simple spectral tests (:func:`estimate_masks`), standing in for the SCL mask the cube would use.

Public samples: :func:`fetch_samples` downloads two pinned wheels from PyPI (``pip download
--no-deps``), checks their sha256 and extracts only the data. configilm 0.7.1 ships 30 v1 LMDB
pairs and 24 reBEN pairs: the development set (``dev``); bigearthnet-common 2.8.0 ships 6 v1
folder pairs: the held-out set (``heldout``), kept out of any calibration or fine-tuning.

Examples
--------
>>> from geoflow.model.bigearthnet import allowed_classes
>>> sorted(allowed_classes(["Coniferous forest", "Sea and ocean"]))
['Dense Forest', 'Water']
>>> sets = open_sets("bigearthnet")            # fetches the public samples  # doctest: +SKIP
>>> {k: len(v) for k, v in sets.items()}                                      # doctest: +SKIP
{'dev': 54, 'heldout': 6}
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from geoflow.errors import ModelError

#: Patch side of BigEarthNet patches at 10 m.
PATCH_PX = 120

# --------------------------------------------------------------------------- label table

#: CORINE label -> (family, geoflow classes that fit it). Both nomenclatures: v1's 43 level-3
#: labels and reBEN's 19 classes (rows marked 19). Matching is lenient on purpose: a patch's
#: labels cover a 1.2 km square at CORINE's 25 ha minimum mapping unit, so a 320 m window fits
#: the patch if its class is any of the classes its labels allow. The families group labels for
#: the report (and the issue's targets: ``urban``, ``sea``).
LABEL_TABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    # artificial surfaces
    "Continuous urban fabric": ("urban", ("Residential", "Sparsely Built")),
    "Discontinuous urban fabric": ("urban", ("Residential", "Sparsely Built")),
    "Urban fabric": ("urban", ("Residential", "Sparsely Built")),  # 19
    "Industrial or commercial units": ("industrial", ("Industrial",)),  # also 19
    "Road and rail networks and associated land": ("transport", ("Road",)),
    "Port areas": ("transport", ("Harbor", "Industrial")),
    "Airports": ("transport", ("Road", "Industrial", "Herbaceous")),
    "Mineral extraction sites": ("mine/dump", ("Barren", "Industrial")),
    "Dump sites": ("mine/dump", ("Barren", "Industrial")),
    "Construction sites": ("mine/dump", ("Barren", "Industrial")),
    "Green urban areas": ("urban green", ("Herbaceous", "Residential", "Sparsely Built")),
    "Sport and leisure facilities": ("urban green", ("Herbaceous", "Sparsely Built")),
    # agriculture
    "Non-irrigated arable land": ("agriculture", ("Herbaceous",)),
    "Permanently irrigated land": ("agriculture", ("Herbaceous",)),
    "Rice fields": ("agriculture", ("Herbaceous",)),
    "Arable land": ("agriculture", ("Herbaceous",)),  # 19
    "Vineyards": ("agriculture", ("Herbaceous", "Scrub")),
    "Fruit trees and berry plantations": ("agriculture", ("Herbaceous", "Scrub")),
    "Olive groves": ("agriculture", ("Herbaceous", "Scrub")),
    "Annual crops associated with permanent crops": ("agriculture", ("Herbaceous", "Scrub")),
    "Permanent crops": ("agriculture", ("Herbaceous", "Scrub")),  # 19
    "Pastures": ("agriculture", ("Herbaceous",)),  # also 19
    "Complex cultivation patterns": ("agriculture", ("Herbaceous",)),  # also 19
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "agriculture", ("Herbaceous", "Scrub", "Dense Forest")),  # also 19
    "Agro-forestry areas": ("agriculture", ("Herbaceous", "Scrub", "Dense Forest")),  # also 19
    # forest and semi-natural
    "Broad-leaved forest": ("forest", ("Dense Forest",)),  # also 19
    "Coniferous forest": ("forest", ("Dense Forest",)),  # also 19
    "Mixed forest": ("forest", ("Dense Forest",)),  # also 19
    # v1's two labels allow what their merged 19-class label allows (CORINE's own split of
    # grassland and sparse vegetation is not one geoflow's classes can draw at 320 m)
    "Natural grassland": ("grassland/bare", ("Herbaceous", "Barren")),
    "Natural grassland and sparsely vegetated areas": ("grassland/bare",
                                                       ("Herbaceous", "Barren")),  # 19
    "Moors and heathland": ("scrub", ("Scrub",)),
    "Sclerophyllous vegetation": ("scrub", ("Scrub",)),
    "Moors, heathland and sclerophyllous vegetation": ("scrub", ("Scrub",)),  # 19
    "Transitional woodland/shrub": ("scrub", ("Scrub",)),
    "Transitional woodland, shrub": ("scrub", ("Scrub",)),  # 19
    "Beaches, dunes, sands": ("grassland/bare", ("Barren",)),  # also 19
    "Bare rock": ("grassland/bare", ("Barren",)),
    "Sparsely vegetated areas": ("grassland/bare", ("Herbaceous", "Barren")),
    "Burnt areas": ("grassland/bare", ("Barren",)),
    "Glaciers and perpetual snow": ("grassland/bare", ("Barren",)),
    # wetlands and water
    "Inland marshes": ("wetland", ("Water", "Herbaceous")),
    "Peatbogs": ("wetland", ("Water", "Herbaceous")),
    "Inland wetlands": ("wetland", ("Water", "Herbaceous")),  # 19
    "Salt marshes": ("wetland", ("Water", "Barren")),
    "Salines": ("wetland", ("Water", "Barren")),
    "Intertidal flats": ("wetland", ("Water", "Barren")),
    "Coastal wetlands": ("wetland", ("Water", "Barren")),  # 19
    "Water courses": ("inland water", ("Water",)),
    "Water bodies": ("inland water", ("Water",)),
    "Inland waters": ("inland water", ("Water",)),  # 19
    "Coastal lagoons": ("sea", ("Water",)),
    "Estuaries": ("sea", ("Water",)),
    "Sea and ocean": ("sea", ("Water",)),
    "Marine waters": ("sea", ("Water",)),  # 19
}

#: v1 level-3 label -> reBEN / BigEarthNet-19 class (None: dropped from the 19-class scheme), as
#: published by the BigEarthNet authors (``bigearthnet_common.constants.OLD2NEW_LABELS_DICT``).
V1_TO_19: dict[str, str | None] = {
    "Continuous urban fabric": "Urban fabric", "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None, "Port areas": None, "Airports": None,
    "Mineral extraction sites": None, "Dump sites": None, "Construction sites": None,
    "Green urban areas": None, "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land", "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land", "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops", "Olive groves": "Permanent crops",
    "Pastures": "Pastures", "Annual crops associated with permanent crops": "Permanent crops",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas": "Agro-forestry areas", "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest", "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands", "Bare rock": None,
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Burnt areas": None, "Inland marshes": "Inland wetlands", "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands", "Salines": "Coastal wetlands", "Intertidal flats": None,
    "Water courses": "Inland waters", "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters", "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}

#: The 19 reBEN classes in their published order (a class scheme for a 19-class checkpoint).
BEN19: tuple[str, ...] = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops",
    "Pastures", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland, shrub",
    "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
)
#: One colour per BEN19 class (CORINE's own legend colours; a merged class takes the colour of
#: its first CORINE label, e.g. Marine waters that of Sea and ocean, #e6f2ff).
BEN19_COLORS: tuple[str, ...] = (
    "#e6004d", "#cc4df2", "#ffffa8", "#e68000", "#e6e64d", "#ffe64d", "#e6cc4d", "#f2cca6",
    "#80ff00", "#00a600", "#4dff00", "#ccf24d", "#a6ff80", "#a6f200", "#e6e6e6", "#a6a6ff",
    "#ccccff", "#80f2e6", "#e6f2ff",
)


def _check_labels(labels: Iterable[str]) -> list[str]:
    out = [str(label) for label in labels]
    unknown = [label for label in out if label not in LABEL_TABLE]
    if unknown:
        raise ModelError(f"unknown BigEarthNet label(s) {unknown[:3]}",
                         hint="labels must be CORINE names of BigEarthNet v1 (43) or reBEN (19)")
    return out


def allowed_classes(labels: Iterable[str]) -> set[str]:
    """The geoflow classes that fit a patch with these CORINE labels (union over labels).

    Examples
    --------
    >>> sorted(allowed_classes(["Urban fabric", "Pastures"]))
    ['Herbaceous', 'Residential', 'Sparsely Built']
    """
    return {c for label in _check_labels(labels) for c in LABEL_TABLE[label][1]}


def families(labels: Iterable[str]) -> set[str]:
    """The label families of a patch (``forest``, ``urban``, ``sea``, ...).

    Examples
    --------
    >>> sorted(families(["Sea and ocean", "Beaches, dunes, sands"]))
    ['grassland/bare', 'sea']
    """
    return {LABEL_TABLE[label][0] for label in _check_labels(labels)}


def to_ben19(labels: Iterable[str]) -> list[str]:
    """The reBEN 19-class names of a patch's labels (v1 names converted, dropped ones left out).

    Examples
    --------
    >>> to_ben19(["Sea and ocean", "Port areas", "Pastures"])
    ['Marine waters', 'Pastures']
    """
    out: list[str] = []
    for label in _check_labels(labels):
        new = label if label in BEN19 else V1_TO_19.get(label)
        if new is not None and new not in out:
            out.append(new)
    return out


def allowed_mask(labels: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """(N, K) bool: which of ``classes`` fit each patch. Class schemes other than geoflow's ten
    are matched by name: BEN19 classes through :func:`to_ben19`, anything else must be a label.

    Examples
    --------
    >>> allowed_mask([["Pastures"]], ("Barren", "Herbaceous")).tolist()
    [[False, True]]
    """
    classes = tuple(classes)
    out = np.zeros((len(labels), len(classes)), bool)
    idx = {c: i for i, c in enumerate(classes)}
    for n, labs in enumerate(labels):
        if set(classes) <= set(BEN19):
            names: Iterable[str] = to_ben19(labs)
        elif set(classes) & set(LABEL_TABLE):
            names = _check_labels(labs)
        else:
            names = allowed_classes(labs)
        for name in names:
            if name in idx:
                out[n, idx[name]] = True
    return out


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

    b = {name: s2[i].astype(np.float64) for i, name in enumerate(S2_BANDS)}
    shape = s2.shape[1:]
    snow = np.zeros(shape, bool)
    cloud = np.zeros(shape, bool)
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


# --------------------------------------------------------------------------- v1 flags


@dataclass(frozen=True)
class V1Flags:
    """The v1 patch lists of BigEarthNet's screening (S2 patch names)."""

    cloudy: frozenset[str]
    snowy: frozenset[str]

    @staticmethod
    def read(folder: str | os.PathLike[str]) -> V1Flags:
        """Read ``patches_with_cloud_and_shadow.csv.bz2`` and ``patches_with_seasonal_snow.csv.bz2``
        (as ``bigearthnet-common`` ships them) from ``folder``."""
        sets = []
        for name in ("patches_with_cloud_and_shadow", "patches_with_seasonal_snow"):
            path = Path(folder) / f"{name}.csv.bz2"
            if not path.is_file():
                raise ModelError(f"BigEarthNet v1 patch list {path} is missing",
                                 hint="run geoflow.model.bigearthnet.fetch_samples() (it "
                                      "extracts the lists of bigearthnet-common 2.8.0)")
            with bz2.open(path, "rt", encoding="utf-8") as fh:
                sets.append(frozenset(line.strip().split(",")[0] for line in fh if line.strip()))
        return V1Flags(cloudy=sets[0], snowy=sets[1])


_NO_FLAGS = V1Flags(frozenset(), frozenset())


# --------------------------------------------------------------------------- v1 folders


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise ModelError(f"BigEarthNet label file {path} cannot be read ({err})",
                         hint="re-extract the BigEarthNet archive") from None


def read_v1_folders(root: str | os.PathLike[str], *, flags: V1Flags | None = None,
                    snow_as_cloud: bool = True) -> BenPatches:
    """Read a BigEarthNet v1 folder tree: S2 patch folders and, where present, S1 ones.

    Parameters
    ----------
    root
        A folder holding S2 patch folders (``<name>/<name>_B02.tif``,
        ``<name>_labels_metadata.json``) and optionally S1 patch folders (whose JSON names
        ``corresponding_s2_patch``), directly or one level down
        (``BigEarthNet-S2/``, ``BigEarthNet-S1/``).
    flags
        The cloud/snow lists (default: none flagged).
    snow_as_cloud
        Put estimated snow into the cloud mask (default: yes, as geoflow's SCL mask hides
        snow, :data:`geoflow.sentinel.HIDDEN_SCL`).

    Returns
    -------
    BenPatches

    Examples
    --------
    >>> p = read_v1_folders("BigEarthNet-v1.0")  # doctest: +SKIP
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelError(f"BigEarthNet folder {root} does not exist",
                         hint="pass the folder that holds the extracted patch folders")
    known, flags = flags is not None, flags or _NO_FLAGS
    s2_dirs: dict[str, Path] = {}
    s1_dirs: dict[str, Path] = {}
    for meta in sorted(list(root.glob("*/*_labels_metadata.json"))
                       + list(root.glob("*/*/*_labels_metadata.json"))):
        folder = meta.parent
        if any(folder.glob("*_VV.tif")):
            s2_name = _read_json(meta).get("corresponding_s2_patch")
            if s2_name:
                s1_dirs[str(s2_name)] = folder
        elif any(folder.glob("*_B02.tif")):
            s2_dirs[folder.name] = folder
    if not s2_dirs:
        raise ModelError(f"no BigEarthNet v1 S2 patch folders under {root}",
                         hint="the layout is ROOT/<patch>/<patch>_B02.tif + "
                              "<patch>_labels_metadata.json (or one level deeper)")
    # Band-per-file folders are read by the GeoTIFF loaders' own readers (nearest onto the
    # 10 m grid, DN / 10000 with DN 0 as no data, CRS and size checks).
    from geoflow.model.loaders import _read_s1, _read_s2, _Window

    whole = _Window(0, 0, None)
    records = []
    for name, folder in sorted(s2_dirs.items()):
        labels = _read_json(folder / f"{name}_labels_metadata.json").get("labels", [])
        s2, shape, crs = _read_s2(folder, whole, (PATCH_PX, PATCH_PX), offset_dn=0,
                                  what=f"S2 patch {name}")
        s1 = _read_s1(s1_dirs.get(name), whole, shape, crs, units="db", size=shape)
        records.append({
            "id": name, "labels": list(labels), "source": "v1-folders", "s2": s2, "s1": s1,
            "cloudy": name in flags.cloudy, "snowy": name in flags.snowy})
    return _assemble(records, snow_as_cloud, conditions_known=known)


# --------------------------------------------------------------------------- LMDB


def _open_lmdb(path: Path) -> Any:
    try:
        import lmdb
    except ImportError:
        raise ModelError("reading BigEarthNet LMDB files needs the 'lmdb' package",
                         hint="pip install 'geoflow[real]'") from None
    if not (path / "data.mdb").is_file():
        raise ModelError(f"{path} holds no LMDB (no data.mdb)",
                         hint="pass the LMDB folder (with data.mdb and lock.mdb)")
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)


class _Inert:
    """Stand-in for any class a pickle names: it keeps its arguments and state, runs nothing."""

    _pickled_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ArrayStub:
    """What numpy's ``_reconstruct`` returns while unpickling; BUILD fills in the array."""

    def __init__(self, *args: Any) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy's ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw bytes).
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected ndarray state")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("ndarray data is not plain bytes")
        arr = np.frombuffer(bytes(raw), dtype=dtype.dtype())
        self.array = arr.reshape(tuple(int(s) for s in shape), order="F" if fortran else "C")


class _FrombufferStub(_ArrayStub):
    """numpy's protocol-5 reduction ``_frombuffer(buffer, dtype, shape, order)`` with the
    buffer in band: the array is rebuilt from the raw bytes, nothing is called."""

    def __init__(self, buf: Any = None, dtype: Any = None, shape: Any = None,
                 order: Any = "C", *args: Any) -> None:
        if not isinstance(dtype, _DtypeStub) or not isinstance(buf, (bytes, bytearray)) or \
                not isinstance(shape, tuple) or order not in ("C", "F"):
            raise pickle.UnpicklingError("protocol-5 ndarray data is not plain bytes")
        arr = np.frombuffer(bytes(buf), dtype=dtype.dtype())
        self.array = arr.reshape(tuple(int(x) for x in shape), order=order)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("unexpected state for a protocol-5 ndarray")


class _DtypeStub:
    """numpy.dtype(code, align, copy) + its BUILD state, for plain numeric codes only."""

    def __init__(self, code: Any, *args: Any) -> None:
        if not (isinstance(code, str) and re.fullmatch(r"[biuf]\d{1,2}", code)):
            raise pickle.UnpicklingError(f"dtype {code!r} is not a plain number type")
        self.code = code
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def dtype(self) -> np.dtype[Any]:
        return np.dtype(("" if self.order in ("|", "=") else self.order) + self.code)


class _InertUnpickler(pickle.Unpickler):
    """Unpickle BigEarthNet v1 LMDB values without importing or calling anything.

    numpy's array reconstruction is rebuilt from raw bytes (:class:`_ArrayStub`); every other
    global becomes a fresh :class:`_Inert` subclass that only records its state. Persistent ids
    are refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray"):
            return _ArrayStub
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return _FrombufferStub
        if module == "numpy" and name == "ndarray":
            return _Inert
        if module == "numpy" and name == "dtype":
            return _DtypeStub
        return type(name, (_Inert,), {"_pickled_name": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _walk(obj: Any) -> Iterable[Any]:
    """Every object reachable from ``obj`` through inert states, dicts, lists and tuples
    (iteratively: a hostile, deeply nested pickle cannot exhaust the recursion limit)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, _Inert):
            stack.append(item.state)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(item)))


def decode_v1_pickle(data: bytes) -> dict[str, Any]:
    """Decode one v1 LMDB value into ``{"bands": {name: array}, "labels": [...]}`` safely.

    Raises
    ------
    ModelError
        The value is not a BigEarthNet v1 patch pickle (or uses anything beyond plain arrays).

    Examples
    --------
    >>> decode_v1_pickle(b"not a pickle")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    geoflow.errors.ModelError: ...
    """
    hint = ("geoflow reads only pickles of plain numpy arrays (pickle protocols 3-5, buffers "
            "in band); convert the LMDB to GeoTIFF folders or reBEN")
    try:
        top = _InertUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # any malformed or hostile stream (too deep too): one clear error
        raise ModelError(f"a BigEarthNet v1 LMDB value cannot be decoded safely "
                         f"({type(err).__name__}: {str(err)[:120]})", hint=hint) from None
    bands: dict[str, np.ndarray] = {}
    labels: list[str] | None = None
    for obj in _walk(top):
        if isinstance(obj, dict):
            state = obj.get("__dict__", obj)
            if isinstance(state, dict) and isinstance(state.get("data"), _ArrayStub) and \
                    isinstance(state.get("name"), str):
                arr = state["data"].array
                if arr is not None:
                    bands[_band_name(state["name"])] = arr
            if labels is None and isinstance(obj.get("labels"), list) and \
                    all(isinstance(x, str) for x in obj["labels"]):
                labels = list(obj["labels"])
    if labels is None or not bands:
        raise ModelError("a BigEarthNet v1 LMDB value holds no bands or no labels",
                         hint="pass a BigEarthNet v1 (BigEarthNetEncoded) LMDB")
    return {"bands": bands, "labels": labels}


def _band_name(name: str) -> str:
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", name.strip().upper())
    if not m:
        return name.strip().upper()
    return f"B{int(m.group(1))}A" if m.group(2) else f"B{int(m.group(1)):02d}"


def read_v1_lmdb(path: str | os.PathLike[str], *, flags: V1Flags | None = None,
                 snow_as_cloud: bool = True) -> BenPatches:
    """Read a BigEarthNet v1 LMDB (pickled patches; decoded by :func:`decode_v1_pickle`).

    Examples
    --------
    >>> p = read_v1_lmdb("BENv1/BigEarthNetEncoded.lmdb")  # doctest: +SKIP
    """
    path = Path(path)
    known, flags = flags is not None, flags or _NO_FLAGS
    env = _open_lmdb(path)
    records = []
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                name = key.decode("utf-8", "replace")
                patch = decode_v1_pickle(bytes(value))
                bands = patch["bands"]
                s1 = ({k: bands[k] for k in ("VV", "VH") if k in bands}
                      if "VV" in bands or "VH" in bands else None)
                records.append({"id": name, "labels": patch["labels"], "source": "v1-lmdb",
                                "s2": _s2_from_bands(bands, f"v1 LMDB patch {name}"),
                                "s1": _s1_from_bands(s1, f"v1 LMDB patch {name}"),
                                "cloudy": name in flags.cloudy,
                                "snowy": name in flags.snowy})
    finally:
        env.close()
    return _assemble(records, snow_as_cloud, conditions_known=known)


def read_reben(lmdb_path: str | os.PathLike[str],
               metadata: Sequence[str | os.PathLike[str]] | None = None, *,
               snow_as_cloud: bool = True) -> BenPatches:
    """Read reBEN (BigEarthNet v2): an LMDB of safetensors and its metadata parquet file(s).

    Parameters
    ----------
    lmdb_path
        The LMDB folder (``BigEarthNet-V2-LMDB``).
    metadata
        Parquet files with ``patch_id``, ``labels``, ``s1_name``, ``contains_seasonal_snow``,
        ``contains_cloud_or_shadow``; default: every ``*.parquet`` beside the LMDB folder.
        Patches listed in none of them are skipped (they have no labels).

    Examples
    --------
    >>> p = read_reben("BENv2/BigEarthNet-V2-LMDB")  # doctest: +SKIP
    """
    import pandas as pd
    from safetensors.numpy import load as st_load

    lmdb_path = Path(lmdb_path)
    files = ([Path(m) for m in metadata] if metadata is not None
             else sorted(lmdb_path.parent.glob("*.parquet")))
    if not files:
        raise ModelError(f"no reBEN metadata parquet file beside {lmdb_path}",
                         hint="put metadata.parquet next to the LMDB folder or pass it")
    try:
        meta = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except ImportError:
        raise ModelError("reading reBEN metadata (parquet) needs pyarrow",
                         hint="pip install 'geoflow[real]'") from None
    need = {"patch_id", "labels", "s1_name", "contains_seasonal_snow", "contains_cloud_or_shadow"}
    if not need <= set(meta.columns):
        raise ModelError(f"reBEN metadata lacks column(s) {sorted(need - set(meta.columns))}",
                         hint="pass reBEN's metadata.parquet")
    meta = meta.drop_duplicates("patch_id")
    env = _open_lmdb(lmdb_path)
    records = []
    try:
        with env.begin() as txn:
            for row in meta.itertuples(index=False):
                raw = txn.get(str(row.patch_id).encode())
                if raw is None:
                    continue  # a metadata row for a patch this LMDB does not hold
                s1raw = txn.get(str(row.s1_name).encode()) if row.s1_name else None
                try:
                    s2 = st_load(bytes(raw))
                    s1 = st_load(bytes(s1raw)) if s1raw is not None else None
                except Exception as err:
                    raise ModelError(f"reBEN patch {row.patch_id} is not a safetensors "
                                     f"record ({err})", hint="re-create the LMDB") from None
                name = str(row.patch_id)
                records.append({"id": name, "labels": list(row.labels), "source": "reben",
                                "s2": _s2_from_bands(s2, f"reBEN patch {name}"),
                                "s1": _s1_from_bands(s1, f"reBEN S1 patch {row.s1_name}"),
                                "cloudy": bool(row.contains_cloud_or_shadow),
                                "snowy": bool(row.contains_seasonal_snow)})
    finally:
        env.close()
    if not records:
        raise ModelError(f"no patch of the metadata is in {lmdb_path}",
                         hint="pass the LMDB and metadata of the same reBEN release")
    return _assemble(records, snow_as_cloud)


# --------------------------------------------------------------------------- public samples

#: The public wheels holding real BigEarthNet pairs: name, version, sha256 of the wheel.
WHEELS: dict[str, tuple[str, str]] = {
    "configilm": ("0.7.1", "54e8c2424c55bb4e68dfda07593e155e9ecfa6c60b50585c4b378076934cf5e3"),
    "bigearthnet_common": ("2.8.0",
                           "6c2bcf2b1d39a3f48925b0d941557152f9e523576fbb9d2b881a842ed92fd6af"),
}
# What is kept of each wheel (prefixes of member names); tarballs are unpacked.
_KEEP = {
    "configilm": ("configilm/extra/mock_data/BENv1/", "configilm/extra/mock_data/BENv2/"),
    "bigearthnet_common": ("bigearthnet_common/BigEarthNet-S1-Example.tar.bz2",
                           "bigearthnet_common/BigEarthNet-S2-Example.tar.bz2",
                           "bigearthnet_common/patches_with_cloud_and_shadow.csv.bz2",
                           "bigearthnet_common/patches_with_seasonal_snow.csv.bz2"),
}


def cache_dir() -> Path:
    """Where fetched samples live: ``$GEOFLOW_CACHE/bigearthnet``, else
    ``~/.cache/geoflow/bigearthnet``."""
    base = os.environ.get("GEOFLOW_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "geoflow") / "bigearthnet"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(name: str, version: str, into: Path, offline_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into), f"{name}=={version}"]
    offline = f"or put {name}-{version}-py3-none-any.whl in {offline_dir} to work offline"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ModelError(f"pip download of {name}=={version} failed ({err})",
                         hint=f"check the connection to PyPI, {offline}") from None
    wheels = sorted(into.glob(f"{name}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ModelError(f"pip download of {name}=={version} failed: {tail[0]}",
                         hint="check the connection to PyPI (or a pip index set in "
                              f"PIP_INDEX_URL), {offline}")
    return wheels[0]


@contextlib.contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the cache folder, so that two processes filling a fresh cache do not
    delete each other's wheels or half-extracted folders (released when the holder exits, even
    if it is killed)."""
    import fcntl  # POSIX only, as the rest of geoflow's cluster tooling

    try:
        fh = (root / ".lock").open("a")
    except OSError as err:
        raise ModelError(f"cannot lock the BigEarthNet cache {root} ({err.strerror})",
                         hint="set GEOFLOW_CACHE to a writable folder") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_samples(cache: str | os.PathLike[str] | None = None) -> Path:
    """Download (once) the public BigEarthNet samples and return the folder holding them.

    Each pinned wheel (:data:`WHEELS`) is fetched with ``pip download --no-deps`` into a private
    temporary folder (a wheel already in ``CACHE/wheels`` is used instead: a way to work
    offline), its sha256 checked, only the data extracted into ``CACHE/<name>-<version>/`` and
    the wheel removed; a ``.complete`` marker makes a later call free. The work is done under
    an exclusive lock on ``CACHE/.lock``: concurrent calls wait, then find the data ready.
    Nothing from the wheels is imported or installed.

    Parameters
    ----------
    cache
        Default :func:`cache_dir`.

    Returns
    -------
    pathlib.Path
        The cache folder: ``configilm-0.7.1/BENv1``, ``configilm-0.7.1/BENv2``,
        ``bigearthnet_common-2.8.0/BigEarthNet-S2-Example`` (and ``-S1-``) and the v1 lists.

    Raises
    ------
    ModelError
        Download failed, the cache is not writable, or a wheel's checksum differs from the
        pinned one.

    Examples
    --------
    >>> root = fetch_samples()  # doctest: +SKIP
    """
    root = Path(cache) if cache is not None else cache_dir()

    def complete(name: str, version: str) -> bool:
        return (root / f"{name}-{version}" / ".complete").is_file()

    if all(complete(n, v) for n, (v, _) in WHEELS.items()):
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(f"cannot create the BigEarthNet cache {root} ({err.strerror})",
                         hint="set GEOFLOW_CACHE to a writable folder") from None
    with _cache_lock(root):
        for name, (version, sha) in WHEELS.items():
            if complete(name, version):  # another process finished it while we waited
                continue
            _fetch_one(root, name, version, sha)
    return root


def _fetch_one(root: Path, name: str, version: str, sha: str) -> None:
    """Fetch, check and extract one wheel (the caller holds the cache lock)."""
    dest = root / f"{name}-{version}"
    offline_dir = root / "wheels"
    found = sorted(offline_dir.glob(f"{name}-{version}-*.whl")) if offline_dir.is_dir() else []
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp_name:
        tmp = Path(tmp_name)
        if found:
            wheel = found[0]
        else:
            (tmp / "download").mkdir()
            wheel = _download_wheel(name, version, tmp / "download", offline_dir)
        got = _sha256(wheel)
        if got != sha:
            wheel.unlink()
            raise ModelError(f"{wheel.name} has sha256 {got[:16]}..., expected {sha[:16]}...",
                             hint="the download was damaged or replaced; run again to refetch")
        data = tmp / "data"
        _extract(wheel, _KEEP[name], data)
        (data / ".complete").write_text(sha + "\n")
        if dest.exists():
            shutil.rmtree(dest)  # a stale, incomplete folder (no marker)
        data.rename(dest)  # atomic: a half-extracted cache is never seen as complete
        if found:
            wheel.unlink()  # the extracted data is all that is used (configilm's is 55 MB)


def _extract(wheel: Path, keep: Sequence[str], dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.endswith("/") or not member.startswith(tuple(keep)):
                continue
            prefix = next(k for k in keep if member.startswith(k))
            # BENv1/... and BENv2/... keep their folder; single files land flat.
            rel = (member[len(prefix.rsplit("/", 2)[0]) + 1:] if prefix.endswith("/")
                   else Path(member).name)
            target = dest / rel
            if ".." in Path(rel).parts:
                raise ModelError(f"{wheel.name} holds an unsafe path {member}",
                                 hint="the wheel is not the published one")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            if target.name.endswith(".tar.bz2"):
                _extract_tar(target, dest, wheel.name)
                target.unlink()


def _extract_tar(tarball: Path, dest: Path, what: str) -> None:
    """Extract a tarball of plain files and folders only: no links, devices, absolute paths or
    ``..``. Python's ``filter="data"`` (3.11.4+) does this; on older 3.11 the members are checked
    here and extracted with the ``fully_trusted`` behaviour only after that check."""
    with tarfile.open(tarball) as tf:
        members = tf.getmembers()
        for m in members:
            path = Path(m.name)
            if (path.is_absolute() or ".." in path.parts or not (m.isfile() or m.isdir())):
                raise ModelError(f"{what} holds an unsafe tar member {m.name!r}",
                                 hint="the wheel is not the published one")
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4: members were checked above
            tf.extractall(dest, members=members)


# --------------------------------------------------------------------------- specs


def open_sets(spec: str = "bigearthnet", *, cache: str | os.PathLike[str] | None = None,
              snow_as_cloud: bool = True) -> dict[str, BenPatches]:
    """Open BigEarthNet patches named by a spec, as named sets.

    Parameters
    ----------
    spec
        ``bigearthnet``: the public samples, ``{"dev": 54 configilm pairs, "heldout": 6
        bigearthnet-common pairs}`` (fetched by :func:`fetch_samples`).
        ``bigearthnet:PATH``: a user's data as ``{"data": ...}``: a v1 folder tree, a reBEN
        LMDB folder (with its parquet beside it, or a folder holding both) or a v1 LMDB.

    Returns
    -------
    dict
        Set name -> :class:`BenPatches`.

    Examples
    --------
    >>> {k: len(v) for k, v in open_sets("bigearthnet").items()}  # doctest: +SKIP
    {'dev': 54, 'heldout': 6}
    """
    kind, _, path = spec.partition(":")
    if kind.strip().lower() != "bigearthnet":
        raise ModelError(f"unknown real dataset {spec!r}",
                         hint="use 'bigearthnet' (public samples) or 'bigearthnet:PATH'")
    if not path:
        root = fetch_samples(cache)
        ben = root / f"configilm-{WHEELS['configilm'][0]}"
        common = root / f"bigearthnet_common-{WHEELS['bigearthnet_common'][0]}"
        flags = V1Flags.read(common)
        dev = BenPatches.concat([
            read_v1_lmdb(ben / "BENv1" / "BigEarthNetEncoded.lmdb", flags=flags,
                         snow_as_cloud=snow_as_cloud),
            read_reben(ben / "BENv2" / "BigEarthNet-V2-LMDB", snow_as_cloud=snow_as_cloud)])
        held = read_v1_folders(common, flags=flags, snow_as_cloud=snow_as_cloud)
        return {"dev": dev, "heldout": held}
    return {"data": read_path(path, snow_as_cloud=snow_as_cloud, cache=cache)}


def _user_flags(cache: str | os.PathLike[str] | None = None) -> V1Flags | None:
    """The v1 cloud/snow lists if they were fetched already into ``cache`` (default
    :func:`cache_dir`; never downloads for a user path); ``None`` with a warning if not."""
    root = Path(cache) if cache is not None else cache_dir()
    common = root / f"bigearthnet_common-{WHEELS['bigearthnet_common'][0]}"
    if (common / ".complete").is_file():
        return V1Flags.read(common)
    warnings.warn(f"BigEarthNet v1 cloud/snow lists are not in {root}: the conditions of these "
                  "v1 patches are unknown (reported as such, counted with the clear ones); run "
                  "`geoflow evaluate --real bigearthnet` once (it fetches them) to know them",
                  UserWarning, stacklevel=3)
    return None


def read_path(path: str | os.PathLike[str], *, snow_as_cloud: bool = True,
              cache: str | os.PathLike[str] | None = None) -> BenPatches:
    """Read a BigEarthNet dataset at ``path``, whichever of the three layouts it is (v1 layouts
    take their cloud/snow lists from the samples cache ``cache``, if fetched there).

    Examples
    --------
    >>> p = read_path("/data/reBEN")  # doctest: +SKIP
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"BigEarthNet path {p} does not exist",
                         hint="pass a v1 folder tree, a reBEN LMDB (+ metadata.parquet) or a "
                              "v1 LMDB")
    if p.is_dir() and not (p / "data.mdb").is_file():
        lmdbs = sorted(d for d in p.glob("*") if (d / "data.mdb").is_file())
        if lmdbs and any(p.glob("*.parquet")):
            return read_reben(lmdbs[0], snow_as_cloud=snow_as_cloud)
        if lmdbs:
            return read_v1_lmdb(lmdbs[0], flags=_user_flags(cache), snow_as_cloud=snow_as_cloud)
        return read_v1_folders(p, flags=_user_flags(cache), snow_as_cloud=snow_as_cloud)
    if (p / "data.mdb").is_file():
        if any(p.parent.glob("*.parquet")):
            return read_reben(p, snow_as_cloud=snow_as_cloud)
        return read_v1_lmdb(p, flags=_user_flags(cache), snow_as_cloud=snow_as_cloud)
    raise ModelError(f"{p} is not a BigEarthNet dataset folder",
                     hint="pass a v1 folder tree, a reBEN LMDB folder or a v1 LMDB folder")


# --------------------------------------------------------------------------- torch dataset


class BigEarthNetDataset(Dataset):
    """BigEarthNet patches as a :class:`torch.utils.data.Dataset` in the conventions of
    :mod:`geoflow.model.loaders`: items are dicts of ``s2`` (10, P, P), ``s1`` (2, P, P),
    ``cloud`` (P, P), ``label`` (the class index when the patch's labels allow exactly one
    class, else -1), ``allowed`` (K,) bool (every class the labels allow) and ``id``
    (``<patch>_r<row>_c<col>`` for a window).

    Parameters
    ----------
    patches
        :class:`BenPatches` (from :func:`open_sets`, :func:`read_path`, ...).
    patch_size
        Cut each patch into its centred windows of this size (3 x 3 for 32); ``None``: whole
        120 px patches.
    classes
        Class scheme of ``label`` / ``allowed`` (default geoflow's ten classes; BEN19 works).

    Examples
    --------
    >>> ds = BigEarthNetDataset(open_sets()["dev"], patch_size=32)  # doctest: +SKIP
    >>> len(ds), ds[0]["s2"].shape                                    # doctest: +SKIP
    (486, (10, 32, 32))
    """

    def __init__(self, patches: BenPatches, *, patch_size: int | None = None,
                 classes: Sequence[str] | None = None) -> None:
        from geoflow.model._constants import CLASSES

        self.patches = patches
        self.classes: tuple[str, ...] = tuple(classes) if classes is not None else CLASSES
        self.allowed = allowed_mask(patches.labels, self.classes)
        self.patch_size = patch_size
        self._origins = (window_origins(patch_size) if patch_size is not None
                         else [(0, 0)])
        self._size = patch_size or PATCH_PX

    def __len__(self) -> int:
        return len(self.patches) * len(self._origins)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} items")
        index %= n
        i, (r, c) = index // len(self._origins), self._origins[index % len(self._origins)]
        sl = (slice(r, r + self._size), slice(c, c + self._size))
        allowed = self.allowed[i]
        pid = self.patches.ids[i]
        return {"s2": self.patches.s2[i, :, sl[0], sl[1]],
                "s1": self.patches.s1[i, :, sl[0], sl[1]],
                "cloud": self.patches.cloud[i, sl[0], sl[1]],
                "label": int(np.flatnonzero(allowed)[0]) if allowed.sum() == 1 else -1,
                "allowed": allowed.copy(),
                "id": pid if self.patch_size is None else f"{pid}_r{r}_c{c}"}


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


__all__ = [
    "BEN19",
    "BEN19_COLORS",
    "LABEL_TABLE",
    "PATCH_PX",
    "V1_TO_19",
    "WHEELS",
    "BenPatches",
    "BigEarthNetDataset",
    "V1Flags",
    "allowed_classes",
    "allowed_mask",
    "cache_dir",
    "cut_windows",
    "decode_v1_pickle",
    "estimate_masks",
    "families",
    "fetch_samples",
    "open_sets",
    "read_path",
    "read_reben",
    "read_v1_folders",
    "read_v1_lmdb",
    "to_ben19",
    "window_origins",
]
