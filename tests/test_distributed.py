"""A long-lived cluster of real processes: `dask scheduler` and `dask worker` started from the
command line (deploy/local/cluster.sh), in working directories of their own, one worker with
``--resources GPU=1``. The model reaches the workers by content: they run in a mount
namespace where the folder holding the client's checkpoint is empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import centre_quarter, untrained_model
from distributed import Client

from geoflow.store import MapStore

SCRIPT = str(Path(__file__).resolve().parents[1] / "deploy" / "local" / "cluster.sh")
CHUNK_PATCHES = 2


@pytest.fixture(scope="module")
def hidden_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained checkpoint in a folder the workers will not see."""
    return Path(untrained_model(tmp_path_factory.mktemp("client-only"), 1))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, hidden_model: Path):
    """cluster.sh with 1 CPU and 1 GPU worker; in a private mount namespace whose copy of the
    checkpoint's folder is an empty tmpfs, where the machine allows one."""
    state = tmp_path_factory.mktemp("cluster")
    cmd = [SCRIPT, "--workers", "1", "--gpu-workers", "1", "--port", "0", "--dir", str(state)]
    folder = hidden_model.parent
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True)
    hidden = probe.returncode == 0
    if hidden:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs tmpfs "{folder}" && exec "$@"', "sh", *cmd]
    log = (state / "cluster.err").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    try:
        address = proc.stdout.readline().strip() if proc.stdout else ""
        assert address.startswith("tcp://127.0.0.1:"), (state / "cluster.err").read_text()
        yield address, hidden
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        # Whatever the script could not stop itself (it was seen to leave its scheduler and
        # workers once in a full run): `cluster.sh stop` ends the process groups it recorded.
        subprocess.run([SCRIPT, "stop", "--dir", str(state)], capture_output=True, timeout=60)
        log.close()


@pytest.mark.slow
def test_command_line_cluster_maps_like_a_local_cluster(cluster, hidden_model, small_archive,
                                                        stac_url, tmp_path, monkeypatch):
    from geoflow import session
    from geoflow.regional import classify_region

    address, hidden = cluster
    bbox_t, dates = centre_quarter(Path(small_archive))
    bbox = ",".join(map(str, bbox_t))
    with Client(address, set_as_default=False) as client:
        info = client.scheduler_info()["workers"].values()
        assert sorted(w.get("resources", {}).get("GPU", 0) for w in info) == [0, 1]
        # Workers have their own working directories, and (where a mount namespace could be
        # made) cannot read the checkpoint the client names.
        cwds = set(client.run(os.getcwd).values())
        assert len(cwds) == 2 and os.getcwd() not in cwds
        if hidden:
            assert set(client.run(os.path.exists, str(hidden_model)).values()) == {False}

        # 1. The command line, with --scheduler.
        cli_out = tmp_path / "cli.zarr"
        run = subprocess.run(
            [sys.executable, "-m", "geoflow.cli", "classify", "--bbox", bbox, "--dates", dates,
             "--out", str(cli_out), "--catalog", stac_url, "--model", str(hidden_model),
             "--chunk-patches", str(CHUNK_PATCHES), "--scheduler", address, "--json"],
            capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Traceback" not in run.stderr  # a run that succeeded prints no traceback

        # 2. Python, with the scheduler from DASK_SCHEDULER_ADDRESS (no client argument).
        import dask

        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
        dask.config.refresh()
        monkeypatch.setattr("distributed.get_client", _no_current_client)
        try:
            py_out = tmp_path / "py.zarr"
            ds = classify_region(bbox, dates, out=str(py_out), catalog=stac_url,
                                 model=str(hidden_model), chunk_patches=CHUNK_PATCHES)
            assert ds.attrs["run"]["failures"] == {}
        finally:
            monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
            dask.config.refresh()
            session.shutdown()

    # 3. The same request on an in-process LocalCluster: the same bytes.
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as local, Client(local) as lc:
        ref = tmp_path / "local.zarr"
        classify_region(bbox, dates, out=str(ref), catalog=stac_url, model=str(hidden_model),
                        chunk_patches=CHUNK_PATCHES, client=lc)
    digests = {p.name: MapStore.open(str(p)).digest() for p in (cli_out, py_out, ref)}
    assert len(set(digests.values())) == 1, digests
    assert len(MapStore.open(str(ref)).done()) > 1  # several chunks, not one


def _no_current_client() -> None:
    raise ValueError("No clients found")


def test_cluster_script_is_executable():
    assert os.access(SCRIPT, os.X_OK) and shutil.which("bash")
