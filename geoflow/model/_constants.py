"""Class names, colours and band order, taken from the synthetic world when it is importable.

The archive owns these constants (``geoflow.archive._world``); this module re-exports them so
the model works (and its tests run) on their own. The fallback copy must stay identical.
"""

from __future__ import annotations

try:
    from geoflow.archive._world import CLASS_COLORS, CLASSES, S2_BANDS
except ImportError:  # the archive package is optional for using a checkpoint
    CLASSES = ("Barren", "Dense Forest", "Herbaceous", "Industrial", "Residential", "Road",
               "Scrub", "Sparsely Built", "Water", "Harbor")
    CLASS_COLORS = ("#a87000", "#006400", "#b4e36b", "#8c2d8c", "#e31a1c", "#4d4d4d",
                    "#c8a84b", "#f0a0a0", "#1f78b4", "#00cfd6")
    S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")

#: SAR polarisations in model input order (cube ``pol`` coordinate).
S1_POLS = ("VV", "VH")

__all__ = ["CLASSES", "CLASS_COLORS", "S1_POLS", "S2_BANDS"]
