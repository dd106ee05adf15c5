"""The synthetic Sentinel world: land cover, clear-sky Sentinel-2 L2A reflectance, Sentinel-1
backscatter. Deterministic per seed; vectorised numpy/scipy only.

The world is built in two layers:

1. :func:`landcover` draws the truth: km-scale regions of the 10 scene classes (a coastline,
   lakes, a coastal town with a harbour, suburbs, highways, farmland, forest, scrub, barren).
2. A *material* layer derived from the land cover alone (seeded by a checksum of the array, so
   every date of the same world shares it): per-pixel fractions of 12 surface materials (water,
   forest canopy, crop, soil, grass, shrub, sand, three roof kinds, asphalt, concrete) drawn as
   textures that tell the classes apart: field parcels with hedges, street grids with houses and
   gardens, big industrial halls, container stacks, scattered houses, road carriageways.

Sentinel-2 reflectance is the fraction-weighted sum of material spectra (linear mixing) and
Sentinel-1 backscatter the fraction-weighted sum of material gamma0 in linear units, with
double-bounce boosts on buildings and gamma-distributed speckle. The same functions make the
archive's scenes and the model team's training patches, so both look alike.

Seasons and weather, per date (day of year ``doy``): field parcels follow their own green
season (meadows, winter cereals, summer crops, fallow; bare, ploughed and rough between
crops), broadleaf forest, grass and shrub go dormant in winter while evergreen stands do not,
a low winter sun darkens the scene, the sea is calm or wind-roughened, soils are wet or dry,
and winter dates may be snowy (:func:`snow_cover`; Sentinel-2 SCL 11 where snow shows from
above, see :func:`geoflow.synthetic.clouds.scl`).

Calibration
-----------
The values are set from *aggregate* statistics of the 54 development pairs of BigEarthNet
(configilm 0.7.1's mock v1 and reBEN LMDBs; the 6 ``bigearthnet-common`` pairs are the
held-out check and were not looked at for this), per cover family and date, never fitted
patch by patch, and from published values:

- Forest: June broadleaf/mixed stands NIR 0.32-0.36, SWIR1 0.15, red 0.027; boreal conifer
  stands NIR 0.21-0.25 (development patches); C-band volume scattering about -9.3 / -15.1 dB
  sigma0 VV / VH, in line with Santoro & Cartus (2018, ESA CCI Biomass ATBD) and Dostálová et
  al. (2018, Remote Sensing 10:1076), -8 to -10 dB VV over European forests.
- Fields and grass: June pastures NIR up to 0.48, autumn fields red 0.13 / SWIR1 0.34 (bare),
  -10 to -13.6 / -16 to -20 dB; soil moisture moves C-band by about 0.2-0.3 dB per volumetric
  percent (Ulaby, Moore & Fung 1986, Microwave Remote Sensing vol. III; Baghdadi et al. 2016,
  Sensors 16:1531), here +-1.5 dB per date; ploughed bare parcels +3..+6 dB (the December
  field at -6.6 dB VV).
- Water: sea NIR below 0.01 (FACTS.md table). Calm sea -26 dB VV; wind roughens it through
  Bragg scattering up to -12.5 dB VV at moderate winds (CMOD5, Hersbach et al. 2007, JGR
  112:C03006; the development sea patches span -26.5 to -12.5 dB VV but only -32 to -25 dB VH).
- Built-up: real towns are partly green: the urban-labelled development patches have NDVI
  0.5-0.78, so gardens, street trees and grassy yards cover about half the residential
  blocks; double bounce on walls adds +2..+7 dB (Ferro et al. 2011, IEEE TGRS 49:1593).
- Snow: fresh snow reflects 0.75-0.8 in the visible and under 0.1 in the SWIR (Warren 1982,
  Rev. Geophys. 20:67; Dozier 1989, RSE 28:9), which Sen2Cor's NDSI test turns into SCL 11
  (Main-Knorn et al. 2017, Proc. SPIE 10427); under a canopy little of it shows (the snowy
  boreal development patches: visible 0.13-0.24, NIR 0.23-0.35, SWIR 0.03). Dry snow is
  transparent at C band; wet snow lowers backscatter by 3 dB or more (Nagler & Rott 2000, IEEE
  TGRS 38:754; Nagler et al. 2016, Remote Sensing 8:348).
- BigEarthNet's S1 is sigma0 from GRD; the world makes RTC gamma0 as Planetary Computer's
  ``sentinel-1-rtc`` does: gamma0 = sigma0 / cos(incidence) is about 1 dB higher at 30-45
  degrees on flat land (Small 2011, IEEE TGRS 49:3081), so the values are sigma0 + 1 dB.

Examples
--------
>>> import numpy as np
>>> from geoflow.synthetic.world import landcover, s2_reflectance, s1_backscatter_db
>>> lc = landcover(0, (256, 256))
>>> refl = s2_reflectance(lc, np.random.default_rng(1), doy=160)
>>> refl.shape, refl.dtype.name
((10, 256, 256), 'float32')
>>> s1_backscatter_db(lc, np.random.default_rng(2), "ascending").shape
(2, 256, 256)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage, sparse
from scipy.spatial import cKDTree

# The conventions are the package's; the synthetic world uses them, it does not define them.
from geoflow.model._constants import CLASS_COLORS, CLASSES
from geoflow.sentinel import CLOUDY_SCL, S1_BANDS, S2_10M, S2_BANDS

# --------------------------------------------------------------------------- constants

BARREN, FOREST, HERBACEOUS, INDUSTRIAL, RESIDENTIAL, ROAD, SCRUB, SPARSE, WATER, HARBOR = range(10)
NODATA_CLASS = 255

S2_20M: tuple[str, ...] = tuple(b for b in S2_BANDS if b not in S2_10M)

SCL_NODATA, SCL_SATURATED, SCL_DARK, SCL_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED = range(6)
SCL_WATER, SCL_UNCLASSIFIED, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_SNOW = range(6, 12)

#: SCL class of each land-cover class on a clear pixel.
CLASS_SCL: tuple[int, ...] = (5, 4, 4, 5, 5, 5, 4, 4, 6, 5)

# --------------------------------------------------------------------------- materials

MATERIALS: tuple[str, ...] = (
    "water", "forest", "crop", "soil", "grass", "shrub", "sand",
    "roof_red", "roof_grey", "roof_metal", "asphalt", "concrete",
)  # fmt: skip
(M_WATER, M_FOREST, M_CROP, M_SOIL, M_GRASS, M_SHRUB, M_SAND,
 M_ROOF_RED, M_ROOF_GREY, M_ROOF_METAL, M_ASPHALT, M_CONCRETE) = range(12)  # fmt: skip

#: L2A surface reflectance of each material in S2_BANDS order, at the peak of the season.
#: Calibrated to aggregate statistics of the 54 development patches (module docstring): forest
#: canopy to the June forest patches (NIR ~0.34, SWIR1 ~0.15), green crop and grass to the June
#: pastures (NIR ~0.48, well above forest; red ~0.045), water to the sea patches (NIR < 0.01).
#: Soil, sand, roofs, asphalt and concrete follow library spectra (ASTER/ECOSTRESS, USGS
#: splib07: flat, brighter in the SWIR for minerals).
MATERIAL_SPECTRA = np.array(
    [
        # B02   B03   B04   B05   B06   B07   B08   B8A   B11   B12
        [.016, .016, .009, .008, .006, .006, .005, .005, .004, .003],  # water
        [.024, .045, .026, .070, .255, .320, .335, .345, .150, .068],  # forest canopy
        [.030, .062, .035, .112, .370, .460, .490, .500, .210, .105],  # green crop
        [.070, .095, .120, .150, .175, .195, .210, .220, .300, .240],  # bare soil
        [.035, .070, .045, .118, .350, .420, .440, .455, .215, .115],  # grass
        [.035, .055, .055, .090, .180, .210, .230, .240, .200, .120],  # shrub / heath
        [.120, .150, .180, .205, .225, .240, .255, .265, .330, .280],  # sand / rock
        [.080, .090, .140, .170, .190, .200, .210, .215, .240, .200],  # red tile roof
        [.110, .120, .125, .130, .135, .140, .145, .148, .160, .150],  # grey roof
        [.230, .250, .260, .265, .270, .275, .280, .282, .270, .240],  # metal / bright roof
        [.060, .070, .075, .080, .085, .090, .095, .097, .110, .100],  # asphalt
        [.140, .155, .165, .175, .185, .190, .200, .205, .230, .210],  # concrete
    ],
    dtype=np.float32,
).T  # (10 bands, 12 materials)

#: Dormant (leaf-off, senescent) spectra that forest, grass and shrub blend toward in winter:
#: leafless broadleaf stands over litter, dry grass. NIR drops to about half, SWIR rises.
DORMANT_SPECTRA = {
    M_FOREST: np.array([.030, .042, .040, .060, .120, .140, .160, .165, .150, .090], np.float32),
    M_GRASS: np.array([.050, .070, .080, .110, .150, .170, .190, .200, .240, .170], np.float32),
    M_SHRUB: np.array([.040, .055, .065, .085, .120, .140, .155, .160, .190, .130], np.float32),
}

#: Fresh snow in S2_BANDS order: bright in the visible and NIR, dark in the SWIR (B11/B12 absorb
#: in ice), the signature Sen2Cor's snow test (NDSI) looks for; SCL then says 11.
SNOW_SPECTRUM = np.array([.80, .79, .77, .75, .73, .70, .67, .65, .06, .04], np.float32)
#: Share of a pixel's snow that the sensor sees, per material: a forest canopy hides most of
#: the snow under it (the snowy boreal patches: visible 0.13-0.24 but NIR of a canopy).
SNOW_VISIBLE = np.array([0.0, 0.3, 1, 1, 1, 0.8, 1, 1, 1, 1, 0.9, 0.9], np.float32)

#: Sentinel-1 gamma0 (dB) of each material, (VV, VH). Buildings get an extra double-bounce
#: boost per building and orbit on top of this (see ``_Materials.sar_gain``). BigEarthNet's S1
#: is sigma0 from GRD; gamma0 = sigma0 / cos(incidence) is about 1 dB higher at 30-45 degrees,
#: so the development patches' sigma0 + 1 dB is what these follow: forest -9.3/-15.1 dB sigma0
#: (June forest patches), fields -10 to -13.6 / -16 to -20 dB; water is the *calm* sea (the
#: darkest sea patches: -26/-31 dB); wind adds up to +13 dB in VV (see :data:`SEA_WIND_DB`).
MATERIAL_SAR_DB = np.array(
    [
        [-25.5, -31.0],  # water (calm; wind adds a per-date roughness field)
        [-8.3, -14.2],  # forest: volume scattering, high VH
        [-10.0, -16.5],  # green crop
        [-13.0, -21.0],  # bare soil (dry, smooth; moisture and ploughing raise it per date)
        [-11.0, -17.5],  # grass
        [-9.5, -15.5],  # shrub
        [-16.0, -25.0],  # sand / rock (smooth, dry)
        [-5.0, -12.0],  # red tile roof
        [-5.0, -12.0],  # grey roof
        [-3.0, -10.0],  # metal roof
        [-18.0, -26.0],  # asphalt (specular)
        [-10.0, -18.0],  # concrete
    ],
    dtype=np.float32,
).T  # (2 pols, 12 materials)
_SAR_LIN = (10.0 ** (MATERIAL_SAR_DB / 10.0)).astype(np.float32)

#: Equivalent number of looks of the speckle (multi-looked GRD terrain-corrected to 10 m).
SAR_LOOKS = 4.0
#: Day of year of the middle of the growing season (fields' greenness curves are centred near
#: it; leaf-off and snow come half a year later).
DOY_REF = 166
#: Sea-surface wind: per date, VV rises by a uniform 0..13 dB over calm water (Bragg scattering
#: from capillary waves; the development sea patches span -26 to -12.5 dB VV) and VH by 0.3 times
#: that (their VH spans only -32 to -25 dB).
SEA_WIND_DB = 13.0
_VH_WIND_SHARE = 0.3
#: Materials that soil moisture and ploughing change in SAR (fields, grass, soil, shrub, sand).
_SOIL_LIKE = np.array([0, 0, 1, 1, 1, 0.5, 1, 0, 0, 0, 0, 0], np.float32)


def winterness(doy: int | float) -> float:
    """0 in the growing season (late April to late September) .. 1 on 20 January.

    Examples
    --------
    >>> winterness(20), winterness(200)
    (1.0, 0.0)
    """
    c = float(np.cos(2 * np.pi * (float(doy) - 20.0) / 365.25))
    return round(max(0.0, c) ** 0.8, 6)


# --------------------------------------------------------------------------- noise helpers


def _interp_matrix(n_out: int, cell: float, offset: float, n_in: int) -> sparse.csr_matrix:
    """Sparse (n_out, n_in) cubic B-spline interpolation from a coarse grid to pixels."""
    p = np.arange(n_out) / cell + offset + 1.0
    base = np.floor(p).astype(np.int64)
    t = (p - base).astype(np.float32)
    w = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1,
                  t**3], 1) / 6
    cols = base[:, None] + np.arange(-1, 3)[None, :]
    rows = np.repeat(np.arange(n_out), 4)
    return sparse.csr_matrix((w.ravel(), (rows, cols.ravel())), shape=(n_out, n_in))


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float,
                 aniso: float = 1.0) -> np.ndarray:
    """Smooth noise with feature size ``cell`` px (cubic B-spline of a coarse normal grid)."""
    h, w = shape
    cy, cx = max(cell * aniso, 1.0), max(cell / aniso, 1.0)
    gh, gw = int(np.ceil(h / cy)) + 5, int(np.ceil(w / cx)) + 5
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    ky = _interp_matrix(h, cy, float(rng.random()), gh)
    kx = _interp_matrix(w, cx, float(rng.random()), gw)
    z = np.asarray(ky @ np.asarray((kx @ grid.T).T), dtype=np.float32)
    sd = float(z[::4, ::4].std()) or 1.0
    return ((z - float(z[::4, ::4].mean())) / sd).astype(np.float32)


def _fractal(rng: np.random.Generator, shape: tuple[int, int], cell: float, octaves: int = 3,
             persistence: float = 0.5, aniso: float = 1.0) -> np.ndarray:
    """Sum of value-noise octaves, about zero mean and unit standard deviation."""
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * _value_noise(rng, shape, max(cell / 2**o, 1.5), aniso)
        total += amp * amp
        amp *= persistence
    out /= np.float32(np.sqrt(total))
    return out


def _hash2(a: np.ndarray, b: np.ndarray, table: np.ndarray) -> np.ndarray:
    """A uniform [0,1) value per integer cell (a, b), looked up in a random table."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663)
    return table[h & (table.size - 1)]


def _mark_polyline(mask: np.ndarray, pts: np.ndarray) -> None:
    """Set the pixels under a polyline (points as (row, col)) by dense sampling."""
    h, w = mask.shape
    seg = np.diff(pts, axis=0)
    n = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) * 2).astype(int), 1)
    t = np.concatenate([np.arange(k) / k for k in n])
    i = np.repeat(np.arange(len(seg)), n)
    p = pts[i] + seg[i] * t[:, None]
    r, c = np.rint(p[:, 0]).astype(int), np.rint(p[:, 1]).astype(int)
    ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    mask[r[ok], c[ok]] = True


def _wiggly_line(rng: np.random.Generator, p0: np.ndarray, p1: np.ndarray,
                 amp: float) -> np.ndarray:
    """Points of a gently curving line from p0 to p1 (a highway or a river)."""
    length = float(np.hypot(*(p1 - p0)))
    n = max(int(length / 4), 8)
    t = np.linspace(0.0, 1.0, n)
    perp = np.array([-(p1 - p0)[1], (p1 - p0)[0]]) / max(length, 1e-6)
    k = rng.normal(0, 1, 4)
    off = amp * (k[0] * np.sin(np.pi * t) + 0.5 * k[1] * np.sin(2 * np.pi * t)
                 + 0.25 * k[2] * np.sin(3 * np.pi * t + k[3]))
    return p0 + (p1 - p0) * t[:, None] + perp * off[:, None]


# --------------------------------------------------------------------------- land cover


def landcover(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Draw a land-cover truth raster of the 10 scene classes at 10 m.

    Parameters
    ----------
    seed
        World seed; the same seed and shape give the same array.
    shape
        (rows, cols) in 10 m pixels; at least 64 x 64.

    Returns
    -------
    numpy.ndarray
        uint8 (rows, cols) class indices into :data:`CLASSES`.

    Examples
    --------
    >>> lc = landcover(3, (128, 256))
    >>> lc.shape, int(lc.max()) < len(CLASSES)
    ((128, 256), True)
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 64 or w < 64:
        raise ValueError(f"landcover shape {shape} is too small; use at least 64 x 64 px")
    rng = np.random.default_rng([int(seed), 7001])
    m = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Sea on one side of a warped coastline; the coast's normal points roughly north or south
    # so that a wide (east-west) extent has coast along its whole width.
    theta = rng.choice([-1.0, 1.0]) * np.pi / 2 + rng.uniform(-0.35, 0.35)
    normal = np.array([np.sin(theta), np.cos(theta)], np.float32)  # (row, col) direction
    s = (yy - h / 2) * normal[0] + (xx - w / 2) * normal[1]
    s += 0.10 * m * _fractal(rng, (h, w), 0.5 * m, octaves=4, persistence=0.55)
    sea_frac = rng.uniform(0.14, 0.22)
    sea = s > np.quantile(s[::4, ::4], 1.0 - sea_frac)
    dist_sea = ndimage.distance_transform_edt(~sea).astype(np.float32)

    # The town sits on the coast near the middle; the harbour on its waterfront.
    coast_r, coast_c = np.nonzero((dist_sea > 0) & (dist_sea <= 1.5))
    mid = np.abs(coast_c - w / 2) + np.abs(coast_r - h / 2) * 0.5
    if coast_r.size:
        k = np.argsort(mid)[: max(coast_r.size // 8, 1)]
        pick = int(rng.choice(k))
        town = np.array([coast_r[pick], coast_c[pick]], np.float32) - normal * 0.06 * m
    else:  # pragma: no cover - the quantile always leaves coast
        town = np.array([h / 2, w / 2], np.float32)
    town_r = 0.42 * m
    dist_town = np.hypot(yy - town[0], xx - town[1])

    # Km-scale regions: warped Voronoi cells on a jittered grid, each with one zone type.
    cell = float(np.clip(m / 9.0, 36.0, 110.0))
    gy, gx = np.mgrid[-1 : h / cell + 1, -1 : w / cell + 1]
    seeds = np.stack([(gy + rng.uniform(0.1, 0.9, gy.shape)) * cell,
                      (gx + rng.uniform(0.1, 0.9, gx.shape)) * cell], -1).reshape(-1, 2)
    wy = 0.35 * cell * _fractal(rng, (h, w), cell * 0.6, octaves=3)
    wx = 0.35 * cell * _fractal(rng, (h, w), cell * 0.6, octaves=3)
    q = np.stack([(yy + wy)[::2, ::2].ravel(), (xx + wx)[::2, ::2].ravel()], -1)
    _, idx = cKDTree(seeds).query(q, workers=1)
    region = idx.reshape((h + 1) // 2, (w + 1) // 2).repeat(2, 0).repeat(2, 1)[:h, :w]

    # Zone of each region from its seed: urban near the town, rural by two smooth fields.
    sr = np.clip(np.rint(seeds[:, 0]), 0, h - 1).astype(int)
    sc = np.clip(np.rint(seeds[:, 1]), 0, w - 1).astype(int)
    f_wood = _fractal(rng, (h, w), 0.6 * m, octaves=2)[sr, sc]
    f_dry = _fractal(rng, (h, w), 0.5 * m, octaves=2)[sr, sc]
    u = np.exp(-((dist_town[sr, sc] / town_r) ** 2)) + 0.15 * rng.standard_normal(len(seeds))
    near_coast = dist_sea[sr, sc] < 0.12 * m
    zone = np.full(len(seeds), HERBACEOUS, np.uint8)
    zone[f_wood > 0.35] = FOREST
    zone[(f_dry > 0.45) & (f_wood <= 0.35)] = SCRUB
    zone[(f_dry > 1.05) & (f_wood <= 0.6)] = BARREN
    village = rng.random(len(seeds)) < 0.06
    zone[village] = SPARSE
    zone[(u > 0.25) & (u <= 0.55)] = SPARSE
    urban = u > 0.55
    zone[urban] = RESIDENTIAL
    zone[urban & (near_coast | (rng.random(len(seeds)) < 0.2))] = INDUSTRIAL
    # Every zone class present at least once: promote the best-scoring rural region.
    rural = ~urban & (u <= 0.25)
    visible = np.zeros(len(seeds), bool)
    visible[np.unique(region[::8, ::8])] = True
    for cls, score in ((FOREST, f_wood), (SCRUB, f_dry), (BARREN, f_dry - f_wood),
                       (HERBACEOUS, -np.abs(f_wood) - np.abs(f_dry)), (SPARSE, u),
                       (RESIDENTIAL, u), (INDUSTRIAL, u)):
        if not np.any(zone[visible] == cls):
            cand = np.where(visible & (rural if cls not in (RESIDENTIAL, INDUSTRIAL, SPARSE)
                                       else ~np.isin(zone, (RESIDENTIAL, INDUSTRIAL))))[0]
            if cand.size:
                zone[cand[np.argmax(score[cand])]] = cls
    lc = zone[region]

    # Lakes: blobs of a smooth field, away from the sea and the town.
    lake_f = _fractal(rng, (h, w), 0.12 * m, octaves=2)
    lake_ok = (dist_sea > 0.08 * m) & (dist_town > town_r)
    lake = lake_ok & (lake_f > np.quantile(lake_f[::4, ::4][lake_ok[::4, ::4]], 0.97)
                      if lake_ok.any() else False)

    # Highways: two or three across the land, and one into town; interchanges where they meet.
    road = np.zeros((h, w), bool)
    ends = []
    for n in range(int(rng.integers(2, 4))):
        if n % 2 == 0:  # west to east
            p0 = np.array([rng.uniform(0.15, 0.85) * h, -5.0])
            p1 = np.array([rng.uniform(0.15, 0.85) * h, w + 5.0])
        else:  # north to south
            p0 = np.array([-5.0, rng.uniform(0.15, 0.85) * w])
            p1 = np.array([h + 5.0, rng.uniform(0.15, 0.85) * w])
        ends.append(_wiggly_line(rng, p0, p1, 0.08 * m))
    edge = np.array([h + 5.0, rng.uniform(0.2, 0.8) * w]) if normal[0] < 0 else np.array(
        [-5.0, rng.uniform(0.2, 0.8) * w])
    ends.append(_wiggly_line(rng, edge, town, 0.05 * m))
    for pts in ends:
        line = np.zeros((h, w), bool)
        _mark_polyline(line, pts)
        road |= line
    half = 3.2 if m >= 200 else 2.2
    dist_road = ndimage.distance_transform_edt(~road).astype(np.float32)
    counts = np.zeros((h, w), np.uint8)
    for pts in ends:
        line = np.zeros((h, w), bool)
        _mark_polyline(line, pts)
        counts += ndimage.binary_dilation(line, iterations=2)
    cross = counts >= 2
    road_zone = dist_road <= half
    if cross.any():
        # Interchanges (ramps and loops) are a few hundred metres across.
        road_zone |= ndimage.distance_transform_edt(~cross) <= 6.0 * half

    # Harbour: the town's waterfront strip plus piers into the sea.
    harbour = (~sea) & (dist_sea <= 0.05 * m) & (dist_town <= 0.6 * town_r)
    hr, hc = np.nonzero(harbour & (dist_sea <= 1.5))
    pier = np.zeros((h, w), bool)
    if hr.size:
        for j in rng.choice(hr.size, size=min(int(rng.integers(3, 7)), hr.size), replace=False):
            p0 = np.array([hr[j], hc[j]], np.float32)
            p1 = p0 + normal * rng.uniform(0.03, 0.07) * m
            _mark_polyline(pier, np.stack([p0, p1]))
        pier = ndimage.binary_dilation(pier, iterations=1 if m < 200 else 2) & sea

    lc[lake] = WATER
    lc[sea] = WATER
    lc[road_zone & ~sea & ~lake] = ROAD
    lc[harbour] = HARBOR
    lc[pier] = HARBOR
    return lc.astype(np.uint8)


# --------------------------------------------------------------------------- materials layer


@dataclass(frozen=True)
class _Materials:
    """Per-pixel material fractions and texture of one land-cover array (date-independent)."""

    frac: np.ndarray  # (12, H, W) float32, sums to 1 minus ``field``
    field: np.ndarray  # (H, W) float32 fraction of crop-or-soil field interior
    g_min: np.ndarray  # (H, W) float32 field greenness off season (0 ploughed .. winter cereal)
    g_max: np.ndarray  # (H, W) float32 field greenness at the parcel's peak
    g_peak: np.ndarray  # (H, W) float32 day of year of the parcel's peak
    g_width: np.ndarray  # (H, W) float32 days: width of the parcel's green season
    rough: np.ndarray  # (H, W) float32 SAR gain of a ploughed parcel while bare (1 = smooth)
    conifer: np.ndarray  # (H, W) float32 evergreen share of forest (no leaf-off, darker NIR)
    vigour: np.ndarray  # (H, W) float32 regional gain on vegetation red edge + NIR
    bright: np.ndarray  # (H, W) float32 multiplicative optical texture
    sar_gain: np.ndarray  # (2 orbits, H, W) float32 linear gain (double bounce, moisture)

    def greenness(self, doy: int) -> np.ndarray:
        """Field greenness (H, W) on a day of year: a bell around each parcel's peak."""
        dd = (float(doy) - self.g_peak + 182.5) % 365.0 - 182.5
        bell = np.exp(-((dd / np.maximum(self.g_width, 1.0)) ** 2))
        return (self.g_min + (self.g_max - self.g_min) * bell).astype(np.float32)


_CACHE: dict[tuple[int, tuple[int, int]], _Materials] = {}


def _materials(lc: np.ndarray) -> _Materials:
    """Material layer of ``lc``, seeded by its checksum so every date shares it (cached)."""
    key = (zlib.crc32(np.ascontiguousarray(lc).tobytes()), lc.shape)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _build_materials(lc, key[0])
        if len(_CACHE) >= 4:  # a few worlds at most (archive + training)
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = hit
    return hit


def _build_materials(lc: np.ndarray, crc: int) -> _Materials:
    h, w = lc.shape
    rng = np.random.default_rng([crc, 7002])
    table = rng.random(1 << 16).astype(np.float32)
    table2 = rng.random(1 << 16).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    f = np.zeros((12, h, w), np.float32)
    bright = np.ones((h, w), np.float32)
    boost = np.ones((2, h, w), np.float32)
    is_c = [lc == c for c in range(10)]

    # Street grids and buildings share one town-wide rotation.
    ang = rng.uniform(-0.5, 0.5)
    u = (xx * np.cos(ang) + yy * np.sin(ang)).astype(np.float32) + 10_000
    v = (-xx * np.sin(ang) + yy * np.cos(ang)).astype(np.float32) + 10_000

    def building_boost(bid_a: np.ndarray, bid_b: np.ndarray, where: np.ndarray,
                       mean_db: float) -> None:
        # Double bounce depends on the wall's aspect to the look direction: one draw per
        # building and orbit, log-normal in linear units.
        for o, tab in enumerate((table, table2)):
            z = _hash2(bid_a + 7 * o, bid_b, tab)
            g = 10 ** ((mean_db + 4.0 * (z - 0.5) + 6.0 * (z > 0.85)) / 10)
            boost[o][where] = g[where]

    # Residential: 100 x 140 m blocks, 1 px streets, 20 m houses on ~half the lots, gardens.
    m = is_c[RESIDENTIAL]
    if m.any():
        bu, bv = 10, 14
        street = ((u % bu) < 1.0) | ((v % bv) < 1.0)
        hu, hv = np.floor(u / 2).astype(np.int64), np.floor(v / 2).astype(np.int64)
        lot = _hash2(hu, hv, table)
        # Real towns are partly green (the urban development patches have NDVI 0.5-0.78):
        # houses on 45 % of the lots, half of each garden under trees, street trees.
        house = ~street & (lot < 0.45)
        red = _hash2(hu + 3, hv, table2) < 0.6
        tree = _fractal(rng, (h, w), 3, octaves=1) > 0.0
        f[M_ASPHALT][m & street] = 1
        f[M_FOREST][m & street & tree] = 0.35
        f[M_ASPHALT][m & street & tree] = 0.65
        f[M_ROOF_RED][m & house & red] = 1
        f[M_ROOF_GREY][m & house & ~red] = 1
        garden = m & ~street & ~house
        f[M_GRASS][garden & ~tree] = 1
        f[M_FOREST][garden & tree] = 1
        building_boost(hu, hv, m & house, 3.0)

    # Industrial: 240 x 300 m blocks, 2 px streets, big halls, parking.
    m = is_c[INDUSTRIAL]
    if m.any():
        bu, bv = 24, 30
        street = ((u % bu) < 2.0) | ((v % bv) < 2.0)
        su, sv = np.floor(u / 12).astype(np.int64), np.floor(v / 15).astype(np.int64)
        inset = ((u % 12) >= 3) & ((u % 12) < 11) & ((v % 15) >= 3) & ((v % 15) < 14)
        z = _hash2(su, sv, table)
        hall = ~street & inset & (z < 0.7)
        metal = _hash2(su + 5, sv, table2) < 0.6
        f[M_ASPHALT][m & street] = 1
        f[M_ROOF_METAL][m & hall & metal] = 1
        f[M_ROOF_GREY][m & hall & ~metal] = 1
        yard = m & ~street & ~hall
        grassy = _hash2(su + 11, sv, table) < 0.25
        f[M_CONCRETE][yard & ~grassy] = 0.55
        f[M_ASPHALT][yard & ~grassy] = 0.45
        f[M_GRASS][yard & grassy] = 1
        building_boost(su, sv, m & hall, 5.0)
        boost[:, yard & ~grassy] *= np.float32(10 ** 0.4)  # vehicles, fences, clutter: +4 dB

    # Harbour: quays (concrete), container stacks (3 x 8 px, coloured), warehouses.
    m = is_c[HARBOR]
    if m.any():
        cu, cv = np.floor(u / 8).astype(np.int64), np.floor(v / 3).astype(np.int64)
        z = _hash2(cu, cv, table)
        gap = ((u % 8) < 1) | ((v % 3) < 1)
        box = ~gap & (z < 0.55)
        ware = ~gap & (z >= 0.55) & (z < 0.75)
        colour = _hash2(cu + 1, cv, table2)
        f[M_CONCRETE][m & ~box & ~ware] = 1
        f[M_ROOF_RED][m & box & (colour < 0.4)] = 1
        f[M_ROOF_GREY][m & box & (colour >= 0.4) & (colour < 0.7)] = 1
        f[M_ROOF_METAL][m & ((box & (colour >= 0.7)) | ware)] = 1
        building_boost(cu, cv, m & (box | ware), 7.0)

    # Sparsely built: meadow and trees, a house (2 x 2 px) on a quarter of 70 m lots.
    m = is_c[SPARSE]
    if m.any():
        hu, hv = np.floor(u / 7).astype(np.int64), np.floor(v / 7).astype(np.int64)
        jit = (np.floor(_hash2(hu, hv, table2) * 4)).astype(np.int64)
        house = (_hash2(hu, hv, table) < 0.6) & ((u % 7) - jit >= 1) & ((u % 7) - jit < 3) \
            & ((v % 7) - jit >= 1) & ((v % 7) - jit < 3)
        n = _fractal(rng, (h, w), 6, octaves=2)
        bg = m & ~house
        f[M_GRASS][bg] = np.clip(0.65 - 0.25 * n, 0.2, 1)[bg]
        f[M_FOREST][bg] = np.clip(0.28 + 0.25 * n, 0, 0.8)[bg]
        f[M_SOIL][bg] = 1 - f[M_GRASS][bg] - f[M_FOREST][bg]
        red = _hash2(hu + 2, hv, table2) < 0.6
        f[M_ROOF_RED][m & house & red] = 1
        f[M_ROOF_GREY][m & house & ~red] = 1
        # Lanes along every second row of lots, and bare yards beside the houses.
        lane = m & ~house & ((v % 14) < 1)
        f[:, lane] = 0
        f[M_ASPHALT][lane] = 0.8
        f[M_GRASS][lane] = 0.2
        yard = m & ~house & ~lane & ((u % 7) - jit >= 0) & ((u % 7) - jit < 4) \
            & ((v % 7) - jit >= 0) & ((v % 7) - jit < 4) & (_hash2(hu, hv, table) < 0.6)
        f[:, yard] = 0
        f[M_SOIL][yard] = 0.4
        f[M_CONCRETE][yard] = 0.3
        f[M_GRASS][yard] = 0.3
        building_boost(hu, hv, m & house, 2.0)

    # Herbaceous: parcels in bands of 220 m, widths 150-450 m, hedges between them.
    field = np.zeros((h, w), np.float32)
    g_min = np.zeros((h, w), np.float32)
    g_max = np.zeros((h, w), np.float32)
    g_peak = np.full((h, w), DOY_REF, np.float32)
    g_width = np.full((h, w), 60.0, np.float32)
    rough = np.ones((h, w), np.float32)
    m = is_c[HERBACEOUS]
    if m.any():
        a2 = ang + rng.uniform(-0.3, 0.3)
        fu = (xx * np.cos(a2) + yy * np.sin(a2)).astype(np.float32) + 10_000
        fv = (-xx * np.sin(a2) + yy * np.cos(a2)).astype(np.float32) + 10_000
        band = np.floor(fv / 22).astype(np.int64)
        width = 15 + 30 * table[band & 0xFFFF]
        shift = table2[band & 0xFFFF] * width
        col = np.floor((fu + shift) / width).astype(np.int64)
        hedge = ((fv % 22) < 1) | (((fu + shift) % width) < 1)
        z = _hash2(band, col, table)
        z2 = _hash2(band + 9, col, table2)
        z3 = _hash2(band + 17, col, table)
        # Parcel kinds: meadow/pasture (green most of the year), winter cereal (green from
        # autumn, peak in May), summer crop (bare until May, peak in July-August), fallow.
        # Meadows and pastures are half the parcels (most of the development set's farmland).
        kind = np.digitize(z, (0.5, 0.7, 0.94))  # 0 meadow, 1 winter cereal, 2 summer, 3 fallow
        gmin = np.choose(kind, (0.5 + 0.2 * z2, 0.2 + 0.15 * z2, 0.02 * z2, 0.05 + 0.1 * z2))
        gmax = np.choose(kind, (0.8 + 0.2 * z3, 0.8 + 0.2 * z3, 0.75 + 0.25 * z3,
                                0.25 + 0.2 * z3))
        peak = np.choose(kind, (150 + 40 * z2, 140 + 25 * z3, 175 + 35 * z3, 150 + 40 * z2))
        width = np.choose(kind, (80 + 30 * z3, 45 + 15 * z2, 45 + 15 * z2, 60 + 20 * z3))
        # Hedgerows and tree lines between parcels, and the odd field tree: farmland is not
        # treeless, so trees among grass do not by themselves mean a village.
        ftree = m & ~hedge & (_fractal(rng, (h, w), 2, octaves=1) > 2.0) & (kind == 0)
        f[M_FOREST][m & hedge] = 0.5
        f[M_SHRUB][m & hedge] = 0.3
        f[M_GRASS][m & hedge] = 0.2
        f[M_FOREST][ftree] = 0.7
        f[M_GRASS][ftree] = 0.3
        inner = m & ~hedge & ~ftree
        field[inner] = 1
        g_min[inner] = gmin[inner]
        g_max[inner] = gmax[inner]
        g_peak[inner] = peak[inner]
        g_width[inner] = width[inner]
        # Ploughed parcels (half the crops) are rough while bare: +3..+6 dB in VV (the dark
        # December field of the development set: -6.6 dB VV sigma0).
        plough = inner & (kind >= 1) & (z2 < 0.5)
        rough[plough] = (10 ** ((3.0 + 3.0 * z3) / 10))[plough]
        bright[inner] *= (1 + 0.03 * np.sin(fu * 2.1))[inner]  # drill rows
        boost[:, inner] *= (10 ** ((4.0 * (z - 0.5)) / 10))[inner]  # parcel soil moisture

    # Dense forest: canopy with crown texture and the odd clearing.
    m = is_c[FOREST]
    if m.any():
        n = _fractal(rng, (h, w), 2.5, octaves=2)
        clearing = _fractal(rng, (h, w), 20, octaves=2) > 1.9
        f[M_FOREST][m & ~clearing] = 0.9
        f[M_SHRUB][m & ~clearing] = 0.1
        f[M_GRASS][m & clearing] = 1
        bright[m] *= (1 + 0.12 * n)[m]
        boost[:, m] *= (1 + 0.25 * n)[m]

    # Scrub: patchy shrubs on soil and grass.
    m = is_c[SCRUB]
    if m.any():
        n = _fractal(rng, (h, w), 4, octaves=2)
        sh = np.clip(0.5 + 0.35 * n, 0.05, 0.95)
        f[M_SHRUB][m] = sh[m]
        f[M_SOIL][m] = (0.6 * (1 - sh))[m]
        f[M_GRASS][m] = (0.4 * (1 - sh))[m]
        bright[m] *= (1 + 0.06 * n)[m]

    # Barren: sand and rock with dune-scale brightness.
    m = is_c[BARREN]
    if m.any():
        n = _fractal(rng, (h, w), 15, octaves=3)
        sd = np.clip(0.7 + 0.2 * n, 0.3, 1)
        f[M_SAND][m] = sd[m]
        f[M_SOIL][m] = (1 - sd)[m]
        bright[m] *= (1 + 0.12 * n)[m]

    # Road: asphalt carriageways in the middle of the corridor, grassy verges outside.
    m = is_c[ROAD]
    if m.any():
        d = ndimage.distance_transform_edt(m)
        # Carriageways down the corridor; in interchanges, concentric ramps with grass between.
        lane = m & (d >= 2.0) & ((d < 4.0) | ((d % 7.0) < 3.0))
        f[M_ASPHALT][lane] = 1
        f[M_GRASS][m & ~lane] = 0.7
        f[M_SOIL][m & ~lane] = 0.3

    # Water: a little turbidity texture.
    m = is_c[WATER]
    if m.any():
        f[M_WATER][m] = 1
        bright[m] *= (1 + 0.08 * _fractal(rng, (h, w), 40, octaves=2))[m]

    # Regional variability: evergreen share of forest (boreal conifer stands have NIR 0.21-0.25
    # against 0.32-0.36 for the June broadleaf/mixed stands), vegetation vigour (red edge and
    # NIR, +-12 %), and overall brightness (+-5 %), on km scales.
    big = max(min(h, w) / 5.0, 20.0)
    conifer = np.clip(0.5 + 0.45 * _fractal(rng, (h, w), big, octaves=2), 0, 1)
    vigour = np.clip(1 + 0.12 * _fractal(rng, (h, w), big, octaves=2), 0.7, 1.3)
    bright *= np.clip(1 + 0.05 * _fractal(rng, (h, w), big, octaves=2), 0.85, 1.15)
    return _Materials(frac=f, field=field, g_min=g_min, g_max=g_max, g_peak=g_peak,
                      g_width=g_width, rough=rough, conifer=conifer.astype(np.float32),
                      vigour=vigour.astype(np.float32), bright=bright, sar_gain=boost)


# --------------------------------------------------------------------------- sensors


def snow_cover(landcover: np.ndarray, rng: np.random.Generator, doy: int) -> np.ndarray:
    """Snow on the ground on one date: a fraction per pixel, 0 in the growing season.

    A winter date is snowy with a probability that grows with :func:`winterness` (0.8 in
    January); its cover (30-100 % of the land) comes as km-scale patches. Open water stays open.

    Parameters
    ----------
    landcover
        uint8 (H, W) class indices.
    rng
        Generator of this date's weather.
    doy
        Day of year.

    Returns
    -------
    numpy.ndarray
        float32 (H, W) snow fraction on the ground (0..1). Pass it to :func:`s2_reflectance`,
        :func:`s1_backscatter_db` and :func:`geoflow.synthetic.clouds.scl` of the same date.

    Examples
    --------
    >>> lc = landcover(0, (128, 128))
    >>> float(snow_cover(lc, np.random.default_rng(0), 200).max())
    0.0
    """
    lc = np.asarray(landcover)
    h, w = lc.shape
    wint = winterness(doy)
    if wint <= 0.0 or rng.random() >= 0.8 * wint ** 0.5:
        return np.zeros((h, w), np.float32)
    level = float(rng.uniform(0.3, 1.0))
    f = _fractal(rng, (h, w), max(min(h, w) / 3.0, 16.0), octaves=3)
    t = float(np.quantile(f[::4, ::4], 1.0 - level)) if level < 0.999 else float(f.min()) - 1
    snow = np.clip((f - t) / 0.4, 0.0, 1.0)
    snow[lc == WATER] = 0.0
    return snow.astype(np.float32)


def visible_snow(landcover: np.ndarray, snow: np.ndarray) -> np.ndarray:
    """Share of each pixel that shows snow from above (a canopy hides most snow under it)."""
    mat = _materials(np.asarray(landcover))
    h, w = snow.shape
    seen = (SNOW_VISIBLE @ mat.frac.reshape(12, -1)).reshape(h, w) + mat.field
    return (np.asarray(snow, np.float32) * np.clip(seen, 0, 1)).astype(np.float32)


def s2_reflectance(landcover: np.ndarray, rng: np.random.Generator, doy: int,
                   snow: np.ndarray | None = None) -> np.ndarray:
    """Clear-sky Sentinel-2 L2A surface reflectance of a land-cover raster, all bands at 10 m.

    Parameters
    ----------
    landcover
        uint8 (H, W) class indices (from :func:`landcover`).
    rng
        Generator for the per-date noise (the texture is fixed by the land cover itself).
    doy
        Day of year: field parcels follow their season, broadleaf forest, grass and shrub go
        dormant in winter, and a low winter sun darkens the scene (terrain and canopy shadows
        that L2A does not remove).
    snow
        Optional (H, W) snow fraction on the ground (:func:`snow_cover`); ``None``: no snow.

    Returns
    -------
    numpy.ndarray
        float32 (10, H, W) reflectance (0..1) in :data:`S2_BANDS` order. Make 20 m bands with
        :func:`to_20m` as the archive does.

    Examples
    --------
    >>> import numpy as np
    >>> lc = np.full((64, 64), WATER, np.uint8)
    >>> r = s2_reflectance(lc, np.random.default_rng(0), 160)
    >>> bool(r[6].mean() < 0.02)  # water is dark in NIR
    True
    """
    lc = np.asarray(landcover)
    mat = _materials(lc)
    h, w = lc.shape
    fr = mat.frac.reshape(12, h, w)
    out = (MATERIAL_SPECTRA @ mat.frac.reshape(12, -1)).reshape(10, h, w)
    g = mat.greenness(doy)
    crop, soil = MATERIAL_SPECTRA[:, M_CROP, None, None], MATERIAL_SPECTRA[:, M_SOIL, None, None]
    out += mat.field * (g * crop + (1 - g) * soil)
    # Evergreen stands are darker in the NIR; broadleaf forest, grass and shrub go dormant.
    conifer_spec = np.array([.020, .035, .020, .055, .165, .200, .215, .220, .100, .045],
                            np.float32)[:, None, None]
    forest = MATERIAL_SPECTRA[:, M_FOREST, None, None]
    out += fr[M_FOREST] * mat.conifer * (conifer_spec - forest)
    dorm = np.float32(min(1.0, 1.25 * winterness(doy + 15)))  # leaves fall before mid-winter
    if dorm > 0:
        for mi, share in ((M_FOREST, 1 - mat.conifer), (M_GRASS, 0.7), (M_SHRUB, 0.6)):
            spec = MATERIAL_SPECTRA[:, mi, None, None]
            out += fr[mi] * (dorm * share) * (DORMANT_SPECTRA[mi][:, None, None] - spec)
    veg = fr[M_FOREST] + fr[M_GRASS] + fr[M_SHRUB] + mat.field * g
    out[3:8] *= 1 + (mat.vigour - 1) * np.clip(veg, 0, 1)
    if snow is not None and np.any(snow > 0):
        s = visible_snow(lc, snow)
        out *= 1 - s
        out += s * SNOW_SPECTRUM[:, None, None]
    # Per-date: low winter sun, a residual atmospheric gain, pixel noise shared by bands, band
    # noise. (The darkest winter development patches reach NIR 0.05.)
    sun = np.float32(1 - 0.6 * winterness(doy) * rng.uniform(0.2, 1.0))
    gain = np.float32((1 + rng.normal(0, 0.015)) * sun)
    out *= mat.bright * (gain + np.float32(0.02) * rng.standard_normal((h, w), np.float32))
    out += np.float32(0.002) * rng.standard_normal((10, h, w), np.float32)
    np.clip(out, 0.0005, 1.0, out=out)
    return out


def s1_backscatter_db(landcover: np.ndarray, rng: np.random.Generator,
                      orbit: Literal["ascending", "descending"], doy: int = DOY_REF,
                      snow: np.ndarray | None = None) -> np.ndarray:
    """Sentinel-1 RTC gamma0 (dB) of a land-cover raster, VV and VH at 10 m, with speckle.

    Parameters
    ----------
    landcover
        uint8 (H, W) class indices.
    rng
        Generator for speckle, sea-surface wind and soil moisture of this acquisition.
    orbit
        "ascending" or "descending": buildings' double bounce differs by look direction.
    doy
        Day of year: crops grow, bare ploughed parcels are rough.
    snow
        Optional snow fraction (:func:`snow_cover`): dry snow is transparent at C band; wet
        snow (on some dates) absorbs, -3 dB where it lies open.

    Returns
    -------
    numpy.ndarray
        float32 (2, H, W) dB, (VV, VH).

    Examples
    --------
    >>> import numpy as np
    >>> lc = np.full((64, 64), FOREST, np.uint8)
    >>> db = s1_backscatter_db(lc, np.random.default_rng(0), "ascending")
    >>> bool(-11 < np.median(db[0]) < -6)
    True
    """
    return (10.0 * np.log10(_s1_linear(landcover, rng, orbit, doy, snow))).astype(np.float32)


def _s1_linear(landcover: np.ndarray, rng: np.random.Generator, orbit: str,
               doy: int = DOY_REF, snow: np.ndarray | None = None) -> np.ndarray:
    """Linear gamma0 (2, H, W) float32; the archive writes this (no dB round trip)."""
    if orbit not in ("ascending", "descending"):
        raise ValueError(f"orbit must be 'ascending' or 'descending', not {orbit!r}")
    lc = np.asarray(landcover)
    mat = _materials(lc)
    h, w = lc.shape
    lin = (_SAR_LIN @ mat.frac.reshape(12, -1)).reshape(2, h, w)
    g = mat.greenness(doy)
    bare = np.clip(1 - 2.5 * g, 0, 1)  # a ploughed parcel is rough until the crop closes
    lin += mat.field * (g * _SAR_LIN[:, M_CROP, None, None]
                        + (1 - g) * _SAR_LIN[:, M_SOIL, None, None]
                        * (1 + (mat.rough - 1) * bare))
    lin *= mat.sar_gain[0 if orbit == "ascending" else 1]
    # Acquisition-specific: soil moisture (rain or drought, +-1.5 dB on soils and fields) ...
    soil = np.clip((_SOIL_LIKE @ mat.frac.reshape(12, -1)).reshape(h, w) + mat.field, 0, 1)
    lin *= (10 ** (rng.normal(0, 1.5) * soil / 10)).astype(np.float32)
    # ... and wind on the water: calm (-25.5 dB VV) to rough (-12.5 dB VV), VH much less.
    water = lc == WATER
    if water.any():
        wind_db = rng.uniform(0.0, SEA_WIND_DB) + 1.5 * _value_noise(rng, (h, w),
                                                                    0.3 * min(h, w))
        for p, share in ((0, 1.0), (1, _VH_WIND_SHARE)):
            gain = 10 ** (np.maximum(wind_db, -2.0) * share / 10)
            lin[p][water] *= gain.astype(np.float32)[water]
    if snow is not None and np.any(snow > 0) and rng.random() < 0.3:
        lin *= (10 ** (-0.3 * visible_snow(lc, snow))).astype(np.float32)  # wet snow: -3 dB
    lin *= np.float32(10 ** (rng.normal(0, 0.4) / 10))
    lin *= rng.gamma(SAR_LOOKS, 1.0 / SAR_LOOKS, size=lin.shape).astype(np.float32)
    np.maximum(lin, np.float32(1e-5), out=lin)
    return lin


def to_20m(arr: np.ndarray) -> np.ndarray:
    """Average 2 x 2 blocks of the last two axes (10 m -> 20 m), as the archive's 20 m bands.

    Examples
    --------
    >>> import numpy as np
    >>> to_20m(np.arange(16, dtype=np.float32).reshape(4, 4)).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    a = np.asarray(arr)
    h, w = a.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"to_20m needs even rows and columns, got {h} x {w}")
    return a.reshape(*a.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1), dtype=np.float32)


__all__ = [
    "CLASSES",
    "CLASS_COLORS",
    "CLASS_SCL",
    "CLOUDY_SCL",
    "DORMANT_SPECTRA",
    "MATERIALS",
    "MATERIAL_SAR_DB",
    "MATERIAL_SPECTRA",
    "S1_BANDS",
    "S2_10M",
    "S2_20M",
    "S2_BANDS",
    "SNOW_SPECTRUM",
    "landcover",
    "s1_backscatter_db",
    "s2_reflectance",
    "snow_cover",
    "to_20m",
    "visible_snow",
    "winterness",
]
