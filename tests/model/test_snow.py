"""Snow is not land cover: the shipped student on snow-covered synthetic patches."""

from __future__ import annotations

import numpy as np

import geoflow.model as gm
from geoflow.cube import hidden_mask
from geoflow.model.data import _mimic_20m
from geoflow.synthetic import clouds as _clouds
from geoflow.synthetic import world as _world

_P = 32


def _snowy_patches() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Snow-covered 32 px patches of a January date, their SCL-derived mask and labels."""
    lc = _world.landcover(31, (256, 256))
    for k in range(20):
        rng = np.random.default_rng([9, k])
        snow = _world.snow_cover(lc, rng, 20)
        if snow.mean() > 0.5:
            break
    else:  # pragma: no cover - most January draws are snowy
        raise AssertionError("no snowy January date")
    refl = _mimic_20m(_world.s2_reflectance(lc, rng, 20, snow=snow))
    sar = _world.s1_backscatter_db(lc, rng, "ascending", doy=20, snow=snow)
    z = np.zeros((128, 128), np.float32)
    code = _clouds.scl(lc[::2, ::2], _clouds.Clouds(z, z, z),
                       _world.to_20m(_world.visible_snow(lc, snow)))
    mask = np.repeat(np.repeat(hidden_mask(code), 2, 0), 2, 1).astype(np.float32)
    s2, s1, cl, lab = [], [], [], []
    for y in range(0, 256, _P):
        for x in range(0, 256, _P):
            win = (slice(y, y + _P), slice(x, x + _P))
            if mask[win].mean() < 0.8:
                continue
            s2.append(refl[(slice(None), *win)])
            s1.append(sar[(slice(None), *win)])
            cl.append(mask[win])
            lab.append(np.bincount(lc[win].ravel(), minlength=10).argmax())
    return np.stack(s2), np.stack(s1), np.stack(cl), np.asarray(lab)


def test_snow_covered_patches_lean_on_sar_and_are_not_industrial() -> None:
    s2, s1, cloud, label = _snowy_patches()
    assert len(label) >= 10
    model = gm.load()
    industrial = model.classes.index("Industrial")
    pred = model.predict(s2, s1, cloud)
    # SCL 11 hides the ground like a cloud: the student leans on SAR ...
    assert float(np.mean(pred.sar_weight)) > 0.6
    # ... and a snowy field or forest does not become Industrial.
    non_industrial = label != industrial
    assert (pred.labels[non_industrial] != industrial).mean() > 0.9
    # Without the SCL mask (an archive that ships none) the optical side still does not read
    # bright snow as built-up.
    bare = model.predict(s2, s1, np.zeros_like(cloud))
    assert (bare.labels[non_industrial] != industrial).mean() > 0.9
