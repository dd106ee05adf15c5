"""Clouds over the synthetic world: thick clouds, thin haze (cirrus), cloud shadows, and the
Sentinel-2 scene classification (SCL) that goes with them.

The same functions make the archive's cloudy scenes and the model team's cloudy training
patches, so the two look alike.

Examples
--------
>>> import numpy as np
>>> from geoflow.synthetic.clouds import simulate_clouds, apply_clouds, scl
>>> from geoflow.synthetic.world import landcover, s2_reflectance
>>> lc = landcover(0, (128, 128))
>>> clouds = simulate_clouds(np.random.default_rng(0), lc.shape, cover=0.5)
>>> cloudy = apply_clouds(s2_reflectance(lc, np.random.default_rng(1), 160), clouds)
>>> scl(lc, clouds).dtype.name
'uint8'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoflow.synthetic.world import (
    CLASS_SCL,
    SCL_CIRRUS,
    SCL_CLOUD_HIGH,
    SCL_CLOUD_MEDIUM,
    SCL_SHADOW,
    SCL_SNOW,
    _fractal,
    _value_noise,
    to_20m,
)

#: Top-of-canopy-like reflectance of a thick cloud in S2_BANDS order: bright, nearly flat,
#: lower in the SWIR (ice/water absorption).
CLOUD_SPECTRUM = np.array([.62, .61, .61, .62, .62, .62, .63, .63, .48, .36], np.float32)
#: Reflectance that thin haze / cirrus blends toward: bluish, weak in the SWIR.
HAZE_SPECTRUM = np.array([.30, .27, .25, .24, .23, .22, .22, .21, .14, .09], np.float32)
#: At most this share of the ground signal is replaced by haze at haze = 1.
HAZE_OPACITY = 0.7
#: Darkening at shadow = 1 (diffuse skylight keeps some signal; blue less than NIR).
SHADOW_DARKENING = np.array([.50, .55, .58, .60, .62, .63, .64, .64, .65, .65], np.float32)

#: SCL thresholds on the cloud layers (also what ``cloud`` in the cube means).
THICK_HIGH, THICK_MEDIUM, HAZE_CIRRUS, SHADOW_MIN = 0.6, 0.25, 0.25, 0.3
#: Visible snow share from which SCL says snow/ice (11).
SNOW_MIN = 0.5


@dataclass(frozen=True)
class Clouds:
    """Cloud layers of one scene, each float32 (H, W) in 0..1.

    Attributes
    ----------
    thick
        Opacity of thick (opaque, bright) cloud.
    haze
        Opacity of thin haze / cirrus.
    shadow
        Strength of cloud shadow on the ground.
    """

    thick: np.ndarray
    haze: np.ndarray
    shadow: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the layers."""
        return (int(self.thick.shape[0]), int(self.thick.shape[1]))

    def to_20m(self) -> Clouds:
        """The layers averaged over 2 x 2 blocks (as the archive's 20 m SCL sees them)."""
        return Clouds(to_20m(self.thick), to_20m(self.haze), to_20m(self.shadow))

    def crop(self, rows: slice, cols: slice) -> Clouds:
        """A window of the layers."""
        return Clouds(self.thick[rows, cols], self.haze[rows, cols], self.shadow[rows, cols])

    def fraction(self) -> float:
        """Share of pixels SCL calls cloud or cirrus (codes 8, 9, 10)."""
        cloudy = (self.thick >= THICK_MEDIUM) | (self.haze >= HAZE_CIRRUS)
        return float(cloudy.mean())


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def simulate_clouds(rng: np.random.Generator, shape: tuple[int, int], cover: float) -> Clouds:
    """Draw thick clouds, haze and shadows covering about ``cover`` of a scene.

    Parameters
    ----------
    rng
        Generator (deterministic for a seed).
    shape
        (H, W) at 10 m.
    cover
        Target share of cloudy pixels (thick or haze), 0 (clear) .. 1 (overcast).

    Returns
    -------
    Clouds
        The three layers.

    Examples
    --------
    >>> import numpy as np
    >>> c = simulate_clouds(np.random.default_rng(0), (256, 256), 0.4)
    >>> 0.25 < c.fraction() < 0.55
    True
    >>> simulate_clouds(np.random.default_rng(0), (64, 64), 0.0).fraction()
    0.0
    """
    h, w = int(shape[0]), int(shape[1])
    cover = float(cover)
    if not 0.0 <= cover <= 1.0:
        raise ValueError(f"cloud cover must be within 0..1, got {cover}")
    zeros = np.zeros((h, w), np.float32)
    if cover <= 0.0:
        return Clouds(zeros, zeros.copy(), zeros.copy())
    # Cloud fields of ~1.5 km with fractal edges (cells in 10 m px).
    f = _fractal(rng, (h, w), 150.0, octaves=5, persistence=0.55)
    # Overcast: everything above the threshold; else the (1 - cover) quantile of the field.
    t = float(f.min()) - 1.0 if cover >= 0.999 else float(np.quantile(f[::4, ::4], 1.0 - cover))
    d = f - np.float32(t)
    thick = _smoothstep(0.12, 0.55, d)
    if cover >= 0.999:
        thick = np.maximum(thick, np.float32(0.9))
    fringe = _smoothstep(-0.08, 0.12, d) * (1 - thick)
    # Cirrus streaks, independent of the cumulus field, on some cloudy days.
    cirrus = np.zeros((h, w), np.float32)
    if rng.random() < 0.6:
        streak = _value_noise(rng, (h, w), 60.0, aniso=0.25) + 0.5 * _value_noise(
            rng, (h, w), 20.0, aniso=0.4)
        level = rng.uniform(0.3, 0.8)
        cirrus = (level * _smoothstep(0.6, 1.6, streak)).astype(np.float32)
        # Cirrus only over part of the scene so "clear" stays mostly clear at low cover.
        cirrus *= _smoothstep(0.0, 0.8, _value_noise(rng, (h, w), 300.0) + cover - 0.3)
    haze = np.maximum(fringe, cirrus) * (1 - thick)
    # Shadows: thick clouds cast onto the ground away from the sun (sun in the south-east in
    # a morning pass at mid-latitudes): shadows fall north-west, 300-900 m from the cloud.
    length = rng.uniform(30, 90)
    az = np.deg2rad(rng.uniform(135, 165))
    dy, dx = round(float(length * np.cos(az))), round(float(-length * np.sin(az)))
    # shadow[y, x] = thick[y - dy, x - dx] (rows grow southwards; dy < 0 moves shadows north)
    # (Clouds outside a small scene cast no shadow into it: draw big scenes, then crop.)
    cast = np.zeros((h, w), np.float32)
    if abs(dy) < h and abs(dx) < w:
        cast[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
            thick[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    shadow = (cast * (1 - thick) * (1 - 0.7 * haze)).astype(np.float32)
    return Clouds(thick.astype(np.float32), haze.astype(np.float32), shadow)


def apply_clouds(refl: np.ndarray, clouds: Clouds) -> np.ndarray:
    """Put clouds, haze and shadows over clear-sky reflectance.

    Parameters
    ----------
    refl
        float32 (..., 10, H, W) reflectance in S2_BANDS order.
    clouds
        Layers of shape (H, W) (or (..., H, W) matching ``refl``'s leading axes).

    Returns
    -------
    numpy.ndarray
        float32 reflectance of the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> c = simulate_clouds(np.random.default_rng(0), (32, 32), 1.0)
    >>> out = apply_clouds(np.full((10, 32, 32), 0.05, np.float32), c)
    >>> bool(out[0].mean() > 0.4)
    True
    """
    out = np.array(refl, dtype=np.float32, copy=True)
    if out.shape[-3] != CLOUD_SPECTRUM.size:
        raise ValueError(f"apply_clouds needs {CLOUD_SPECTRUM.size} bands, got {out.shape}")
    thick = clouds.thick[..., None, :, :]
    haze = clouds.haze[..., None, :, :] * np.float32(HAZE_OPACITY)
    shadow = clouds.shadow[..., None, :, :]
    # In place, layer by layer, skipping empty layers (clear scenes cost one copy).
    if shadow.any():
        out *= 1 - shadow * SHADOW_DARKENING[:, None, None]
    if haze.any():
        out *= 1 - haze
        out += haze * HAZE_SPECTRUM[:, None, None]
    if thick.any():
        # Thicker cores are brighter: cloud-top brightness grows with opacity.
        out *= 1 - thick
        out += thick * (0.8 + 0.25 * thick) * CLOUD_SPECTRUM[:, None, None]
    return out


def scl(landcover: np.ndarray, clouds: Clouds, snow: np.ndarray | None = None) -> np.ndarray:
    """Sentinel-2 scene classification for a land cover under clouds (and snow).

    Clear pixels get vegetation (4), not vegetated (5) or water (6) by class, snow/ice (11)
    where at least half the pixel shows snow from above (snow under a forest canopy stays
    vegetation, as Sen2Cor's NDSI test misses it there); shadows (3), cirrus (10), medium (8)
    and high probability (9) cloud follow the cloud layers.

    Parameters
    ----------
    landcover
        uint8 (H, W) classes (at the SCL's resolution: ``lc[::2, ::2]`` for 20 m).
    clouds
        Layers of the same shape (``clouds.to_20m()`` for 20 m).
    snow
        Optional *visible* snow share of the same shape
        (:func:`geoflow.synthetic.world.visible_snow`, averaged to 20 m like the clouds).

    Returns
    -------
    numpy.ndarray
        uint8 (H, W) SCL codes.

    Examples
    --------
    >>> import numpy as np
    >>> lc = np.full((4, 4), 8, np.uint8)
    >>> z = np.zeros((4, 4), np.float32)
    >>> scl(lc, Clouds(z, z, z))[0, 0]
    np.uint8(6)
    """
    lc = np.asarray(landcover)
    if lc.shape != clouds.shape:
        raise ValueError(f"landcover {lc.shape} and clouds {clouds.shape} differ in shape")
    out = np.asarray(CLASS_SCL, np.uint8)[np.minimum(lc, len(CLASS_SCL) - 1)]
    if snow is not None:
        if np.shape(snow) != lc.shape:
            raise ValueError(f"landcover {lc.shape} and snow {np.shape(snow)} differ in shape")
        out[np.asarray(snow) >= SNOW_MIN] = SCL_SNOW
    out[clouds.shadow >= SHADOW_MIN] = SCL_SHADOW
    out[clouds.haze >= HAZE_CIRRUS] = SCL_CIRRUS
    out[clouds.thick >= THICK_MEDIUM] = SCL_CLOUD_MEDIUM
    out[clouds.thick >= THICK_HIGH] = SCL_CLOUD_HIGH
    return out


__all__ = [
    "CLOUD_SPECTRUM",
    "HAZE_SPECTRUM",
    "Clouds",
    "apply_clouds",
    "scl",
    "simulate_clouds",
]
