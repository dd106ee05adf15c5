"""The default class scheme (names and colours, in class-index order) and the model's input
order, which comes from :mod:`geoflow.sentinel`. The synthetic archive takes its classes from
here: the model's scheme is the source, the archive a fixture on top.
"""

from __future__ import annotations

from geoflow.sentinel import S1_POLS, S2_BANDS

#: The ten scene classes of the seed paper's dataset, in class-index order.
CLASSES: tuple[str, ...] = ("Barren", "Dense Forest", "Herbaceous", "Industrial", "Residential",
                            "Road", "Scrub", "Sparsely Built", "Water", "Harbor")
#: One colour per class (maps, legends, COG colour tables).
CLASS_COLORS: tuple[str, ...] = (
    "#d2b48c",  # Barren: sand
    "#1b5e20",  # Dense Forest: dark green
    "#9ccc65",  # Herbaceous: light green
    "#7e57c2",  # Industrial: purple
    "#e53935",  # Residential: red
    "#424242",  # Road: dark grey
    "#8d9e4a",  # Scrub: olive
    "#ffab91",  # Sparsely Built: salmon
    "#1e88e5",  # Water: blue
    "#ff8f00",  # Harbor: orange
)



def fallback_colors(start: int, stop: int) -> list[str]:
    """Colours ``start`` to ``stop - 1`` of matplotlib's ``tab20`` palette (cycled): classes of
    a scheme that brings no colours of its own.

    Examples
    --------
    >>> fallback_colors(0, 2)
    ['#1f77b4', '#aec7e8']
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab = colormaps["tab20"]
    return [to_hex(tab(i % 20)) for i in range(start, stop)]


__all__ = ["CLASSES", "CLASS_COLORS", "S1_POLS", "S2_BANDS", "fallback_colors"]
