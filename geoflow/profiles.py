"""Catalog profiles: how each STAC provider names and scales the Sentinel data.

At the bottom of the house beside :mod:`geoflow.sentinel` (it imports only that and
:mod:`geoflow.errors`). A profile says which collections hold Sentinel-2 L2A and Sentinel-1
RTC, which asset key holds each band of :data:`~geoflow.sentinel.S2_BANDS`, the SCL layer and
each polarisation, and how the L2A digital numbers are offset. :func:`normalize_item` turns a
provider's item into geoflow's canonical one (asset keys ``B02`` .. ``B12``, ``SCL``, ``vv``,
``vh``; ``proj:epsg`` set; the DN offset decided once, in ``geoflow:offset``), so everything
downstream (the cube, the model) sees one convention and an offset can never be removed twice.

Profiles:

- ``planetary-computer``: Microsoft's Planetary Computer (``sentinel-2-l2a``,
  ``sentinel-1-rtc``); asset URLs need signing (:mod:`geoflow.signing`).
- ``earth-search``: Element 84's Earth Search v1 (``sentinel-2-l2a`` with asset keys ``blue`` ..
  ``swir22``, ``scl``); its ``earthsearch:boa_offset_applied`` flag says the COGs already had the
  offset removed. Its Sentinel-1 (``sentinel-1-grd``) is not terrain corrected and is refused.
- ``generic``: any STAC API with the Planetary Computer's asset keys (the bundled archive);
  the keys and collections can be changed.

Examples
--------
>>> guess_profile("https://planetarycomputer.microsoft.com/api/stac/v1").name
'planetary-computer'
>>> guess_profile("https://earth-search.aws.element84.com/v1").s2_assets["B8A"]
'nir08'
>>> guess_profile("http://127.0.0.1:8000").name
'generic'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from geoflow.errors import CatalogError, CubeError
from geoflow.sentinel import S1_BANDS, S2_BANDS

#: Asset key of the Sentinel-2 scene classification layer, in canonical items.
SCL_ASSET = "SCL"
#: Sentinel-2 L2A digital numbers per unit reflectance.
S2_SCALE = 10_000.0
#: From processing baseline 04.00 (January 2022) L2A DNs carry a +1000 offset.
S2_OFFSET_BASELINE = "04.00"
S2_OFFSET = -1000.0
#: Property of a canonical item: the DN offset decided by its profile (added before scaling).
OFFSET_PROPERTY = "geoflow:offset"
#: Property of a canonical item: the profile that normalised it.
PROFILE_PROPERTY = "geoflow:profile"

_CANONICAL_S2 = {b: b for b in (*S2_BANDS, SCL_ASSET)}
_CANONICAL_S1 = {b: b for b in S1_BANDS}
_ES_S2 = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
          "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22",
          SCL_ASSET: "scl"}


@dataclass(frozen=True)
class Profile:
    """One provider's conventions.

    Parameters
    ----------
    name
        ``"planetary-computer"``, ``"earth-search"`` or ``"generic"`` (or your own).
    s2_collection, s1_collection
        Default collection ids (None: the provider has no usable one).
    s2_assets
        Canonical band (and ``"SCL"``) -> the provider's asset key.
    s1_assets
        Canonical polarisation asset (``"vv"``, ``"vh"``) -> the provider's asset key.
    hosts
        Host name suffixes that identify the provider's API (for :func:`guess_profile`).
    signer
        Name of the signer its asset URLs need (``"planetary-computer"``) or None.
    s1_refusal
        Why this provider's Sentinel-1 cannot be used (None: it can).

    Examples
    --------
    >>> p = PROFILES["generic"].with_assets(s2={"B02": "blue"})
    >>> p.s2_assets["B02"], p.s2_assets["B03"]
    ('blue', 'B03')
    """

    name: str
    s2_collection: str | None = "sentinel-2-l2a"
    s1_collection: str | None = "sentinel-1-rtc"
    s2_assets: Mapping[str, str] = field(default_factory=lambda: dict(_CANONICAL_S2))
    s1_assets: Mapping[str, str] = field(default_factory=lambda: dict(_CANONICAL_S1))
    hosts: tuple[str, ...] = ()
    signer: str | None = None
    s1_refusal: str | None = None

    def with_assets(self, s2: Mapping[str, str] | None = None,
                    s1: Mapping[str, str] | None = None) -> Profile:
        """A copy with some asset keys changed (canonical name -> the catalog's key)."""
        for given, known in ((s2 or {}, _CANONICAL_S2), (s1 or {}, _CANONICAL_S1)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise CatalogError(f"unknown canonical asset names {unknown}",
                                   hint=f"map some of {sorted(known)} to your catalog's keys")
        return replace(self, s2_assets={**self.s2_assets, **(s2 or {})},
                       s1_assets={**self.s1_assets, **(s1 or {})})


PROFILES: dict[str, Profile] = {
    "planetary-computer": Profile("planetary-computer",
                                  hosts=("planetarycomputer.microsoft.com",),
                                  signer="planetary-computer"),
    "earth-search": Profile(
        "earth-search", s1_collection=None, s2_assets=dict(_ES_S2),
        hosts=("earth-search.aws.element84.com",),
        s1_refusal="Earth Search's Sentinel-1 (sentinel-1-grd) is GRD in radar geometry, not "
                   "terrain-corrected RTC backscatter, so it cannot share a map grid with "
                   "Sentinel-2"),
    "generic": Profile("generic"),
}


def _hint_s1() -> str:
    return ("take Sentinel-1 RTC from Planetary Computer: catalog={'s2': EARTH_SEARCH_URL, "
            "'s1': 'https://planetarycomputer.microsoft.com/api/stac/v1'} (CLI: --s1-catalog "
            "URL), or search Sentinel-2 only")


def get_profile(profile: str | Profile | None, url: str | None = None) -> Profile:
    """A profile by name, the profile itself, or (None) the one guessed from ``url``.

    Examples
    --------
    >>> get_profile(None, "https://earth-search.aws.element84.com/v1").name
    'earth-search'
    >>> get_profile("generic").s2_assets["SCL"]
    'SCL'
    """
    if isinstance(profile, Profile):
        return profile
    if profile is None:
        return guess_profile(url)
    if profile not in PROFILES:
        raise CatalogError(f"unknown catalog profile {profile!r}",
                           hint=f"use one of {sorted(PROFILES)}")
    return PROFILES[profile]


def guess_profile(url: str | None) -> Profile:
    """The profile of a STAC API URL, from its host; ``generic`` for any other host.

    Examples
    --------
    >>> guess_profile("https://user:pw@planetarycomputer.microsoft.com/api/stac/v1/").name
    'planetary-computer'
    """
    host = (urlsplit(str(url or "")).hostname or "").lower()
    for prof in PROFILES.values():
        if any(host == h or host.endswith("." + h) for h in prof.hosts):
            return prof
    return PROFILES["generic"]


def s2_offset(processing_baseline: str | float | None) -> float:
    """The DN offset to add before scaling, for a ``s2:processing_baseline``.

    Baselines "04.00" and later store ``DN = reflectance * 10000 + 1000``; earlier ones have
    no offset. A missing baseline is taken as old (no offset), as on older catalogues.

    Examples
    --------
    >>> s2_offset("05.10"), s2_offset("04.00"), s2_offset("03.01"), s2_offset(None)
    (-1000.0, -1000.0, 0.0, 0.0)
    """
    if processing_baseline is None or processing_baseline == "":
        return 0.0
    try:
        baseline = float(processing_baseline)
    except (TypeError, ValueError):
        raise CubeError(f"s2:processing_baseline {processing_baseline!r} is not a version "
                        "number", hint="items must carry baselines like '05.10'") from None
    return S2_OFFSET if baseline >= float(S2_OFFSET_BASELINE) else 0.0


def _raster_offset(asset: Mapping[str, Any], item_id: Any) -> float | None:
    """The DN offset a ``raster:bands`` entry declares (offset / scale), or None."""
    bands = asset.get("raster:bands") or []
    if not bands or not isinstance(bands[0], Mapping) or "offset" not in bands[0]:
        return None
    offset = float(bands[0]["offset"])
    scale = float(bands[0].get("scale", 1.0 / S2_SCALE))
    if not math.isclose(scale * S2_SCALE, 1.0, rel_tol=1e-6):
        raise CubeError(f"item {item_id!r} declares raster:bands scale {scale:g}; geoflow reads "
                        f"Sentinel-2 L2A at 1/{S2_SCALE:g}",
                        hint="use L2A items whose DNs are reflectance x 10000")
    return round(offset / scale, 6)


def item_overlaps(item: Mapping[str, Any], bbox: Sequence[float]) -> bool:
    """Whether a STAC item's ``bbox`` (2D or 3D) meets ``bbox`` (w, s, e, n, the same CRS,
    lon/lat); True for an item without one (its proj metadata decides later).

    Examples
    --------
    >>> item_overlaps({"bbox": [0, 0, 0, 2, 2, 10]}, (1, 1, 3, 3))
    True
    >>> item_overlaps({"bbox": [0, 0, 1, 1]}, (1, 1, 3, 3))
    False
    """
    ib = item.get("bbox")
    if not ib:
        return True
    # A 3D bbox is [w, s, zmin, e, n, zmax].
    w, s, e, n = (float(ib[i]) for i in ((0, 1, 3, 4) if len(ib) == 6 else (0, 1, 2, 3)))
    return w < bbox[2] and e > bbox[0] and s < bbox[3] and n > bbox[1]


def item_offset(item: Mapping[str, Any]) -> float:
    """The DN offset of a Sentinel-2 item, decided once.

    In order: ``geoflow:offset`` (an item this module normalised); Earth Search's
    ``earthsearch:boa_offset_applied: true`` (the COGs already had it removed: 0, whatever
    ``raster:bands`` says); the ``raster:bands`` offset / scale of the first band asset; the
    processing baseline (:func:`s2_offset`).

    Examples
    --------
    >>> item_offset({"properties": {"s2:processing_baseline": "05.09",
    ...                             "earthsearch:boa_offset_applied": True}, "assets": {}})
    0.0
    >>> item_offset({"properties": {"s2:processing_baseline": "05.09"}, "assets": {}})
    -1000.0
    """
    props = item.get("properties") or {}
    if props.get(OFFSET_PROPERTY) is not None:
        return float(props[OFFSET_PROPERTY])
    if props.get("earthsearch:boa_offset_applied") is True:
        return 0.0
    assets = item.get("assets") or {}
    for key in (*S2_BANDS, *_ES_S2.values()):
        if key in assets:
            declared = _raster_offset(assets[key], item.get("id"))
            if declared is not None:
                return declared
            break
    return s2_offset(props.get("s2:processing_baseline"))


def sensor_of(item: Mapping[str, Any]) -> str | None:
    """``"s2"``, ``"s1"`` or None, from an item's collection, ``platform`` or
    ``constellation``.

    Examples
    --------
    >>> sensor_of({"collection": "sentinel-1-rtc"}), sensor_of({"properties":
    ...     {"platform": "sentinel-2b"}})
    ('s1', 's2')
    """
    props = item.get("properties") or {}
    for value in (item.get("collection"), props.get("constellation"), props.get("platform")):
        text = re.sub(r"[\s_]+", "-", str(value or "").lower())
        if re.search(r"sentinel-?2", text):
            return "s2"
        if re.search(r"sentinel-?1", text):
            return "s1"
    return None


def _is_grd(item_id: Any, collection: Any, props: Mapping[str, Any]) -> bool:
    """Whether a Sentinel-1 item is GRD in radar geometry rather than RTC.

    The collection decides (``*-rtc`` accepted, ``*-grd`` refused): Planetary Computer's
    ``sentinel-1-rtc`` items carry ``sar:product_type: "GRD"`` too (the RTC is made from GRD;
    their ids end ``_rtc``), so the product type is read only when neither the collection nor
    the id says which it is.
    """
    name = re.sub(r"[\s_]+", "-", str(collection or "").lower())
    if re.search(r"(^|-)rtc($|-)", name):
        return False
    if re.search(r"(^|-)grd($|-)", name):
        return True
    if str(item_id or "").lower().endswith("_rtc"):
        return False
    return str(props.get("sar:product_type") or "").upper() == "GRD"


def _refuse_s1(item: Mapping[str, Any], profile: Profile) -> None:
    """Raise the clear refusal for a GRD item or a profile without usable Sentinel-1."""
    item_id = item.get("id")
    if _is_grd(item_id, item.get("collection"), item.get("properties") or {}):
        raise CatalogError(f"Sentinel-1 item {item_id!r} is GRD (ground range, radar "
                           "geometry), not terrain-corrected RTC", hint=_hint_s1())
    if profile.s1_refusal:
        raise CatalogError(profile.s1_refusal, hint=_hint_s1())


def missing_polarisations(item: Mapping[str, Any], profile: Profile) -> list[str]:
    """The canonical polarisations (``"vv"``, ``"vh"``) a Sentinel-1 item lacks.

    Planetary Computer's ``sentinel-1-rtc`` holds VV-only and HH/HV scenes too; a search drops
    them (with a log line) rather than failing on them. A GRD item, or one from a profile
    without usable Sentinel-1, is refused here already (:class:`CatalogError`), so it is never
    dropped silently.

    Examples
    --------
    >>> missing_polarisations({"assets": {"vv": {}}, "properties": {}}, PROFILES["generic"])
    ['vh']
    """
    _refuse_s1(item, profile)
    if (item.get("properties") or {}).get(PROFILE_PROPERTY):
        keys: Mapping[str, str] = _CANONICAL_S1
    else:
        keys = profile.s1_assets
    assets = item.get("assets") or {}
    return [canon for canon, key in keys.items() if key not in assets]


def normalize_item(item: Mapping[str, Any], sensor: str, profile: Profile) -> dict[str, Any]:
    """A provider's item as geoflow's canonical item (a new dict; ``item`` is not changed).

    Asset keys become ``B02`` .. ``B12`` and ``SCL`` (Sentinel-2) or ``vv``/``vh``
    (Sentinel-1); ``proj:epsg`` is set from ``proj:code`` where needed; a Sentinel-2 item gets
    its DN offset in ``geoflow:offset`` (:func:`item_offset`). Hrefs are kept as given: the
    workers' signer replaces a signature it owns just before a read, and an href no signer
    owns keeps the one it carries.

    Raises
    ------
    CatalogError
        Sentinel-1 GRD (radar geometry), or a profile that refuses Sentinel-1.
    CubeError
        An item without projection metadata or without the assets the profile names.

    Examples
    --------
    >>> es = {"id": "x", "properties": {"proj:epsg": 32633, "earthsearch:boa_offset_applied":
    ...       True}, "assets": {k: {"href": f"s3://b/{k}.tif"} for k in PROFILES[
    ...       "earth-search"].s2_assets.values()}}
    >>> out = normalize_item(es, "s2", PROFILES["earth-search"])
    >>> out["assets"]["B8A"]["href"], out["properties"]["geoflow:offset"]
    ('s3://b/nir08.tif', 0.0)
    """
    raw = item.to_dict() if hasattr(item, "to_dict") else item
    if not isinstance(raw, Mapping):
        raise CubeError(f"{item!r} is not a STAC item", hint="pass STAC item dicts or pystac Items")
    out = dict(raw)
    props = dict(out.get("properties") or {})
    item_id = out.get("id")
    if sensor == "s1":
        _refuse_s1(out, profile)
    if props.get("proj:epsg") is None:
        # stackstac reads only proj:epsg; STAC 1.1 items (pystac >= 1.12) carry proj:code.
        code = props.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            props["proj:epsg"] = int(code.split(":", 1)[1])
        else:
            raise CubeError(f"item {item_id!r} has no proj:epsg (or proj:code)",
                            hint="use items with the projection extension, e.g. the raw dicts "
                                 "of search.item_collection_as_dict()")
    keys = profile.s2_assets if sensor == "s2" else profile.s1_assets
    if props.get(PROFILE_PROPERTY):  # normalised already: canonical keys, offset decided
        keys = _CANONICAL_S2 if sensor == "s2" else _CANONICAL_S1
    assets = out.get("assets") or {}
    missing = [f"{canon} ({key})" for canon, key in keys.items() if key not in assets]
    if missing:
        raise CubeError(f"{'Sentinel-2' if sensor == 's2' else 'Sentinel-1'} item {item_id!r} "
                        f"lacks assets {missing} of the {profile.name} profile",
                        hint="pick the profile of the catalog the item came from "
                             "(--profile / profile=), or map its asset keys with "
                             "Profile.with_assets")
    # Hrefs are kept as given: a signer that owns an href replaces its query when it signs
    # (geoflow.signing), and one no signer owns may need the signature it carries.
    canon_assets = {canon: dict(assets[key]) for canon, key in keys.items()}
    if sensor == "s2":
        props[OFFSET_PROPERTY] = item_offset({"id": item_id, "properties": props,
                                              "assets": {k: assets[v] for k, v in keys.items()
                                                         if k != SCL_ASSET}})
    props[PROFILE_PROPERTY] = profile.name
    out["properties"] = props
    out["assets"] = canon_assets
    return out


__all__ = [
    "OFFSET_PROPERTY",
    "PROFILES",
    "PROFILE_PROPERTY",
    "S2_OFFSET",
    "S2_OFFSET_BASELINE",
    "S2_SCALE",
    "SCL_ASSET",
    "Profile",
    "get_profile",
    "guess_profile",
    "item_offset",
    "item_overlaps",
    "missing_polarisations",
    "normalize_item",
    "s2_offset",
    "sensor_of",
]
