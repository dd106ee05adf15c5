"""Sentinel conventions every stage shares: band names and their order, SAR polarisations,
the SCL codes of the Sentinel-2 scene classification. At the bottom of the house: it imports
nothing of geoflow, and the cube, the model and the synthetic archive all take these from here
(the archive is a fixture on top, never their source).

Examples
--------
>>> from geoflow.sentinel import S2_BANDS, CLOUDY_SCL, HIDDEN_SCL
>>> len(S2_BANDS), CLOUDY_SCL, HIDDEN_SCL
(10, (3, 8, 9, 10), (3, 8, 9, 10, 11))
"""

from __future__ import annotations

#: Sentinel-2 L2A bands the model reads, in model input order (10 m first, then 20 m).
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Sentinel-2 bands at 10 m; the others of :data:`S2_BANDS` are 20 m.
S2_10M: tuple[str, ...] = ("B02", "B03", "B04", "B08")
#: Sentinel-1 asset keys (RTC backscatter), in model input order.
S1_BANDS: tuple[str, ...] = ("vv", "vh")
#: The same polarisations as the model and the cube's ``pol`` coordinate name them.
S1_POLS: tuple[str, ...] = ("VV", "VH")
#: SCL codes (Sentinel-2 scene classification) counted as cloud: cloud shadow, medium and high
#: probability cloud, thin cirrus.
CLOUDY_SCL: tuple[int, ...] = (3, 8, 9, 10)
#: SCL code of snow and ice. Snow is not land cover: it hides the ground from the optical
#: sensor as a cloud does (a snowy field must not look like a bright industrial roof).
SNOW_SCL: tuple[int, ...] = (11,)
#: SCL codes whose pixels do not show the land cover to the optical sensor: cloud, cloud shadow,
#: cirrus and snow. The cube's ``cloud`` mask, the IRM's optical reliability and the map's
#: ``cloud_fraction`` all count these.
HIDDEN_SCL: tuple[int, ...] = CLOUDY_SCL + SNOW_SCL

__all__ = ["CLOUDY_SCL", "HIDDEN_SCL", "S1_BANDS", "S1_POLS", "S2_10M", "S2_BANDS",
           "SNOW_SCL"]
