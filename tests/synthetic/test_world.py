"""The synthetic world's calibration to real Sentinel data: properties, not fixed outputs."""

from __future__ import annotations

import numpy as np
import pytest

from geoflow.cube import hidden_mask
from geoflow.sentinel import SNOW_SCL
from geoflow.synthetic.clouds import Clouds, scl
from geoflow.synthetic.world import (
    FOREST,
    HERBACEOUS,
    RESIDENTIAL,
    WATER,
    landcover,
    s1_backscatter_db,
    s2_reflectance,
    snow_cover,
    to_20m,
    visible_snow,
    winterness,
)

_SHAPE = (256, 256)


@pytest.fixture(scope="module")
def lc() -> np.ndarray:
    return landcover(21, _SHAPE)


def _snowy(lc: np.ndarray, doy: int = 20) -> tuple[np.random.Generator, np.ndarray]:
    """The first weather draw that brings snow on a winter day (most do)."""
    for k in range(20):
        rng = np.random.default_rng([5, k])
        snow = snow_cover(lc, rng, doy)
        if snow.mean() > 0.2:
            return rng, snow
    raise AssertionError("no snowy date in 20 January draws")


def test_sea_spans_calm_to_wind_roughened_like_real_sea(lc: np.ndarray) -> None:
    # The development sea patches span -26.5 .. -12.5 dB VV (sigma0) and only -32 .. -25 VH.
    vv, vh = [], []
    for k in range(12):
        db = s1_backscatter_db(lc, np.random.default_rng([7, k]), "ascending")
        vv.append(np.median(db[0][lc == WATER]))
        vh.append(np.median(db[1][lc == WATER]))
    assert -28 < min(vv) < -21 and -17 < max(vv) < -10  # calm and rough dates both occur
    assert max(vh) - min(vh) < 0.5 * (max(vv) - min(vv))  # VH far less wind-sensitive
    assert all(-34 < v < -24 for v in vh)
    # Land keeps its SAR contrast: forest volume scattering above calm water, built-up above
    # forest on average (double bounce).
    db = s1_backscatter_db(lc, np.random.default_rng(1), "descending")
    forest = np.median(db[0][lc == FOREST])
    assert -11 < forest < -7 and np.median(db[1][lc == FOREST]) > -17
    assert np.mean(db[0][lc == RESIDENTIAL]) > np.mean(db[0][lc == FOREST])


def test_seasons_fields_green_up_and_lie_bare(lc: np.ndarray) -> None:
    def ndvi(doy: int, cls: int) -> float:
        r = s2_reflectance(lc, np.random.default_rng(3), doy)
        m = lc == cls
        return float(np.mean((r[6][m] - r[2][m]) / (r[6][m] + r[2][m])))

    summer, winter = ndvi(180, HERBACEOUS), ndvi(15, HERBACEOUS)
    assert summer > 0.6 and winter < summer - 0.2  # bare and dormant fields in winter
    assert ndvi(180, FOREST) > 0.75
    # Built-up areas are partly green, as real towns are (urban patches: NDVI 0.5-0.78), yet
    # browner than the fields around them.
    town = ndvi(180, RESIDENTIAL)
    assert 0.3 < town < summer
    assert winterness(20) == 1.0 and winterness(200) == 0.0


def test_snow_shows_as_scl_11_and_hides_the_ground(lc: np.ndarray) -> None:
    assert not snow_cover(lc, np.random.default_rng(0), 200).any()  # no snow in July
    rng, snow = _snowy(lc)
    refl = s2_reflectance(lc, rng, 20, snow=snow)
    seen = visible_snow(lc, snow)
    open_snow = (seen > 0.9) & (lc == HERBACEOUS)
    assert open_snow.sum() > 100
    # Bright in the visible, dark in SWIR: a positive NDSI, as Sen2Cor's snow test wants.
    ndsi = (refl[1] - refl[8]) / (refl[1] + refl[8])
    assert np.median(ndsi[open_snow]) > 0.6 and np.median(refl[1][open_snow]) > 0.3
    assert (snow[lc == WATER] == 0).all()
    # A canopy hides most of the snow under it.
    assert np.median(seen[(lc == FOREST) & (snow > 0.9)]) < 0.5
    z = np.zeros(_SHAPE, np.float32)
    code = scl(lc[::2, ::2], Clouds(z, z, z).to_20m(), to_20m(seen))
    snow20 = to_20m(seen) >= 0.5
    assert (code[snow20] == SNOW_SCL[0]).all() and not (code[~snow20] == SNOW_SCL[0]).any()
    # ... and the cube's optical mask (hence the map's cloud_fraction and the IRM) hides it.
    mask = hidden_mask(code)
    assert (mask[snow20] == 1).all() and (mask[~snow20 & (code != 3)] == 0).all()
    with pytest.raises(ValueError, match="snow"):
        scl(lc[::2, ::2], Clouds(z, z, z).to_20m(), seen)
