"""Maps in the archive's STAC API: a maps catalog loaded into the session's pgstac."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pystac_client
import pytest
from typer.testing import CliRunner

from geoflow.archive.server import MapCatalogError, load_maps
from geoflow.errors import ArchiveError, ServerError
from geoflow.grid import GridSpec
from geoflow.stac_maps import COLLECTION_ID, add_to_catalog, write_map_item
from geoflow.store import MapStore
from geoflow.tiles import plan_chunks

# tests/ holds the map-store helpers; it is on sys.path only when a test there was collected.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_store import _create, _full_maps, _plan, _write

pytestmark = pytest.mark.server

V1 = "student_irm-20260101T000000-aaaaaaaa"
V2 = "student_irm-20260201T000000-bbbbbbbb"


def _store(path: Path, version: str, plan: Any = None) -> MapStore:
    plan = plan or _plan()
    store = _create(path, plan, model_version=version)
    _write(store, plan, _full_maps(plan))
    return store


def _search_ids(url: str, **query: Any) -> list[str]:
    client = pystac_client.Client.open(url)
    return sorted(i.id for i in client.search(**query).items())


def _counts(url: str, collections: list[str]) -> dict[str, int]:
    client = pystac_client.Client.open(url)
    return {c: len(list(client.search(collections=[c]).items())) for c in collections}


@pytest.fixture
def maps_removed_after(stac_server: Any) -> Iterator[None]:
    """The session's server is shared: take the maps collection out again, so that tests
    which list every collection see only the archive's."""
    yield
    import psycopg

    from geoflow.archive._maps import _loader_dsn

    with psycopg.connect(_loader_dsn(stac_server), autocommit=True) as conn:
        conn.execute("SELECT pgstac.delete_collection('geoflow-maps')")


def test_maps_are_served_by_the_archive_api(stac_server: Any, stac_url: str,
                                            small_archive: Path, tmp_path: Path,
                                            maps_removed_after: None) -> None:
    inputs = ["sentinel-1-rtc", "sentinel-2-l2a"]
    before = _counts(stac_url, inputs)

    kiel = _store(tmp_path / "kiel.zarr", V1)
    # A second map, 100 km east: outside any small bbox around the first.
    far_grid = GridSpec(32632, 10.0, 600000.0, 5000000.0, 32 * 5, 32 * 3)
    east = _store(tmp_path / "east.zarr", V2, plan_chunks(far_grid, 32, 32, 2))
    maps = tmp_path / "maps"
    add_to_catalog(write_map_item(kiel), maps)
    catalog = add_to_catalog(write_map_item(east), maps)

    assert load_maps(stac_server, catalog) == 2
    ids = [f"east-{V2}", f"kiel-{V1}"]
    assert _search_ids(stac_url, collections=[COLLECTION_ID]) == ids
    west, south, e, north = kiel.map_grid.bbox_lonlat
    x, y = (west + e) / 2, (south + north) / 2
    assert _search_ids(stac_url, collections=[COLLECTION_ID],
                       bbox=[x, y, x + 0.001, y + 0.001]) == [f"kiel-{V1}"]
    # The inputs are untouched.
    assert _counts(stac_url, inputs) == before

    client = pystac_client.Client.open(stac_url)
    maps_collection = client.get_collection(COLLECTION_ID)
    assert maps_collection is not None
    served = maps_collection.get_item(f"kiel-{V1}")
    assert served is not None
    # The store is not served over HTTP: its asset stays a local path.
    assert served.assets["zarr"].href == str(kiel.path)
    assert served.properties["geoflow:model"]["version"] == V1

    # Loading again, through the archive path and the CLI, keeps one copy; a re-made map (same
    # id, new content) replaces its Item.
    item = json.loads(Path(write_map_item(kiel)).read_text())
    item["properties"]["title"] = "kiel, re-made"
    (tmp_path / "kiel-remade.item.json").write_text(json.dumps(item))
    add_to_catalog(tmp_path / "kiel-remade.item.json", maps)
    from geoflow.cli import app

    res = CliRunner().invoke(app, ["archive", "load-maps", str(catalog), str(small_archive)])
    assert res.exit_code == 0, res.output
    assert "loaded 2 map(s)" in res.output
    assert load_maps(small_archive, catalog) == 2
    assert _search_ids(stac_url, collections=[COLLECTION_ID]) == ids
    served = maps_collection.get_item(f"kiel-{V1}")
    assert served is not None and served.properties["title"] == "kiel, re-made"
    assert _counts(stac_url, inputs) == before


def test_bad_catalogs_and_missing_servers_are_explained(stac_server: Any,
                                                        tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(MapCatalogError, match="does not exist") as err:
        load_maps(stac_server, missing)
    assert err.value.hint
    (tmp_path / "item.json").write_text(json.dumps({"type": "Feature", "id": "x"}))
    with pytest.raises(MapCatalogError, match="not a STAC catalog"):
        load_maps(stac_server, tmp_path / "item.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MapCatalogError, match="not a JSON file"):
        load_maps(stac_server, tmp_path / "broken.json")
    (tmp_path / "other.json").write_text(json.dumps(
        {"type": "Catalog", "id": "c", "description": "d", "stac_version": "1.1.0",
         "links": []}))
    with pytest.raises(MapCatalogError, match="no 'geoflow-maps' collection"):
        load_maps(stac_server, tmp_path / "other.json")

    # A catalog is fine, but the archive has no server running.
    store = _store(tmp_path / "kiel.zarr", V1)
    catalog = add_to_catalog(write_map_item(store), tmp_path / "maps")
    with pytest.raises(ArchiveError):
        load_maps(tmp_path / "not-an-archive", catalog)
    idle = tmp_path / "idle"
    for sub in ("collections", "items", "assets"):
        (idle / sub).mkdir(parents=True)
    (idle / "archive.json").write_text("{}")
    (idle / "items" / "s2.ndjson").write_text("")
    with pytest.raises(ServerError, match="no STAC server is running") as no_server:
        load_maps(idle, catalog)
    assert "geoflow archive serve" in (no_server.value.hint or "")
