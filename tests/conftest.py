"""Session fixtures shared by the whole suite: the small sample archive and its STAC API.

``small_archive`` is created once per session (``size="small"``, seed 0); ``stac_url`` serves it
through the real server (stac-fastapi-pgstac on a private PostgreSQL) on 127.0.0.1 and stops
everything at the end of the session. Use these instead of starting servers of your own.
Tests that use ``stac_url`` (or ``stac_server``) are marked ``server`` automatically.
``s3_endpoint`` is a real S3 server (moto's standalone server) on 127.0.0.1 for the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SERVER_FIXTURES = {"stac_url", "stac_server"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the small sample archive (seed 0), created once per session."""
    from geoflow.archive import create_archive

    path = tmp_path_factory.mktemp("archive") / "small"
    create_archive(path, seed=0, size="small")
    return path


@pytest.fixture(scope="session")
def stac_server(small_archive: Path) -> Iterator[Any]:
    """The running :class:`geoflow.archive.server.ArchiveServer` for ``small_archive``."""
    from geoflow.archive.server import serve_archive

    with serve_archive(small_archive) as srv:
        yield srv


@pytest.fixture(scope="session")
def stac_url(stac_server: Any) -> str:
    """STAC API root of the served ``small_archive``, ``"http://127.0.0.1:PORT"``."""
    return str(stac_server.url)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``"http://127.0.0.1:PORT"`` of moto's S3 server, a real process started for the
    session (``moto_server -H 127.0.0.1 -p PORT`` on a free port) and stopped at its end.
    Set ``AWS_ENDPOINT_URL`` to it (and dummy keys) to use it; each test makes its own bucket.
    """
    from geoflow.bench import local_s3_server

    with local_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two untrained students (seeds 0 and 1): an old and a new model version."""
    from _helpers import untrained_model

    folder = tmp_path_factory.mktemp("models")
    return untrained_model(folder, 0), untrained_model(folder, 1)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """An in-process Dask cluster of one worker (also the default client)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                           dashboard_address="127.0.0.1:0")
    cl = Client(cluster)
    yield cl
    cl.close()
    cluster.close()
