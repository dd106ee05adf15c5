"""The CORINE label table: which geoflow classes fit a BigEarthNet patch's labels (v1's 43
level-3 names and reBEN's 19), the label families the reports group by, and v1 -> 19 names.

Examples
--------
>>> sorted(allowed_classes(["Coniferous forest", "Sea and ocean"]))
['Dense Forest', 'Water']
"""


from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from geoflow.errors import ModelError

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
