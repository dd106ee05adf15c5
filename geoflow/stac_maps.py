"""Every finished map as a STAC Item, and a static catalog of maps that pystac can search.

A map store ``PATH`` (``maps/kiel.zarr`` or ``s3://bucket/kiel.zarr``) gets a sidecar Item
``PATH.item.json`` (``maps/kiel.zarr.item.json``: the store's own name plus ``.item.json``,
beside the store, not inside it, so the Zarr store stays a pure Zarr store and its
:meth:`~geoflow.store.MapStore.digest` is unchanged). The Item holds:

- ``geometry`` / ``bbox``: the map grid's footprint, reprojected to lon/lat (edges densified,
  so the curved UTM edges are covered, not just the corners);
- ``start_datetime`` / ``end_datetime``: the requested period (``datetime`` is null);
- the projection extension (v2): ``proj:code``, ``proj:shape``, ``proj:transform``,
  ``proj:bbox`` of the map grid (all map variables share it);
- the classification extension (v2): ``classification:classes`` (value, name, title,
  ``color_hint`` without ``#``, and 255 as no data) on the Item and on the Zarr asset: the
  scheme of both ``summary_class`` and ``class``;
- ``geoflow:model`` (name, version, checksum), ``geoflow:inputs`` (per date, the S2 and S1 item
  ids the map was made from), ``geoflow:variables``, ``geoflow:version``;
- ``predecessor-version`` links to the Items of earlier versions of the map (reprocessing);
- assets: ``zarr`` (``application/vnd+zarr``), and ``cog`` / ``png`` when exported.

The MLM extension is not declared: its schema requires ``mlm:input``, ``mlm:output`` and
``mlm:architecture``, which describe a model, and a map store records only the model's version
and checksum. A model Item (the model registry's) is where MLM fits; ``geoflow:model`` names
the model so that maps can be found by it.

The maps catalog ``DIR/catalog.json`` holds one collection, ``geoflow-maps``
(``DIR/geoflow-maps/collection.json``, Items under ``DIR/geoflow-maps/ID/ID.json``), whose
extent follows its Items. :func:`find_maps` answers "all maps made by model NAME[@VERSION]
over this bbox" by walking the catalog with pystac.

Examples
--------
>>> item = map_item("maps/kiel.zarr")  # doctest: +SKIP
>>> item.properties["geoflow:model"]["version"]  # doctest: +SKIP
'student_irm-20261124T122353-96c94eb2'
>>> add_to_catalog(write_map_item("maps/kiel.zarr"), "maps")  # doctest: +SKIP
PosixPath('maps/catalog.json')
>>> [i.id for i in find_maps("maps/catalog.json", model="student_irm",
...                          bbox=(10.4, 53.9, 10.7, 54.1))]  # doctest: +SKIP
['kiel-student_irm-20261124T122353-96c94eb2']
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pystac
from pyproj import Transformer
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from geoflow._jsonfile import write_json
from geoflow.grid import _DENSIFY, GridSpec
from geoflow.store import MapStore, _Files

#: Id of the maps collection in a maps catalog.
COLLECTION_ID = "geoflow-maps"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
ITEM_SUFFIX = ".item.json"
NODATA_CLASS = 255
# Versions written by geoflow.model.checkpoint: "<stage>-<YYYYmmddTHHMMSS>-<checksum[:8]>".
_VERSION = re.compile(r"^(?P<name>.+)-\d{8}T\d{6}-[0-9a-f]{8}$")
_DEFAULT_MODEL_NAME = "geoflow-irm"
#: The variables holding class indices, which the classification extension describes.
_CLASS_VARIABLES = ("summary_class", "class")


def model_name(attrs: Mapping[str, Any]) -> str:
    """The model's name: ``model_name`` if the store has one, else the stage in its version.

    Examples
    --------
    >>> model_name({"model_version": "student_irm-20261124T122353-96c94eb2"})
    'student_irm'
    >>> model_name({"model_version": "demo-1"})
    'geoflow-irm'
    """
    if attrs.get("model_name"):
        return str(attrs["model_name"])
    match = _VERSION.match(str(attrs.get("model_version", "")))
    return match["name"] if match else _DEFAULT_MODEL_NAME


def _footprint(grid: GridSpec) -> dict[str, Any]:
    """The grid's outline in lon/lat, each edge densified (UTM edges are curves there)."""
    left, bottom, right, top = grid.bounds
    n = _DENSIFY
    ring = ([(left + (right - left) * i / n, top) for i in range(n)]
            + [(right, top - (top - bottom) * i / n) for i in range(n)]
            + [(right - (right - left) * i / n, bottom) for i in range(n)]
            + [(left, bottom + (top - bottom) * i / n) for i in range(n)])
    to_lonlat = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    lon, lat = to_lonlat.transform([p[0] for p in ring], [p[1] for p in ring])
    coords = [[round(float(x), 9), round(float(y), 9)] for x, y in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [[*coords, coords[0]]]}


def _period(attrs: Mapping[str, Any], times: pd.DatetimeIndex) -> tuple[_dt.datetime, ...]:
    """Start and end of the requested period (UTC); the map's dates when none is recorded."""
    request = attrs.get("request") or {}
    if request.get("start") and request.get("end"):
        start, end = pd.Timestamp(request["start"]), pd.Timestamp(request["end"])
    else:
        dates = attrs.get("dates") or request.get("dates") or ""
        if isinstance(dates, str) and "/" in dates:
            first, last = dates.split("/", 1)
            start = pd.Timestamp(first)
            end = pd.Timestamp(last)
            if len(last) <= 10:  # a day: the period ends with it, not at its midnight
                end += pd.Timedelta(days=1) - pd.Timedelta(seconds=1)
        else:
            start, end = times.min(), times.max()
    return tuple((t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC"))
                 .to_pydatetime() for t in (start, end))


def _classes(attrs: Mapping[str, Any]) -> list[Classification]:
    colors = list(attrs.get("class_colors") or [])
    out = []
    used: set[str] = {"no_data"}  # the nodata entry's name
    for value, title in enumerate(attrs.get("classes") or []):
        color = colors[value].lstrip("#") if value < len(colors) else None
        # The extension's name is an identifier (^[0-9A-Za-z-_]+$); the label goes in title.
        # Any class scheme: names like "Moors, heathland and ..." become identifiers, and two
        # that would collide once cleaned get their value appended (then a counter, until the
        # name is unused: ["a", "a_2", "a?"] -> a, a_2, a_2_2).
        base = re.sub(r"[^0-9A-Za-z_-]+", "_", str(title)).strip("_") or f"class_{value}"
        name = base if base not in used else f"{base}_{value}"
        extra = 2
        while name in used:
            name = f"{base}_{value}_{extra}"
            extra += 1
        used.add(name)
        out.append(Classification.create(value=value, name=name, title=str(title),
                                         color_hint=color))
    out.append(Classification.create(value=NODATA_CLASS, name="no_data", nodata=True,
                                     description="no input scene covered the pixel"))
    return out


def _href(target: str | os.PathLike[str] | pystac.Item) -> str:
    """The href of an earlier map's Item: an Item, its JSON file, or its store."""
    if isinstance(target, pystac.Item):
        return target.get_self_href() or f"{target.id}.json"
    text = os.fspath(target)
    if not text.endswith(".json"):
        text += ITEM_SUFFIX
    return text if "://" in text else str(Path(text).absolute())


def map_item(store: MapStore | str | os.PathLike[str], *, href: str | None = None,
             previous: Any = None, cog: str | os.PathLike[str] | None = None,
             png: str | os.PathLike[str] | None = None,
             storage_options: Mapping[str, Any] | None = None) -> pystac.Item:
    """The STAC Item of a map store (see the module docs for what it holds).

    Parameters
    ----------
    store
        A :class:`~geoflow.store.MapStore`, or the path / URL of one.
    href
        The Item's self href (default: none; :func:`write_map_item` sets it).
    previous
        Earlier versions of this map (a reprocess): an Item, an Item file, a store path (its
        sidecar Item), or a sequence of these; each becomes a ``predecessor-version`` link.
    cog, png
        Exported files (:mod:`geoflow.export`), added as ``cog`` and ``png`` assets.
    storage_options
        fsspec options when ``store`` is a URL.

    Returns
    -------
    pystac.Item

    Examples
    --------
    >>> item = map_item("maps/kiel.zarr", cog="maps/kiel.tif")  # doctest: +SKIP
    >>> item.properties["proj:code"], item.assets["zarr"].media_type  # doctest: +SKIP
    ('EPSG:32632', 'application/vnd+zarr')
    """
    ms = store if isinstance(store, MapStore) else MapStore.open(store, storage_options)
    attrs, grid = ms.attrs, ms.map_grid
    version = str(attrs.get("model_version", ms.model_version))
    stem = re.sub(r"\.zarr$", "", ms.url.rstrip("/").rsplit("/", 1)[-1]) or "map"
    item_id = stem if stem.endswith(version) else f"{stem}-{version}"
    start, end = _period(attrs, ms.times)
    item = pystac.Item(
        id=item_id, geometry=_footprint(grid), bbox=list(grid.bbox_lonlat), datetime=None,
        start_datetime=start, end_datetime=end, properties={
            "title": str(attrs.get("title") or f"geoflow scene-class map {stem}"),
            "description": "Scene classes from Sentinel-1/2 (geoflow); `summary_class` "
                           "over the period, `class` per Sentinel-2 date; 255 = no data.",
            "geoflow:model": {"name": model_name(attrs), "version": version,
                              "checksum": attrs.get("model_checksum")},
            "geoflow:inputs": list(attrs.get("stac_items") or []),
            "geoflow:variables": list(ms.variables),
            "geoflow:version": attrs.get("geoflow_version"),
        })
    if attrs.get("created"):
        item.common_metadata.created = pd.Timestamp(attrs["created"]).to_pydatetime()
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=f"EPSG:{grid.epsg}", shape=list(grid.shape), bbox=list(grid.bounds),
        transform=[float(v) for v in list(grid.transform)[:6]])
    classes = _classes(attrs)
    ClassificationExtension.ext(item, add_if_missing=True).classes = classes
    zarr = pystac.Asset(ms.url, title="Zarr v3 map store", media_type=ZARR_MEDIA_TYPE,
                        roles=["data"], extra_fields={"geoflow:class_variables": [
                            v for v in ms.variables if v in _CLASS_VARIABLES]})
    item.add_asset("zarr", zarr)
    ClassificationExtension.ext(zarr).classes = classes
    if cog is not None:
        item.add_asset("cog", pystac.Asset(_local_or_url(cog), title="summary_class (COG)",
                                           media_type=pystac.MediaType.COG, roles=["data"]))
        ClassificationExtension.ext(item.assets["cog"]).classes = classes
    if png is not None:
        item.add_asset("png", pystac.Asset(_local_or_url(png), title="summary_class (PNG)",
                                           media_type=pystac.MediaType.PNG,
                                           roles=["overview", "visual"]))
    if previous is None:
        olds = []
    else:
        olds = list(previous) if isinstance(previous, list | tuple) else [previous]
    for old in olds:
        item.add_link(pystac.Link("predecessor-version", _href(old),
                                  media_type=pystac.MediaType.JSON, title="earlier version"))
    if href is not None:
        item.set_self_href(href)
    return item


def _local_or_url(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    return text if "://" in text else str(Path(text).absolute())


def item_path(store: MapStore | str | os.PathLike[str]) -> str:
    """Where :func:`write_map_item` puts a store's Item: ``<store>.item.json``.

    Examples
    --------
    >>> item_path("s3://bucket/kiel.zarr/")
    's3://bucket/kiel.zarr.item.json'
    """
    url = store.url if isinstance(store, MapStore) else os.fspath(store)
    url = url.rstrip("/")
    return url + ITEM_SUFFIX if "://" in url else str(Path(url).absolute()) + ITEM_SUFFIX


def write_map_item(store: MapStore | str | os.PathLike[str], *,
                   storage_options: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> Path | str:
    """Write the map's Item beside the store, as ``<store>.item.json``; return where.

    Keyword arguments are those of :func:`map_item`. A local path comes back as a
    :class:`~pathlib.Path`, an object-storage URL as a string. The file is replaced whole
    (an atomic rename on disk, one PUT on object storage).

    Examples
    --------
    >>> write_map_item("maps/kiel.zarr")  # doctest: +SKIP
    PosixPath('/home/me/maps/kiel.zarr.item.json')
    """
    target = item_path(store)
    item = map_item(store, href=target, storage_options=storage_options, **kwargs)
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    if "://" in target:
        files = _Files(target.rsplit("/", 1)[0], storage_options)
        files.write_json(target.rsplit("/", 1)[1], doc)
        return target
    write_json(target, doc)
    return Path(target)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One writer at a time per catalog on this machine (runs may finish together)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".catalog.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def add_to_catalog(item_or_path: pystac.Item | str | os.PathLike[str],
                   catalog_dir: str | os.PathLike[str]) -> Path:
    """Add a map's Item to the static maps catalog ``catalog_dir/catalog.json``.

    The catalog and its ``geoflow-maps`` collection are created on first use; an Item with
    the same id (the same store and model version) is replaced; the collection's extent is
    recomputed from its Items. Asset hrefs are made absolute, so the catalog can live
    elsewhere than the maps. The whole catalog is rewritten (fine for thousands of maps;
    writers on one machine take turns through a lock file).

    Parameters
    ----------
    item_or_path
        An Item (:func:`map_item`) or an Item file (:func:`write_map_item`).
    catalog_dir
        The catalog's local directory.

    Returns
    -------
    pathlib.Path
        The catalog file.

    Examples
    --------
    >>> add_to_catalog("maps/kiel.zarr.item.json", "maps")  # doctest: +SKIP
    PosixPath('maps/catalog.json')
    """
    if isinstance(item_or_path, pystac.Item):
        item = item_or_path.clone()
    else:
        item = pystac.Item.from_file(os.fspath(item_or_path))
    item.make_asset_hrefs_absolute()
    root = Path(catalog_dir)
    path = root / "catalog.json"
    with _locked(root):
        if path.exists():
            catalog = pystac.Catalog.from_file(str(path))
        else:
            catalog = pystac.Catalog("geoflow-maps-catalog", "Maps made by geoflow",
                                     title="geoflow maps")
        collection = catalog.get_child(COLLECTION_ID)
        if not isinstance(collection, pystac.Collection):
            collection = pystac.Collection(
                COLLECTION_ID, "Scene-class maps from Sentinel-1/2, one Item per map store",
                extent=pystac.Extent(pystac.SpatialExtent([list(item.bbox or [])]),
                                     pystac.TemporalExtent([[item.common_metadata.start_datetime,
                                                     item.common_metadata.end_datetime]])),
                title="geoflow maps", license="other")
            catalog.add_child(collection)
        if collection.get_item(item.id) is not None:
            collection.remove_item(item.id)
        for link in [lk for lk in item.links if lk.rel in ("self", "root", "parent",
                                                           "collection")]:
            item.remove_links(link.rel)
        collection.add_item(item)
        collection.update_extent_from_items()
        catalog.normalize_hrefs(str(root.absolute()))
        catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return path


def _match_model(item: pystac.Item, model: str) -> bool:
    """NAME matches the model's name (or its exact version); NAME@VERSION needs both."""
    info = item.properties.get("geoflow:model") or {}
    name, _, version = model.partition("@")
    if version:
        return bool(info.get("name") == name and info.get("version") == version)
    return model in (info.get("name"), info.get("version"))


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def find_maps(catalog_path: str | os.PathLike[str], *, model: str | None = None,
              bbox: Sequence[float] | None = None) -> list[pystac.Item]:
    """All maps in a maps catalog made by ``model`` over ``bbox``.

    A static catalog has no search endpoint, so pystac-client's ``Client.search`` cannot
    query it (it needs a STAC API with the item-search conformance class); this walks the
    catalog's Items with pystac and filters them here.

    Parameters
    ----------
    catalog_path
        ``catalog.json`` of a maps catalog (:func:`add_to_catalog`).
    model
        ``NAME`` (any version: ``student_irm``), ``NAME@VERSION``, or a bare version.
    bbox
        ``(west, south, east, north)`` in degrees; maps whose bbox intersects it. Boxes
        crossing the antimeridian are not supported.

    Returns
    -------
    list of pystac.Item
        Sorted by id.

    Examples
    --------
    >>> find_maps("maps/catalog.json", model="student_irm@student_irm-20261124T122353-"
    ...           "96c94eb2", bbox=(10.4, 53.9, 10.7, 54.1))  # doctest: +SKIP
    [<Item id=kiel-student_irm-20261124T122353-96c94eb2>]
    """
    catalog = pystac.Catalog.from_file(os.fspath(catalog_path))
    found = [item for item in catalog.get_items(recursive=True)
             if (model is None or _match_model(item, model))
             and (bbox is None or (item.bbox is not None and _overlaps(item.bbox, bbox)))]
    return sorted(found, key=lambda i: i.id)


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator limited to the schemas shipped with pystac.

    Never fetches: a schema that is not in the local cache raises :class:`LookupError`
    instead of an HTTP request.
    """

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            raise LookupError(f"schema {schema_uri} is not available offline")
        return self.schema_cache[schema_uri]


def validate_offline(obj: pystac.STACObject) -> dict[str, bool]:
    """Validate a STAC object against every schema that is available without a network.

    Returns
    -------
    dict
        Schema URI -> True (validated) or False (not shipped by any installed package, so
        not checked). Invalid objects raise :class:`pystac.errors.STACValidationError`.

    Examples
    --------
    >>> validate_offline(map_item("maps/kiel.zarr"))  # doctest: +SKIP
    {'https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json': True, ...}
    """
    validator = OfflineValidator()
    doc = obj.to_dict(include_self_link=False, transform_hrefs=False)
    kind = obj.STAC_OBJECT_TYPE
    out: dict[str, bool] = {}
    core = validator.validate_core(doc, kind, doc["stac_version"])
    if core:
        out[core] = True
    for uri in doc.get("stac_extensions", []):
        if uri in validator.schema_cache:
            validator.validate_extension(doc, kind, doc["stac_version"], uri)
        out[uri] = uri in validator.schema_cache
    return out


__all__ = ["COLLECTION_ID", "ITEM_SUFFIX", "ZARR_MEDIA_TYPE", "OfflineValidator",
           "add_to_catalog", "find_maps", "item_path", "map_item", "model_name",
           "validate_offline", "write_map_item"]
