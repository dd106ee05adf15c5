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

Examples
--------
>>> import numpy as np
>>> from geoflow.archive._world import landcover, s2_reflectance, s1_backscatter_db
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

#: L2A surface reflectance of each material in S2_BANDS order. Water and vegetation follow the
#: BigEarthNet means in FACTS.md (sea; June farmland); soil, sand, roofs, asphalt and concrete
#: follow typical library spectra (flat, brighter in SWIR for minerals).
MATERIAL_SPECTRA = np.array(
    [
        # B02   B03   B04   B05   B06   B07   B08   B8A   B11   B12
        [.018, .022, .013, .010, .008, .007, .006, .005, .004, .003],  # water
        [.018, .038, .022, .065, .190, .240, .270, .280, .125, .055],  # forest canopy
        [.030, .065, .035, .105, .300, .370, .400, .410, .200, .100],  # green crop
        [.070, .095, .120, .150, .175, .195, .210, .220, .300, .240],  # bare soil
        [.035, .065, .050, .100, .230, .280, .300, .310, .210, .120],  # grass
        [.035, .055, .055, .090, .170, .200, .220, .230, .200, .120],  # shrub
        [.120, .150, .180, .205, .225, .240, .255, .265, .330, .280],  # sand / rock
        [.080, .090, .140, .170, .190, .200, .210, .215, .240, .200],  # red tile roof
        [.110, .120, .125, .130, .135, .140, .145, .148, .160, .150],  # grey roof
        [.230, .250, .260, .265, .270, .275, .280, .282, .270, .240],  # metal / bright roof
        [.060, .070, .075, .080, .085, .090, .095, .097, .110, .100],  # asphalt
        [.140, .155, .165, .175, .185, .190, .200, .205, .230, .210],  # concrete
    ],
    dtype=np.float32,
).T  # (10 bands, 12 materials)

#: Sentinel-1 gamma0 (dB) of each material, (VV, VH). Buildings get an extra double-bounce
#: boost per building and orbit on top of this (see ``_Materials.sar_gain``).
MATERIAL_SAR_DB = np.array(
    [
        [-21.0, -28.0],  # water (calm; wind adds a per-date roughness field)
        [-7.5, -13.5],  # forest: volume scattering, high VH
        [-10.0, -16.5],  # green crop
        [-13.0, -21.5],  # bare soil
        [-11.0, -18.0],  # grass
        [-8.5, -15.0],  # shrub
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
#: Day of year at which field greenness equals its drawn value; fields grow or ripen from it.
DOY_REF = 166

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
    green0: np.ndarray  # (H, W) float32 field greenness at DOY_REF
    green_rate: np.ndarray  # (H, W) float32 greenness change per 30 days
    bright: np.ndarray  # (H, W) float32 multiplicative optical texture
    sar_gain: np.ndarray  # (2 orbits, H, W) float32 linear gain (double bounce, moisture)


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
        house = ~street & (lot < 0.5)
        red = _hash2(hu + 3, hv, table2) < 0.6
        tree = _fractal(rng, (h, w), 3, octaves=1) > 0.3
        f[M_ASPHALT][m & street] = 1
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
        grassy = _hash2(su + 11, sv, table) < 0.15
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
        house = (_hash2(hu, hv, table) < 0.25) & ((u % 7) - jit >= 1) & ((u % 7) - jit < 3) \
            & ((v % 7) - jit >= 1) & ((v % 7) - jit < 3)
        n = _fractal(rng, (h, w), 6, octaves=2)
        bg = m & ~house
        f[M_GRASS][bg] = np.clip(0.6 - 0.25 * n, 0.2, 1)[bg]
        f[M_FOREST][bg] = np.clip(0.25 + 0.25 * n, 0, 0.8)[bg]
        f[M_SOIL][bg] = 1 - f[M_GRASS][bg] - f[M_FOREST][bg]
        red = _hash2(hu + 2, hv, table2) < 0.6
        f[M_ROOF_RED][m & house & red] = 1
        f[M_ROOF_GREY][m & house & ~red] = 1
        building_boost(hu, hv, m & house, 2.0)

    # Herbaceous: parcels in bands of 220 m, widths 150-450 m, hedges between them.
    field = np.zeros((h, w), np.float32)
    green0 = np.zeros((h, w), np.float32)
    rate = np.zeros((h, w), np.float32)
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
        g0 = np.where(z < 0.25, 0.05 + 0.6 * z, 0.5 + 0.45 * (z - 0.25) / 0.75)
        r = 0.6 * (_hash2(band + 9, col, table2) - 0.5)
        inner = m & ~hedge
        field[inner] = 1
        green0[inner] = g0[inner]
        rate[inner] = r[inner]
        f[M_GRASS][m & hedge] = 0.5
        f[M_SHRUB][m & hedge] = 0.5
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

    return _Materials(frac=f, field=field, green0=green0, green_rate=rate,
                      bright=bright, sar_gain=boost)


# --------------------------------------------------------------------------- sensors


def s2_reflectance(landcover: np.ndarray, rng: np.random.Generator, doy: int) -> np.ndarray:
    """Clear-sky Sentinel-2 L2A surface reflectance of a land-cover raster, all bands at 10 m.

    Parameters
    ----------
    landcover
        uint8 (H, W) class indices (from :func:`landcover`).
    rng
        Generator for the per-date noise (the texture is fixed by the land cover itself).
    doy
        Day of year; fields green up or ripen around :data:`DOY_REF`.

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
    out = (MATERIAL_SPECTRA @ mat.frac.reshape(12, -1)).reshape(10, h, w)
    g = np.clip(mat.green0 + mat.green_rate * np.float32((doy - DOY_REF) / 30.0), 0, 1)
    crop, soil = MATERIAL_SPECTRA[:, M_CROP, None, None], MATERIAL_SPECTRA[:, M_SOIL, None, None]
    out += mat.field * (g * crop + (1 - g) * soil)
    # Per-date: a residual atmospheric gain, pixel noise shared by bands, band noise.
    gain = np.float32(1 + rng.normal(0, 0.015))
    out *= mat.bright * (gain + np.float32(0.02) * rng.standard_normal((h, w), np.float32))
    out += np.float32(0.002) * rng.standard_normal((10, h, w), np.float32)
    np.clip(out, 0.0005, 1.0, out=out)
    return out


def s1_backscatter_db(landcover: np.ndarray, rng: np.random.Generator,
                      orbit: Literal["ascending", "descending"]) -> np.ndarray:
    """Sentinel-1 RTC gamma0 (dB) of a land-cover raster, VV and VH at 10 m, with speckle.

    Parameters
    ----------
    landcover
        uint8 (H, W) class indices.
    rng
        Generator for speckle, sea-surface wind and soil moisture of this acquisition.
    orbit
        "ascending" or "descending": buildings' double bounce differs by look direction.

    Returns
    -------
    numpy.ndarray
        float32 (2, H, W) dB, (VV, VH).

    Examples
    --------
    >>> import numpy as np
    >>> lc = np.full((64, 64), FOREST, np.uint8)
    >>> db = s1_backscatter_db(lc, np.random.default_rng(0), "ascending")
    >>> bool(-10 < np.median(db[0]) < -6)
    True
    """
    return (10.0 * np.log10(_s1_linear(landcover, rng, orbit))).astype(np.float32)


def _s1_linear(landcover: np.ndarray, rng: np.random.Generator, orbit: str) -> np.ndarray:
    """Linear gamma0 (2, H, W) float32; the archive writes this (no dB round trip)."""
    if orbit not in ("ascending", "descending"):
        raise ValueError(f"orbit must be 'ascending' or 'descending', not {orbit!r}")
    lc = np.asarray(landcover)
    mat = _materials(lc)
    h, w = lc.shape
    lin = (_SAR_LIN @ mat.frac.reshape(12, -1)).reshape(2, h, w)
    g = mat.green0
    lin += mat.field * (g * _SAR_LIN[:, M_CROP, None, None]
                        + (1 - g) * _SAR_LIN[:, M_SOIL, None, None])
    lin *= mat.sar_gain[0 if orbit == "ascending" else 1]
    # Acquisition-specific: wind roughens the water (±3 dB), rain changes soil moisture.
    water = lc == WATER
    if water.any():
        wind = 10 ** ((rng.normal(0, 1.0) + 1.5 * _value_noise(rng, (h, w), 0.3 * min(h, w)))
                      / 10)
        lin[:, water] *= wind.astype(np.float32)[water]
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
    "MATERIALS",
    "MATERIAL_SAR_DB",
    "MATERIAL_SPECTRA",
    "S1_BANDS",
    "S2_10M",
    "S2_20M",
    "S2_BANDS",
    "landcover",
    "s1_backscatter_db",
    "s2_reflectance",
    "to_20m",
]
