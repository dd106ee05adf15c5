"""geoflow.session: the catalog a bare call uses, and what the session stops when it ends."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def test_a_server_the_session_started_is_stopped_with_it(small_archive, tmp_path, monkeypatch):
    """With nothing configured the sample archive is served; the session stops the server it
    started (notebook kernels and scripts end this way), not one that was running before."""
    from geoflow import session
    from geoflow.archive.server import running_server

    archive = tmp_path / "archive"
    shutil.copytree(small_archive, archive, ignore=shutil.ignore_patterns("db", "server.json"))
    monkeypatch.setenv("GEOFLOW_ARCHIVE", str(archive))
    monkeypatch.delenv("GEOFLOW_STAC_URL", raising=False)
    try:
        url = session.get_catalog()
        assert url.startswith("http://127.0.0.1:") and running_server(archive) == url
        assert session.get_catalog() == url  # the next call finds it
    finally:
        session.shutdown()
    assert running_server(archive) is None
    # An explicit catalog or GEOFLOW_STAC_URL is used as given: nothing is started.
    assert session.get_catalog("http://127.0.0.1:9/stac") == "http://127.0.0.1:9/stac"
    monkeypatch.setenv("GEOFLOW_STAC_URL", "http://127.0.0.1:9/env")
    assert session.get_catalog() == "http://127.0.0.1:9/env"


def test_a_running_server_is_left_alone(stac_server, small_archive, monkeypatch):
    from geoflow import session
    from geoflow.archive.server import running_server

    monkeypatch.setenv("GEOFLOW_ARCHIVE", str(Path(small_archive)))
    monkeypatch.delenv("GEOFLOW_STAC_URL", raising=False)
    before = running_server(small_archive)
    if before is None:
        pytest.skip("the session server does not record itself in server.json")
    assert session.get_catalog() == before
    session.shutdown()
    assert running_server(small_archive) == before


def test_a_session_that_served_nothing_does_not_import_the_sample_archive() -> None:
    """The sample archive is bootstrapping for the default catalog: a run on a user's catalog
    never loads it, not even at interpreter exit (shutdown runs then)."""
    import subprocess
    import sys

    code = ("import sys, geoflow\nfrom geoflow import session\n"
            "session.get_catalog('http://127.0.0.1:9')\nsession.shutdown()\n"
            "print(sorted(m for m in sys.modules if m.startswith('geoflow.archive')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
