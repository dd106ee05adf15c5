"""Maps in the archive's STAC API: load a maps catalog into the local pgstac.

:func:`load_maps` upserts the ``geoflow-maps`` collection of a static maps catalog
(:func:`geoflow.stac_maps.add_to_catalog`) and its map Items into the pgstac database of a
running archive server, so the STAC API that serves the Sentinel-1/2 inputs also serves the
maps made from them. It connects as the loader (the cluster's superuser, as
:class:`~geoflow.archive.server.ArchiveServer` does for the archive itself); the HTTP server
keeps its read-only ``geoflow_api`` role.

Examples
--------
>>> from geoflow.archive.server import load_maps, serve_archive
>>> with serve_archive("/tmp/archive") as srv:  # doctest: +SKIP
...     load_maps(srv, "maps/catalog.json")
2
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from geoflow.errors import GeoflowError, ServerError

if TYPE_CHECKING:
    import pystac

    from geoflow.archive.server import ArchiveServer

#: Links that pgstac / stac-fastapi make themselves (from the collection and the API root);
#: the static catalog's relative ones would point nowhere once served.
_STRUCTURAL = frozenset({"self", "root", "parent", "collection", "item", "child"})


class MapCatalogError(GeoflowError):
    """A file is not a geoflow maps catalog (``catalog.json`` with a ``geoflow-maps``
    collection, as :func:`geoflow.stac_maps.add_to_catalog` writes)."""


def _read_catalog(path: Path) -> tuple[pystac.Collection, list[pystac.Item]]:
    import pystac

    from geoflow.stac_maps import COLLECTION_ID

    hint = ("pass the catalog.json that `geoflow run`/`reprocess` or "
            "geoflow.stac_maps.add_to_catalog wrote (the maps directory's catalog.json)")
    if not path.is_file():
        raise MapCatalogError(f"maps catalog {path} does not exist", hint=hint)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MapCatalogError(f"{path} is not a JSON file: {err}", hint=hint) from None
    if not isinstance(doc, dict) or doc.get("type") != "Catalog":
        raise MapCatalogError(f"{path} is not a STAC catalog (its type is "
                              f"{doc.get('type') if isinstance(doc, dict) else None!r})",
                              hint=hint)
    try:
        catalog = pystac.Catalog.from_file(str(path))
        collection = catalog.get_child(COLLECTION_ID)
        if not isinstance(collection, pystac.Collection):
            raise MapCatalogError(f"{path} holds no {COLLECTION_ID!r} collection",
                                  hint=hint)
        items = list(collection.get_items())
    except MapCatalogError:
        raise
    except (OSError, ValueError, KeyError, TypeError, pystac.STACError) as err:
        raise MapCatalogError(f"cannot read the maps catalog {path}: {err}",
                              hint=f"{hint}; a damaged catalog is rebuilt by adding each "
                                   "map's .item.json again") from None
    return collection, items


def _absolute_links(obj: pystac.Item | pystac.Collection) -> list[dict[str, Any]]:
    """The object's own links (``predecessor-version``, ``license``...) with absolute hrefs."""
    out = []
    for link in obj.links:
        if link.rel in _STRUCTURAL:
            continue
        d = link.to_dict(transform_href=False)
        d["href"] = link.get_absolute_href() or link.href
        out.append(d)
    return out


def _collection_doc(collection: pystac.Collection) -> dict[str, Any]:
    doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
    doc["links"] = _absolute_links(collection)
    return doc


def _item_doc(item: pystac.Item, collection_id: str) -> dict[str, Any]:
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    doc["collection"] = collection_id
    doc["links"] = _absolute_links(item)
    for key, asset in item.assets.items():
        # Local store paths stay paths (they are not served over HTTP); relative ones are
        # made absolute, as a relative href means nothing to an API client.
        doc["assets"][key]["href"] = asset.get_absolute_href() or asset.href
    return doc


def _loader_dsn(target: ArchiveServer | str | os.PathLike[str]) -> str:
    """The loader's DSN of the database of a running server (an object or an archive path)."""
    from geoflow.archive.server import (
        _DATABASE,
        _HOST,
        _PG_USER,
        ArchiveServer,
        _check_archive,
        _read_server_file,
        cluster_dir,
        running_server,
    )

    if isinstance(target, ArchiveServer):
        if not target.alive():
            raise ServerError(f"the server of {target.archive} is not running",
                              hint="start it (serve_archive) before loading maps into it")
        return f"{target._dsn_base}/{_DATABASE}"
    archive = Path(target).expanduser().resolve()
    _check_archive(archive)
    if running_server(archive) is None:
        raise ServerError(f"no STAC server is running for the archive {archive}",
                          hint=f"start one with `geoflow archive serve {archive} --maps "
                               "CATALOG.json` (it loads the maps as it starts)")
    info = _read_server_file(archive) or {}
    cluster = Path(info.get("cluster") or cluster_dir(archive))
    try:
        state = json.loads((cluster / "state.json").read_text())
        password, port = str(state["password"]), int(state["pg_port"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ServerError(f"cannot read the database settings of the server of {archive} "
                          f"({cluster / 'state.json'}): {err}",
                          hint="run as the user that started the server, or restart it with "
                               f"`geoflow archive serve {archive} --maps CATALOG.json`") from None
    return f"postgresql://{_PG_USER}:{quote(password, safe='')}@{_HOST}:{port}/{_DATABASE}"


def load_maps(server_or_archive: ArchiveServer | str | os.PathLike[str],
              catalog_json: str | os.PathLike[str]) -> int:
    """Load a maps catalog's ``geoflow-maps`` collection and Items into a running server.

    The collection and every map Item are upserted: loading the same catalog twice leaves
    one copy of each, and a re-made map (the same Item id, replaced in the catalog by
    :func:`~geoflow.stac_maps.add_to_catalog`) replaces its Item. Items removed from the
    catalog stay in the database; the collection's extent is the catalog's.

    Asset hrefs stay as the catalog has them: local paths of the map stores (or their
    ``s3://`` URLs). Stores are not served over HTTP, unlike the archive's COGs: a client
    of the API reads a map from its path on this machine, or from object storage.

    The maps live in the server's database, which is rebuilt when the archive itself changes
    (or pgstac is upgraded); ``geoflow archive serve DIR --maps CATALOG.json`` loads them
    again at each start.

    Parameters
    ----------
    server_or_archive
        A started :class:`~geoflow.archive.server.ArchiveServer`, or the directory of an
        archive whose server is running (``geoflow archive serve DIR``, or a detached one).
    catalog_json
        The maps catalog, ``catalog.json`` of a maps directory.

    Returns
    -------
    int
        The number of map Items loaded.

    Raises
    ------
    MapCatalogError
        ``catalog_json`` is missing, not JSON, not a STAC catalog, or has no ``geoflow-maps``
        collection.
    ArchiveError
        ``server_or_archive`` is a path that is not an archive.
    ServerError
        No server is running for the archive, or pgstac refused the maps.

    Examples
    --------
    >>> load_maps("~/.cache/geoflow/archive", "maps/catalog.json")  # doctest: +SKIP
    3
    >>> import pystac_client
    >>> client = pystac_client.Client.open(running_server("~/.cache/geoflow/archive"))
    >>> [i.id for i in client.search(collections=["geoflow-maps"]).items()]  # doctest: +SKIP
    ['east-student_irm-...', 'kiel-student_irm-...', 'kiel-student_irm-...']
    """
    path = Path(catalog_json).expanduser()
    # Read the catalog first: a bad file fails before anything touches the database.
    collection, items = _read_catalog(path)
    dsn = _loader_dsn(server_or_archive)

    import psycopg
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    docs = [_item_doc(i, collection.id) for i in items]
    try:
        db = PgstacDB(dsn=dsn)
        try:
            loader = Loader(db=db)
            loader.load_collections(iter([_collection_doc(collection)]), Methods.upsert)
            if docs:
                loader.load_items(iter(docs), Methods.upsert)
        finally:
            db.close()
    except (psycopg.Error, ValueError, KeyError, TypeError) as err:
        raise ServerError(f"loading the maps of {path} into pgstac failed: {err}",
                          hint="check that each Item has a geometry, bbox and "
                               "start_datetime/end_datetime (re-make it with "
                               "geoflow.stac_maps.write_map_item)") from None
    return len(docs)


__all__ = ["MapCatalogError", "load_maps"]
