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

    from geoflow._cluster import cluster_client

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with cluster_client(client) as info:
            assert info.client is client and not info.owned
            assert info.n_workers == 1 and info.gpu is False
            # The plugin put the GDAL settings into the worker's environment.
            env = client.run(_worker_env)
            assert [v[0] for v in env.values()] == ["EMPTY_DIR"]
        # With no client given, the current one is found and reused.
        with cluster_client() as info:
            assert info.client is client and not info.owned
        assert client.status == "running"


def test_workers_advertising_gpus_are_detected():
    from distributed import Client, LocalCluster

    from geoflow._cluster import cluster_client

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      resources={"GPU": 1}, dashboard_address=None) as cluster, \
            Client(cluster) as client, cluster_client(client) as info:
        assert info.gpu is True
        # A task asking for the GPU resource runs there.
        assert client.submit(sum, [1, 2], resources={"GPU": 1}).result() == 3


def test_bad_scheduler_address_is_a_clear_error():
    import time

    from geoflow._cluster import cluster_client
    from geoflow.errors import GeoflowError, RequestError
    from geoflow.retry import RetryPolicy

    t0 = time.monotonic()
    with pytest.raises(GeoflowError, match="cannot connect to the Dask scheduler"), \
            cluster_client("tcp://127.0.0.1:9", retry=RetryPolicy(timeout_s=1)):
        pass
    # Bounded by the policy's timeout (at least 5 s; Dask's connect may take twice that).
    assert time.monotonic() - t0 < 20
    with pytest.raises(RequestError, match="is not HOST:PORT"), cluster_client("my laptop"):
        pass


def test_a_new_local_cluster_listens_on_loopback_only(monkeypatch):
    from urllib.parse import urlparse

    import psutil

    from geoflow._cluster import cluster_client

    monkeypatch.setattr("geoflow._cluster._current_client", lambda: None)
    with cluster_client(None, n_workers=1) as info:
        assert info.owned
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
