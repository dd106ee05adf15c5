"""geoflow._cluster: clients are reused or started, workers get GDAL settings, GPUs are seen."""

from __future__ import annotations

import os

import pytest


def _worker_env() -> tuple[str | None, int]:
    import torch

    return os.environ.get("GDAL_DISABLE_READDIR_ON_OPEN"), torch.get_num_threads()


def _worker_readiness(dask_worker) -> tuple[tuple[tuple[bool, bool], float], dict[str, bool]]:
    import sys

    import dask

    profiler = (bool(dask.config.get("distributed.worker.profile.enabled")),
                "profile" in dask_worker.periodic_callbacks)
    tick_ms = dask_worker.periodic_callbacks["tick"].callback_time
    return (profiler, tick_ms), {m: m in sys.modules
                                 for m in ("geoflow.regional", "geoflow.store", "zarr")}


def test_gdal_settings_take_environment_overrides_but_retries_from_the_policy(monkeypatch):
    from geoflow._cluster import gdal_settings
    from geoflow.retry import RetryPolicy

    assert gdal_settings()["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES"
    monkeypatch.setenv("GEOFLOW_GDAL_GDAL_HTTP_MERGE_CONSECUTIVE_RANGES", "NO")
    assert gdal_settings()["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "NO"
    # Retries and timeouts are the run's policy, set at the edge: the environment cannot
    # make them differ from what the chunk tasks assume.
    monkeypatch.setenv("GEOFLOW_GDAL_GDAL_HTTP_MAX_RETRY", "7")
    settings = gdal_settings(RetryPolicy(attempts=2, timeout_s=5))
    assert (settings["GDAL_HTTP_MAX_RETRY"], settings["GDAL_HTTP_TIMEOUT"]) == ("1", "5")


def test_existing_client_is_reused_prepared_and_left_open():
    from distributed import Client, LocalCluster

    from geoflow import session
    from geoflow._cluster import prepare_cluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert session.get_client(client) is client
        info = prepare_cluster(client)
        assert info.client is client
        assert info.n_workers == 1 and info.gpu is False
        # The plugin put the GDAL settings into the worker's environment.
        env = client.run(_worker_env)
        assert [v[0] for v in env.values()] == ["EMPTY_DIR"]
        # With no client given, the current one is found and reused, and left open.
        assert session.get_client() is client
        session.shutdown()
        assert client.status == "running"


def test_dask_scheduler_address_is_honoured(monkeypatch):
    from distributed import Client, LocalCluster

    from geoflow import session

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as mine:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        import dask

        dask.config.refresh()
        try:
            client = session.get_client()
            assert client is not mine and client.scheduler.address == cluster.scheduler_address
            assert session.get_client() is client  # one connection per session and address
        finally:
            monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
            dask.config.refresh()
            session.shutdown()
        assert client.status == "closed" and mine.status == "running"


def test_workers_advertising_gpus_are_detected():
    from distributed import Client, LocalCluster

    from geoflow._cluster import prepare_cluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      resources={"GPU": 1}, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert prepare_cluster(client).gpu is True
        # A task asking for the GPU resource runs there.
        assert client.submit(sum, [1, 2], resources={"GPU": 1}).result() == 3


def test_bad_scheduler_address_is_a_clear_error():
    import time

    from geoflow import session
    from geoflow.errors import GeoflowError, RequestError

    t0 = time.monotonic()
    with pytest.raises(GeoflowError, match="cannot connect to the Dask scheduler"):
        session.get_client("tcp://127.0.0.1:9", timeout=2)
    # Bounded by the timeout (Dask's connect may take a little longer).
    assert time.monotonic() - t0 < 15
    with pytest.raises(RequestError, match="is not HOST:PORT"):
        session.get_client("my laptop")
    with pytest.raises(RequestError, match=r"client must be a distributed\.Client"):
        session.get_client(42)


def test_the_session_cluster_is_started_once_listens_on_loopback_and_closes(monkeypatch):
    from urllib.parse import urlparse

    import psutil

    from geoflow import session
    from geoflow._cluster import gdal_settings, prepare_cluster

    monkeypatch.setattr("distributed.get_client", _no_client)
    client = session.get_client(n_workers=1, gdal=gdal_settings())
    try:
        assert session.get_client(n_workers=1) is client  # the next call reuses it
        info = prepare_cluster(client)
        assert info.client.scheduler.address.startswith("tcp://127.0.0.1:")
        workers = info.client.scheduler_info()["workers"]
        assert workers and all(a.startswith("tcp://127.0.0.1:") for a in workers)
        # The bound sockets, not the advertised link: ":0" would listen on every interface.
        port = urlparse(info.dashboard).port
        bound = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert bound == {"127.0.0.1"}
        # Workers came up ready for chunk tasks: no sampling profiler on their hot path, no
        # 20 ms event-loop ticks, the task's modules already imported (not on the first
        # chunk's critical path).
        [((profiler, tick_ms), imported)] = info.client.run(_worker_readiness).values()
        assert profiler == (False, False)
        assert tick_ms >= 500
        assert imported == {"geoflow.regional": True, "geoflow.store": True, "zarr": True}
    finally:
        session.shutdown()
    assert client.status == "closed"


def _no_client() -> None:
    raise ValueError("No clients found")


def test_a_worker_importing_the_users_script_is_refused(tmp_path):
    """Dask's spawned workers import the main script again: geoflow must not run there."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("import geoflow.session\n"
                      "geoflow.session.check_not_reimported()\n"
                      "print('ran', flush=True)\n"
                      "if __name__ == '__main__':\n"
                      "    import multiprocessing as mp\n"
                      "    p = mp.get_context('spawn').Process(target=print)\n"
                      "    p.start(); p.join(); print('child exit', p.exitcode)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.splitlines() == ["ran", "child exit 1"]
    assert 'if __name__ == "__main__":' in out.stderr and "GeoflowError" in out.stderr


_FAULTS = """
import resource, sys
import numpy as np
from geoflow._cluster import tune_malloc

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        a = np.ones(2**17)  # 1 MB, allocated and freed again and again like a chunk's arrays
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults()
assert tune_malloc()
print(plain, faults())
"""


@pytest.mark.skipif(not (hasattr(os, "confstr") and "glibc" in
                         (os.confstr("CS_GNU_LIBC_VERSION") or "").lower()),
                    reason="mallopt is glibc's")
def test_tuned_malloc_stops_page_faults_from_dask_trim_setting():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which pins the mmap threshold at 128 KiB:
    every big array is a fresh mmap, zero-filled page by page. tune_malloc undoes that."""
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    plain, tuned = (int(v) for v in out.stdout.split())
    assert plain > 100 * 100  # a 1 MB array is 256 pages, faulted in again every time
    assert tuned < plain / 20
