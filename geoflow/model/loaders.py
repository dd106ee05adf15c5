"""Datasets over real Sentinel-1/2 patches in their published layouts, for training on real imagery.

Two layouts are read, both as plain :class:`torch.utils.data.Dataset` objects whose items are
dicts of numpy arrays in geoflow's conventions (the ones :meth:`LoadedModel.predict` takes):

``s2``
    float32 ``(10, P, P)`` reflectance in geoflow's band order (B02 B03 B04 B05 B06 B07 B08 B8A
    B11 B12), NaN where the file has no data.
``s1``
    float32 ``(2, P, P)`` backscatter in dB, VV then VH; all NaN where no SAR patch exists.
``cloud``
    float32 ``(P, P)``: 1 cloud or cloud shadow, 0 clear, NaN unknown.
``label``
    int class index into ``classes`` (geoflow's ten scene classes by default), ``-1`` unlabelled.
``id``
    str, the patch's name (stable across runs; split by it, or by scene, to keep areas apart).

:class:`SEN12MSCRDataset` reads the SEN12MS-CR layout (Ebel et al. 2020, TUM mediaTUM
``m1554803``), as its own download script ``dl_data.sh`` and data loader arrange it
(github.com/PatrickTUM/SEN12MS-CR-TS, ``data/dataLoader.py``)::

    ROOT/ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p407.tif          2 bands, VV VH, dB
    ROOT/ROIs1158_spring_s2/s2_1/ROIs1158_spring_s2_1_p407.tif          13 bands, L1C DN
    ROOT/ROIs1158_spring_s2_cloudy/s2_cloudy_1/ROIs1158_spring_s2_cloudy_1_p407.tif

with seasons ``ROIs1158_spring``, ``ROIs1868_summer``, ``ROIs1970_fall`` and
``ROIs2017_winter``; patches are 256 x 256 px at 10 m. The S2 bands are B01 B02 B03 B04 B05 B06
B07 B08 B8A B09 B10 B11 B12 (all resampled to 10 m); geoflow keeps ten of them.

:class:`PatchFolderDataset` reads a plain folder of GeoTIFF patches listed in a CSV file
(multi-band files, or one file per band as BigEarthNet ships them).

Scaling, written down once
--------------------------
- S2 integer DN become reflectance as ``(DN - s2_offset_dn) / 10000``. SEN12MS-CR is Level-1C
  from 2017-2018 (processing baselines before 04.00): ``s2_offset_dn=0`` and the values are
  top-of-atmosphere reflectance, not the surface reflectance (L2A) geoflow's cube delivers; the
  difference is mostly a haze-like lift in the blue bands. Products of baseline 04.00 or later
  (from 25 January 2022) carry a +1000 offset: pass ``s2_offset_dn=1000`` for those. DN 0 is
  no data. Float S2 files are taken as reflectance already. A GeoTIFF that declares its own
  ``scale``/``offset`` is decoded with those instead.
- S1 values are expected in dB (SEN12MS-CR's are: sigma0 VV and VH); ``s1_units="linear"``
  converts linear power with ``10 * log10``, non-positive values becoming NaN.

Examples
--------
>>> from geoflow.model.loaders import SEN12MSCRDataset
>>> ds = SEN12MSCRDataset("/data/SEN12MSCR", seasons=["spring"], patch_size=32)  # doctest: +SKIP
>>> item = ds[0]                                                                  # doctest: +SKIP
>>> item["s2"].shape, item["s1"].shape, item["cloud"].shape                       # doctest: +SKIP
((10, 32, 32), (2, 32, 32), (32, 32))
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from geoflow.errors import ModelError
from geoflow.model._constants import CLASSES
from geoflow.sentinel import HIDDEN_SCL, S2_BANDS

# Band orders of the multi-band S2 files geoflow recognises by band count when a file does not
# name its bands. 13: Level-1C with all bands (SEN12MS, EuroSAT); 12: Level-2A (no B10, the
# cirrus band is dropped by Sen2Cor); 10: geoflow's own order.
_S2_ORDERS: dict[int, tuple[str, ...]] = {
    13: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"),
    12: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
}
SEN12MSCR_SEASONS = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")
_S2_FILE = re.compile(r"^(ROIs\d+_[a-z]+)_s2_(\d+)_p(\d+)\.tif$")


def _band_key(name: str) -> str:
    """Normalise a band name: 'B2', 'b02', 'B8a', 'B08A' -> 'B02', 'B02', 'B8A', 'B8A'."""
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", name.strip().upper())
    if not m:
        return name.strip().upper()
    number, a = m.groups()
    return f"B{int(number)}A" if a else f"B{int(number):02d}"


# --------------------------------------------------------------------------- reading rasters


@dataclass(frozen=True)
class _Window:
    row: int
    col: int
    size: int | None  # None: the whole file


def _open(path: Path, what: str) -> Any:
    import rasterio

    if not path.is_file():
        raise ModelError(f"{what} file {path} does not exist",
                         hint="check the dataset root and that the download was extracted fully")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise ModelError(f"{what} file {path} is not a readable GeoTIFF ({err})",
                         hint="re-download or re-extract that file") from None


def _read(src: Any, window: _Window, expect: tuple[int, int] | None, what: str) -> np.ndarray:
    """Read all bands of ``src`` in ``window`` as an array (bands, h, w) in its own dtype."""
    from rasterio.windows import Window

    if expect is not None and (src.height, src.width) != expect:
        raise ModelError(
            f"{what} {src.name} is {src.height}x{src.width} px but the S2 patch is "
            f"{expect[0]}x{expect[1]} px",
            hint="the files of one sample must cover the same pixels; re-export them on one grid")
    if window.size is None:
        return src.read()
    if window.row + window.size > src.height or window.col + window.size > src.width:
        raise ModelError(f"{what} {src.name} ({src.height}x{src.width} px) is smaller than the "
                         f"patch window at row {window.row}, col {window.col}",
                         hint="all files of a dataset must have the same size")
    return src.read(window=Window(window.col, window.row, window.size, window.size))


def _nodata_mask(src: Any, arr: np.ndarray) -> np.ndarray:
    mask = np.zeros(arr.shape, bool)
    if src.nodata is not None and not (isinstance(src.nodata, float) and math.isnan(src.nodata)):
        mask |= arr == src.nodata
    if np.issubdtype(arr.dtype, np.floating):
        mask |= ~np.isfinite(arr)
    return mask


def _s2_band_index(src: Any, what: str) -> list[int]:
    """Positions (0-based) of geoflow's ten bands in ``src``: by band descriptions, else count."""
    want = tuple(S2_BANDS)
    names = [_band_key(d) for d in src.descriptions if d]
    if len(names) == src.count and set(want) <= set(names):
        return [names.index(b) for b in want]
    order = _S2_ORDERS.get(src.count, want if src.count == len(want) else None)
    if order is None:
        raise ModelError(
            f"{what} {src.name} has {src.count} bands; geoflow reads S2 patches with 10 bands "
            f"({' '.join(want)}), 12 (Level-2A B01-B12 without B10) or 13 (Level-1C B01-B12)",
            hint="write the patch with one of those band sets, or name the bands in the "
                 "GeoTIFF band descriptions (e.g. 'B02', 'B8A')")
    return [order.index(b) for b in want]


def _check_resolution(src: Any, what: str) -> None:
    """geoflow's models see 10 m pixels: refuse patches on a projected grid of another size."""
    crs = src.crs
    if crs is None or not crs.is_projected or (crs.linear_units or "").lower() not in (
            "metre", "meter", "m"):
        return  # lon/lat or unknown grid: the pixel size in metres cannot be told from it
    xres, yres = (abs(float(r)) for r in src.res)
    if abs(xres - 10.0) > 0.5 or abs(yres - 10.0) > 0.5:
        raise ModelError(f"{what} {src.name} has {xres:g} x {yres:g} m pixels; geoflow's models "
                         "work on 10 m pixels",
                         hint="resample the patches to 10 m (e.g. gdalwarp -tr 10 10)")


def _band_files(folder: Path, names: Sequence[str], what: str) -> list[Path]:
    """The one-band files of a band-per-file patch folder (``..._B02.tif``, ``..._VV.tif``)."""
    found: dict[str, Path] = {}
    for f in sorted(folder.glob("*.tif*")):
        m = re.search(r"_([A-Za-z0-9]+)\.tiff?$", f.name)
        if m:
            found.setdefault(_band_key(m.group(1)), f)
    missing = [n for n in names if n not in found]
    if missing:
        raise ModelError(f"{what} folder {folder} has no file for band(s) {', '.join(missing)}",
                         hint="name one-band files like <patch>_B02.tif ... <patch>_B12.tif "
                              "(S2) or <patch>_VV.tif, <patch>_VH.tif (S1)")
    return [found[n] for n in names]


@dataclass
class _Raw:
    """Bands as stored (native dtype), their no-data mask, decoding tags, grid."""

    data: np.ndarray
    nodata: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray
    shape: tuple[int, int]
    crs: Any
    names: list[str]


def _read_raw(path: Path, names: Sequence[str] | None, window: _Window,
              expect: tuple[int, int] | None, what: str, crs: Any = None,
              check_res: bool = False) -> _Raw:
    """Read a multi-band file (all bands; ``names`` unused) or a band-per-file folder.

    A folder's first band (B02 for S2, VV for S1: 10 m) sets the grid; coarser bands (20 m, 60 m
    in BigEarthNet) are brought onto it by nearest neighbour, as the cube does.
    """
    from rasterio.enums import Resampling

    if not path.is_dir():
        with _open(path, what) as src:
            if check_res:
                _check_resolution(src, what)
            _check_crs(src, crs)
            data = _read(src, window, expect, what)
            return _Raw(data, _nodata_mask(src, data), np.asarray(src.scales, float),
                        np.asarray(src.offsets, float), (src.height, src.width), src.crs,
                        [d or "" for d in src.descriptions])
    assert names is not None
    files = _band_files(path, names, what)
    bands, masks, scales, offsets = [], [], [], []
    shape: tuple[int, int] | None = None
    ref_crs = None
    for f in files:
        with _open(f, what) as src:
            if shape is None:  # the reference (finest) band
                if check_res:
                    _check_resolution(src, what)
                _check_crs(src, crs)
                shape, ref_crs = (src.height, src.width), src.crs
                if expect is not None and shape != expect:
                    raise ModelError(f"{what} {f} is {shape[0]}x{shape[1]} px but the S2 patch "
                                     f"is {expect[0]}x{expect[1]} px",
                                     hint="the files of one sample must cover the same pixels")
            elif src.crs != ref_crs:
                raise ModelError(f"{f} is in {src.crs} but {files[0].name} in {ref_crs}",
                                 hint="all band files of a patch must be on one grid")
            band = src.read(1, out_shape=shape, resampling=Resampling.nearest)
            bands.append(band)
            masks.append(_nodata_mask(src, band))
            scales.append(src.scales[0])
            offsets.append(src.offsets[0])
    assert shape is not None
    data, nodata = np.stack(bands), np.stack(masks)
    if window.size is not None:
        if window.row + window.size > shape[0] or window.col + window.size > shape[1]:
            raise ModelError(f"{what} {path} ({shape[0]}x{shape[1]} px) is smaller than the "
                             f"patch window at row {window.row}, col {window.col}",
                             hint="all patches of a dataset must have the same size")
        sl = (slice(None), slice(window.row, window.row + window.size),
              slice(window.col, window.col + window.size))
        data, nodata = data[sl], nodata[sl]
    return _Raw(data, nodata, np.asarray(scales, float), np.asarray(offsets, float), shape,
                ref_crs, list(names))


def _read_s2(path: Path, window: _Window, expect: tuple[int, int] | None, *, offset_dn: float,
             what: str = "S2 patch") -> tuple[np.ndarray, tuple[int, int], Any]:
    raw = _read_raw(path, tuple(S2_BANDS), window, expect, what, check_res=True)
    if path.is_dir():
        idx = list(range(len(raw.names)))
    else:
        with _open(path, what) as src:
            idx = _s2_band_index(src, what)
    data, nodata = raw.data[idx], raw.nodata[idx]
    scales, offsets = raw.scales[idx][:, None, None], raw.offsets[idx][:, None, None]
    if np.any(scales != 1) or np.any(offsets != 0):
        # The file says how to decode itself (e.g. scale 1e-4, offset -0.1): trust it.
        refl = data * scales + offsets
    elif np.issubdtype(data.dtype, np.integer):
        refl = (data.astype(np.float64) - offset_dn) / 10000.0
        nodata = nodata | (data == 0)  # Sentinel-2 products use DN 0 for no data
    else:
        refl = data
    out = refl.astype(np.float32)
    out[nodata] = np.nan
    return out, raw.shape, raw.crs


def _read_s1(path: Path | None, window: _Window, expect: tuple[int, int], crs: Any, *,
             units: str, size: tuple[int, int]) -> np.ndarray:
    if path is None:
        return np.full((2, *size), np.nan, np.float32)
    raw = _read_raw(path, ("VV", "VH"), window, expect, "S1 patch", crs)
    if raw.data.shape[0] != 2:
        raise ModelError(f"S1 patch {path} has {raw.data.shape[0]} bands; geoflow expects 2 "
                         "(VV then VH)", hint="write VV and VH backscatter as two bands")
    arr, nodata = raw.data.astype(np.float64), raw.nodata
    if [n.strip().upper() for n in raw.names] == ["VH", "VV"]:  # named the other way round
        arr, nodata = arr[::-1], nodata[::-1]
    if units == "linear":
        with np.errstate(divide="ignore", invalid="ignore"):
            arr = np.where(arr > 0, 10.0 * np.log10(np.where(arr > 0, arr, 1.0)), np.nan)
    out = arr.astype(np.float32)
    out[nodata] = np.nan
    return out


def _check_crs(src: Any, crs: Any) -> None:
    if crs is not None and src.crs is not None and src.crs != crs:
        raise ModelError(f"{src.name} is in {src.crs} but its S2 patch is in {crs}",
                         hint="the files of one sample must be on the same grid")


def _read_mask(path: Path, window: _Window, expect: tuple[int, int], crs: Any, *,
               scl: bool) -> np.ndarray:
    what = "SCL raster" if scl else "cloud mask"
    with _open(path, what) as src:
        if src.count != 1:
            raise ModelError(f"{what} {src.name} has {src.count} bands; expected 1",
                             hint="write the mask as a single-band GeoTIFF")
        _check_crs(src, crs)
        raw = _read(src, window, expect, what)[0]
        nodata = _nodata_mask(src, raw)
    if scl:
        # Cloud, shadow, cirrus and snow hide the ground, as in the cube's mask.
        out = np.isin(raw, HIDDEN_SCL).astype(np.float32)
        nodata |= raw == 0  # SCL class 0 is no data
    else:
        out = raw.astype(np.float32)
        valid = out[~nodata]
        if valid.size and (valid.min() < 0 or valid.max() > 1):
            raise ModelError(
                f"cloud mask {path} has values from {valid.min():g} to {valid.max():g}; "
                "geoflow expects 0 (clear) to 1 (cloud)",
                hint="give a Sentinel-2 scene classification raster in the 'scl' column instead")
    out[nodata] = np.nan
    return out


# --------------------------------------------------------------------------- shared base


@dataclass(frozen=True)
class PatchFiles:
    """The files of one sample (one GeoTIFF patch per modality; ``None`` where absent)."""

    id: str
    s2: Path
    s1: Path | None = None
    s2_clear: Path | None = None
    cloud: Path | None = None
    scl: Path | None = None
    label: int = -1
    scene: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class _PatchDataset(Dataset):
    """Items from a list of :class:`PatchFiles`, optionally cut into ``patch_size`` windows."""

    def __init__(self, samples: Sequence[PatchFiles], *, patch_size: int | None,
                 classes: Sequence[str], s1_units: str, s2_offset_dn: float) -> None:
        if s1_units not in ("db", "linear"):
            raise ModelError(f"s1_units={s1_units!r} is not known",
                             hint="pass 'db' (backscatter in decibels) or 'linear' (power)")
        if patch_size is not None and patch_size < 1:
            raise ModelError(f"patch_size={patch_size} must be a positive number of pixels",
                             hint="pass the model's patch size, e.g. 32, or None for whole files")
        self.samples: list[PatchFiles] = list(samples)
        self.classes: tuple[str, ...] = tuple(classes)
        self.patch_size = patch_size
        self.s1_units = s1_units
        self.s2_offset_dn = float(s2_offset_dn)
        # Size of the files, from the first sample; every other file is checked when read.
        first = self.samples[0].s2
        if first.is_dir():
            first = _band_files(first, tuple(S2_BANDS), "S2 patch")[0]
        with _open(first, "S2 patch") as src:
            _check_resolution(src, "S2 patch")
            if not self.samples[0].s2.is_dir():
                _s2_band_index(src, "S2 patch")
            self.file_shape: tuple[int, int] = (src.height, src.width)
        h, w = self.file_shape
        if patch_size is None:
            self._windows = [_Window(0, 0, None)]
        else:
            if patch_size > min(h, w):
                raise ModelError(f"patch_size={patch_size} is larger than the {h}x{w} px files",
                                 hint=f"pass patch_size <= {min(h, w)}")
            self._windows = [_Window(r * patch_size, c * patch_size, patch_size)
                             for r in range(h // patch_size) for c in range(w // patch_size)]

    def __len__(self) -> int:
        return len(self.samples) * len(self._windows)

    def summary(self) -> dict[str, Any]:
        """What the dataset holds, from its file list (nothing is read).

        Returns
        -------
        dict
            ``files``, ``patches`` (items), ``patch_size``, ``files_with_s1``,
            ``files_labelled`` and ``label_counts`` (class name -> files).

        Examples
        --------
        >>> ds.summary()["patches"]  # doctest: +SKIP
        32
        """
        counts: dict[str, int] = {}
        for s in self.samples:
            if s.label >= 0:
                counts[self.classes[s.label]] = counts.get(self.classes[s.label], 0) + 1
        return {
            "files": len(self.samples),
            "patches": len(self),
            "patch_size": self.patch_size or self.file_shape[0],
            "files_with_s1": sum(s.s1 is not None for s in self.samples),
            "files_labelled": sum(counts.values()),
            "label_counts": counts,
        }

    def __repr__(self) -> str:
        info = self.summary()
        return (f"{type(self).__name__}({info['files']} files, {info['patches']} patches of "
                f"{info['patch_size']} px, {info['files_with_s1']} with S1, "
                f"{info['files_labelled']} labelled)")

    def _locate(self, index: int) -> tuple[PatchFiles, _Window, str]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} patches")
        index %= n
        sample = self.samples[index // len(self._windows)]
        window = self._windows[index % len(self._windows)]
        pid = sample.id if window.size is None else f"{sample.id}_r{window.row}_c{window.col}"
        return sample, window, pid

    def _load(self, sample: PatchFiles, window: _Window) -> dict[str, Any]:
        s2, shape, crs = _read_s2(sample.s2, window, self.file_shape,
                                  offset_dn=self.s2_offset_dn)
        size = s2.shape[1:]
        s1 = _read_s1(sample.s1, window, shape, crs, units=self.s1_units, size=size)
        item: dict[str, Any] = {"s2": s2, "s1": s1}
        if sample.s2_clear is not None:
            clear, _, clear_crs = _read_s2(sample.s2_clear, window, shape,
                                           offset_dn=self.s2_offset_dn, what="clear S2 patch")
            if crs is not None and clear_crs is not None and clear_crs != crs:
                raise ModelError(f"{sample.s2_clear} is in {clear_crs} but {sample.s2} in {crs}",
                                 hint="the files of one sample must be on the same grid")
            item["s2_clear"] = clear
        if sample.cloud is not None:
            item["cloud"] = _read_mask(sample.cloud, window, shape, crs, scl=False)
        elif sample.scl is not None:
            item["cloud"] = _read_mask(sample.scl, window, shape, crs, scl=True)
        else:
            item["cloud"] = np.full(size, np.nan, np.float32)
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample, window, pid = self._locate(index)
        item = self._load(sample, window)
        item["label"] = int(sample.label)
        item["id"] = pid
        return item


def _label_index(value: Any, classes: Sequence[str], where: str) -> int:
    """Class index from a class name or an index (str or int); '' or None -> -1 (unlabelled)."""
    if value is None:
        return -1
    text = str(value).strip()
    if text == "":
        return -1
    if re.fullmatch(r"-?\d+", text):
        idx = int(text)
        if idx == -1:
            return -1
        if not 0 <= idx < len(classes):
            raise ModelError(f"{where}: label {idx} is not a class index (0-{len(classes) - 1})",
                             hint="use an index from 0 to "
                                  f"{len(classes) - 1}, a class name, or -1 / empty for none")
        return idx
    lowered = [c.lower() for c in classes]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise ModelError(f"{where}: unknown class name {text!r}",
                     hint="use one of " + ", ".join(repr(c) for c in classes)
                          + " (or its index), or pass classes= with your own names")


# --------------------------------------------------------------------------- SEN12MS-CR


class SEN12MSCRDataset(_PatchDataset):
    """SEN12MS-CR triplets (S1, cloud-free S2, cloudy S2) in the dataset's published layout.

    Each item is a dict with ``s2`` (the *cloudy* optical patch: the model's input),
    ``s2_clear`` (its cloud-free twin, same place, another date of the same season), ``s1``,
    ``cloud``, ``label`` and ``id`` (see the module docstring for dtypes and units).

    Parameters
    ----------
    root
        The folder that holds ``ROIs1158_spring_s2/``, ``ROIs1158_spring_s2_cloudy/``,
        ``ROIs1158_spring_s1/`` and the other seasons (as ``dl_data.sh`` extracts them).
    seasons
        Which seasons to read, by season (``"spring"``) or full name (``"ROIs1158_spring"``);
        ``None``: every season found.
    patch_size
        Cut each 256 px file into non-overlapping windows of this many pixels (the model's
        patch size; the remainder of the file is dropped); ``None`` gives whole files.
    cloud
        ``"difference"`` (default): estimate the cloud mask from the cloudy and cloud-free
        patches (see :func:`estimate_cloud`); ``None``: all NaN (unknown). SEN12MS-CR ships no
        cloud masks; its own loaders run s2cloudless instead.
    cloud_threshold
        Reflectance difference above which a pixel counts as cloud (see :func:`estimate_cloud`).
    labels
        Optional scene labels, ``{patch id: class name or index}`` where the patch id is as in
        ``item["id"]`` for whole files (``"ROIs1158_spring_1_p407"``). SEN12MS-CR itself has no
        scene labels, so items are ``-1`` (unlabelled: geoflow's target domain) by default.
    classes
        Class names labels refer to; default geoflow's ten scene classes.
    on_missing
        ``"error"`` (default): a clear S2 patch without its cloudy twin is an error;
        ``"skip"``: such patches are left out (the official loader skips them silently).
        A missing S1 patch is never an error: its ``s1`` is all NaN (SAR missing).
    s2_offset_dn
        DN offset of the S2 files (0 for SEN12MS-CR; see the module docstring).

    Examples
    --------
    >>> ds = SEN12MSCRDataset("/data/SEN12MSCR", seasons=["winter"],
    ...                       patch_size=32)                     # doctest: +SKIP
    >>> ds[0]["s2"].shape, ds[0]["s2_clear"].shape               # doctest: +SKIP
    ((10, 32, 32), (10, 32, 32))
    """

    def __init__(self, root: str | Path, *, seasons: Iterable[str] | None = None,
                 patch_size: int | None = None, cloud: str | None = "difference",
                 cloud_threshold: float = 0.06,
                 labels: Mapping[str, int | str] | None = None,
                 classes: Sequence[str] | None = None, on_missing: str = "error",
                 s2_offset_dn: float = 0.0) -> None:
        self.root = Path(root)
        if cloud not in ("difference", None):
            raise ModelError(f"cloud={cloud!r} is not known",
                             hint="pass 'difference' (estimate from the cloud-free twin) or None")
        if on_missing not in ("error", "skip"):
            raise ModelError(f"on_missing={on_missing!r} is not known",
                             hint="pass 'error' or 'skip'")
        self.cloud_method = cloud
        self.cloud_threshold = float(cloud_threshold)
        classes = tuple(classes) if classes is not None else tuple(CLASSES)
        samples = _sen12mscr_samples(self.root, seasons, on_missing)
        if labels:
            known = {s.id for s in samples}
            unknown = sorted(set(labels) - known)
            if unknown:
                raise ModelError(f"{len(unknown)} labelled patch ids are not in the dataset, "
                                 f"e.g. {unknown[:3]}",
                                 hint="key labels by patch id like 'ROIs1158_spring_1_p407'")
            samples = [replace(s, label=_label_index(labels.get(s.id), classes,
                                                     f"label of {s.id}")) for s in samples]
        super().__init__(samples, patch_size=patch_size, classes=classes, s1_units="db",
                         s2_offset_dn=s2_offset_dn)

    @property
    def scenes(self) -> list[str]:
        """Scene of every item (e.g. ``"ROIs1158_spring_106"``), to split train/test by area."""
        per_file = len(self._windows)
        return [s.scene for s in self.samples for _ in range(per_file)]

    def _load(self, sample: PatchFiles, window: _Window) -> dict[str, Any]:
        item = super()._load(sample, window)
        if self.cloud_method == "difference":
            item["cloud"] = estimate_cloud(item["s2"], item["s2_clear"],
                                           threshold=self.cloud_threshold)
        return item


def _season_names(root: Path, seasons: Iterable[str] | None) -> list[str]:
    found = sorted(p.name[:-3] for p in root.glob("ROIs*_s2") if p.is_dir())
    if seasons is None:
        return found
    chosen = []
    for want in seasons:
        match = [f for f in SEN12MSCR_SEASONS if want in (f, f.split("_")[1])]
        if not match:
            raise ModelError(f"unknown SEN12MS-CR season {want!r}",
                             hint="use spring, summer, fall or winter (or "
                                  + ", ".join(SEN12MSCR_SEASONS) + ")")
        if match[0] not in found:
            raise ModelError(f"season {match[0]} is not in {root} (found: {found or 'none'})",
                             hint=f"download and extract {match[0]}_s2.tar.gz and "
                                  f"{match[0]}_s2_cloudy.tar.gz into {root}")
        chosen.append(match[0])
    return chosen


def _sen12mscr_samples(root: Path, seasons: Iterable[str] | None,
                       on_missing: str) -> list[PatchFiles]:
    layout = ("ROOT/ROIs1158_spring_s2/s2_1/ROIs1158_spring_s2_1_p407.tif, "
              "ROOT/ROIs1158_spring_s2_cloudy/s2_cloudy_1/ROIs1158_spring_s2_cloudy_1_p407.tif, "
              "ROOT/ROIs1158_spring_s1/s1_1/ROIs1158_spring_s1_1_p407.tif")
    if not root.is_dir():
        raise ModelError(f"SEN12MS-CR root {root} is not a folder",
                         hint=f"pass the folder holding the extracted archives ({layout})")
    samples: list[PatchFiles] = []
    missing: list[Path] = []
    for season in _season_names(root, seasons):
        for s2 in sorted((root / f"{season}_s2").glob("s2_*/*.tif")):
            m = _S2_FILE.match(s2.name)
            if not m or m.group(1) != season or s2.parent.name != f"s2_{m.group(2)}":
                continue  # not a patch of this layout (e.g. a stray file)
            scene, patch = m.group(2), m.group(3)
            cloudy = (root / f"{season}_s2_cloudy" / f"s2_cloudy_{scene}"
                      / f"{season}_s2_cloudy_{scene}_p{patch}.tif")
            s1 = root / f"{season}_s1" / f"s1_{scene}" / f"{season}_s1_{scene}_p{patch}.tif"
            if not cloudy.is_file():
                missing.append(cloudy)
                continue
            samples.append(PatchFiles(id=f"{season}_{scene}_p{patch}", s2=cloudy,
                                      s1=s1 if s1.is_file() else None, s2_clear=s2,
                                      scene=f"{season}_{scene}"))
    if missing and on_missing == "error":
        raise ModelError(f"{len(missing)} cloud-free S2 patches have no cloudy twin, e.g. "
                         f"{missing[0]}",
                         hint="extract the matching *_s2_cloudy archive, or pass "
                              "on_missing='skip' to leave those patches out")
    if not samples:
        raise ModelError(f"no SEN12MS-CR triplets found under {root}",
                         hint=f"the expected layout is {layout}")
    return samples


def estimate_cloud(cloudy: np.ndarray, clear: np.ndarray, *, threshold: float = 0.06
                   ) -> np.ndarray:
    """Estimate a cloud + cloud-shadow mask by comparing a cloudy patch with its clear twin.

    A pixel is cloud where the cloudy image is brighter than the clear one in the visible
    bands (B02 B03 B04, mean difference above ``threshold`` reflectance): thick clouds and
    haze brighten everything there. It is cloud shadow where the near-infrared (B08) is darker
    by more than ``threshold`` and by more than 30 % of the clear value. Both count as cloudy,
    as SCL classes 3, 8, 9 and 10 do in geoflow's cube.

    This is an estimate, not a mask: SEN12MS-CR's two images are weeks apart, so real change on
    the ground (harvest, flooding, snow) also counts, and haze fainter than ``threshold`` does
    not. It is good enough to bin patches by cloud cover and to gate pseudo-labels.

    Parameters
    ----------
    cloudy, clear
        float ``(10, H, W)`` reflectance in geoflow's band order.
    threshold
        Reflectance difference that counts. 0.06 is a heuristic default, not a fitted value:
        raise it where the two dates differ a lot on the ground, lower it to catch thin haze.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)``: 1 cloud or shadow, 0 clear, NaN where either image has no data.

    Examples
    --------
    >>> import numpy as np
    >>> clear = np.full((10, 2, 2), 0.05, np.float32)
    >>> cloudy = clear.copy(); cloudy[:, 0, 0] = 0.5
    >>> estimate_cloud(cloudy, clear)
    array([[1., 0.],
           [0., 0.]], dtype=float32)
    """
    bands = tuple(S2_BANDS)
    vis = [bands.index(b) for b in ("B02", "B03", "B04")]
    nir = bands.index("B08")
    with np.errstate(invalid="ignore"):
        bright = (cloudy[vis] - clear[vis]).mean(axis=0) > threshold
        drop = clear[nir] - cloudy[nir]
        shadow = (drop > threshold) & (drop > 0.3 * clear[nir])
    out = (bright | shadow).astype(np.float32)
    out[np.isnan(cloudy).any(axis=0) | np.isnan(clear).any(axis=0)] = np.nan
    return out


# --------------------------------------------------------------------------- folder + CSV

_CSV_COLUMNS = ("s2", "s1", "label", "cloud", "scl", "id")


class PatchFolderDataset(_PatchDataset):
    """A folder of GeoTIFF patches listed in a CSV file, one row per sample.

    CSV columns (header required; paths relative to the CSV's folder, or absolute):

    ``s2`` (required)
        Multi-band S2 patch: 10 bands in geoflow's order, 12 (Level-2A B01-B12 without B10)
        or 13 (Level-1C B01-B12), or any order with band names in the GeoTIFF descriptions.
        Integer DN or float reflectance (see the module docstring for scaling). Or a folder
        of one-band files named ``<anything>_B02.tif`` ... ``_B12.tif`` at their native
        10/20/60 m (the BigEarthNet layout): B02 sets the 10 m grid, coarser bands are
        brought onto it by nearest neighbour.
    ``s1`` (optional)
        2-band VV, VH patch in dB (or linear with ``s1_units="linear"``), or a folder with
        ``<anything>_VV.tif`` and ``<anything>_VH.tif``; empty: SAR missing.
    ``label`` (optional)
        Class name (case-insensitive) or index into ``classes``; empty: unlabelled (-1).
    ``cloud`` (optional)
        1-band cloud mask, 0 clear to 1 cloud; or ``scl`` (optional): a Sentinel-2 scene
        classification raster, hidden where SCL is 3, 8, 9, 10 (cloud, shadow, cirrus) or 11
        (snow). Neither: ``cloud`` is NaN.
    ``id`` (optional)
        The sample's name; default the S2 file name without its suffix.

    Other columns are kept in ``samples[i].extra`` and otherwise ignored. All rows are
    checked when the dataset is made (files exist, labels known); band counts and sizes are
    checked on the first file now and on every other file when it is read.

    Parameters
    ----------
    csv_path
        The CSV file.
    patch_size
        Cut each file into non-overlapping windows of this size; ``None``: whole files.
    classes
        Class names; default geoflow's ten scene classes.
    s1_units
        ``"db"`` or ``"linear"``.
    s2_offset_dn
        Subtracted from integer S2 DN before dividing by 10000 (1000 for products of
        processing baseline 04.00 or later).

    Examples
    --------
    >>> ds = PatchFolderDataset("patches/labels.csv", patch_size=32)  # doctest: +SKIP
    >>> ds[0]["label"], ds.classes[ds[0]["label"]]                    # doctest: +SKIP
    (8, 'Water')
    """

    def __init__(self, csv_path: str | Path, *, patch_size: int | None = None,
                 classes: Sequence[str] | None = None, s1_units: str = "db",
                 s2_offset_dn: float = 0.0) -> None:
        self.csv_path = Path(csv_path)
        classes = tuple(classes) if classes is not None else tuple(CLASSES)
        samples = _csv_samples(self.csv_path, classes)
        super().__init__(samples, patch_size=patch_size, classes=classes, s1_units=s1_units,
                         s2_offset_dn=s2_offset_dn)


def _csv_samples(csv_path: Path, classes: Sequence[str]) -> list[PatchFiles]:
    if not csv_path.is_file():
        raise ModelError(f"label CSV {csv_path} does not exist",
                         hint="pass the path of a CSV with columns s2[,s1,label,cloud,scl,id]")
    base = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "s2" not in columns:
            raise ModelError(f"{csv_path} has no 's2' column (columns: {columns or 'none'})",
                             hint="the header must name an 's2' column with S2 patch paths; "
                                  "optional: " + ", ".join(_CSV_COLUMNS[1:]))
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise ModelError(f"{csv_path} lists no patches", hint="add one row per patch")

    def resolve(value: str, line: int, what: str) -> Path | None:
        if not value:
            return None
        path = Path(value) if Path(value).is_absolute() else base / value
        if not (path.exists() if what in ("s2", "s1") else path.is_file()):
            raise ModelError(f"{csv_path} line {line}: {what} file {value} does not exist "
                             f"(looked for {path})",
                             hint="paths are relative to the CSV's folder")
        return path

    samples, seen = [], set()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        s2 = resolve(row.get("s2", ""), line, "s2")
        if s2 is None:
            raise ModelError(f"{csv_path} line {line}: the s2 column is empty",
                             hint="every row needs an S2 patch")
        if row.get("cloud") and row.get("scl"):
            raise ModelError(f"{csv_path} line {line}: both a cloud mask and an SCL raster",
                             hint="give one of the two")
        pid = row.get("id") or s2.stem
        if pid in seen:
            raise ModelError(f"{csv_path} line {line}: id {pid!r} appears twice",
                             hint="give each row its own id (or S2 file name)")
        seen.add(pid)
        samples.append(PatchFiles(
            id=pid, s2=s2, s1=resolve(row.get("s1", ""), line, "s1"),
            cloud=resolve(row.get("cloud", ""), line, "cloud"),
            scl=resolve(row.get("scl", ""), line, "scl"),
            label=_label_index(row.get("label"), classes, f"{csv_path} line {line}"),
            extra={k: v for k, v in row.items() if k not in _CSV_COLUMNS}))
    return samples


# --------------------------------------------------------------------------- helpers


def load_arrays(dataset: Dataset, indices: Iterable[int] | None = None, *,
                progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Read items of a dataset into stacked numpy arrays (for small sets and evaluation).

    Parameters
    ----------
    dataset
        A :class:`SEN12MSCRDataset`, :class:`PatchFolderDataset` or any dataset whose items
        are dicts of equally shaped arrays.
    indices
        Which items; default all.
    progress
        Called as ``progress(done, total)`` after each item.

    Returns
    -------
    dict
        Each array key stacked along a new first axis (``s2`` -> ``(N, 10, P, P)``); ``label``
        as int64 ``(N,)``; ``id`` as a numpy string array.

    Examples
    --------
    >>> arrays = load_arrays(ds, range(64))   # doctest: +SKIP
    >>> arrays["s2"].shape                    # doctest: +SKIP
    (64, 10, 32, 32)
    """
    chosen = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
    if not chosen:
        raise ModelError("no items to load", hint="pass at least one index")
    items = []
    for n, i in enumerate(chosen, start=1):
        items.append(dataset[i])
        if progress is not None:
            progress(n, len(chosen))
    out: dict[str, np.ndarray] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "label":
            out[key] = np.asarray(values, np.int64)
        elif key == "id":
            out[key] = np.asarray(values, str)
        else:
            out[key] = np.stack(values)
    return out


__all__ = [
    "SEN12MSCR_SEASONS",
    "PatchFiles",
    "PatchFolderDataset",
    "SEN12MSCRDataset",
    "estimate_cloud",
    "load_arrays",
]
