"""Dask clusters for regional runs: prepare the workers, and start a tuned LocalCluster.

A run needs three things from its cluster: a client, GDAL settings that make remote COG reads
robust and cheap on every worker, and torch not oversubscribing the worker's cores. Which
client a call uses (and how long a LocalCluster lives) is decided at the edge, by
:mod:`geoflow.session`; :func:`prepare_cluster` readies any client's workers.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from geoflow.errors import GeoflowError
from geoflow.retry import Clock, RetryPolicy

# GDAL configuration for reading COGs over HTTP. Merging consecutive ranges and a multi-range
# request cut round trips; EMPTY_DIR stops GDAL from listing the "directory" of every asset
# (one extra request, often a 403/404). Retries and timeouts come from the run's RetryPolicy.
GDAL_SETTINGS: dict[str, str] = {
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "VSI_CACHE": "TRUE",
}
# Process environment of workers only (rasterio.Env wants an int for it): geoflow.cube keeps
# assets open across blocks and chunks (one open per asset and worker thread), so bound GDAL's
# block cache (MB), or decoded blocks of open datasets pile up towards its default of 5 % of
# RAM per worker as a region is read. GDAL reads it at its first block read.
WORKER_ENV: dict[str, str] = {"GDAL_CACHEMAX": "128"}

#: glibc ``M_MMAP_THRESHOLD`` for workers (bytes): the largest value glibc's dynamic threshold
#: reaches on its own; the trim threshold goes to twice that, as glibc's dynamic rule sets it.
#: Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, and setting any malloc
#: tunable freezes glibc's mmap threshold at 128 KiB: every array of a chunk then came from a
#: fresh ``mmap``, and every freed one went back to the kernel, to be zero-filled page by page
#: when allocated again. That doubled the CPU time of reading and inference (sys time as large
#: as user time, ~500k page faults per chunk). Memory still goes back to the system above
#: 64 MiB of free heap, a bound that does not grow with the region.
MMAP_THRESHOLD = 32 * 2**20
#: Imported by :class:`WorkerSetup` when a worker joins: a chunk task needs them, and a
#: worker's first task would otherwise spend about a second importing them (xarray, zarr,
#: stackstac) on the run's critical path, while the other workers already compute.
WORKER_MODULES = ("geoflow.regional", "geoflow.cube", "geoflow.infer", "geoflow.store", "zarr")
#: Dask settings of the LocalCluster that :func:`new_local_cluster` starts, whose scheduler,
#: nannies and workers share the machine's cores with the chunk tasks. A cluster you start
#: yourself keeps its own settings.
#:
#: - The workers' statistical profiler takes the GIL to walk every thread's stack 100 times
#:   a second, interrupting GDAL and torch, only for the dashboard's Profile page. Off, a
#:   6-chunk run on 2 cores took 12-14 s and 21-26 CPU-s instead of 16-18 s and 28-33 CPU-s.
#: - Event-loop ticks every 20 ms, system counters every 500 ms and memory polls every 100 ms
#:   in the scheduler, each nanny and each worker kept an idle 2-worker cluster at 0.21 CPU-s
#:   a second (a tenth of this 2-core machine); at 500 ms / 2 s / 500 ms it is 0.03. A
#:   blocked event loop (3 s) is still reported, a worker near its memory limit still paused
#:   in time, and the dashboard's graphs still fill.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>


def tune_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds in this process; False where there is no glibc.

    Examples
    --------
    >>> tune_malloc()  # on Linux with glibc  # doctest: +SKIP
    True
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "confstr") or "glibc" not in (
            os.confstr("CS_GNU_LIBC_VERSION") or "").lower():
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
                    and libc.mallopt(_M_TRIM_THRESHOLD, 2 * int(threshold)))
    except (OSError, AttributeError, ValueError):
        return False


#: Standard AWS variables that GDAL reads under the same name. Not the credentials
#: (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``): GDAL and boto
#: read those from each process's own environment, ``rasterio.Env`` refuses them as options,
#: and settings sent with tasks must not carry secrets.
_AWS_SAME_NAME = ("AWS_REQUEST_PAYER", "AWS_NO_SIGN_REQUEST")


def aws_gdal_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """GDAL's options for ``s3://`` (``/vsis3/``) reads, from the standard AWS environment.

    boto3 and s3fs read ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) and the region;
    GDAL ignores the endpoint URL and wants ``AWS_S3_ENDPOINT`` (host and port),
    ``AWS_HTTPS`` and ``AWS_VIRTUAL_HOSTING`` instead, or it asks
    ``BUCKET.s3.REGION.amazonaws.com``. An S3-compatible endpoint is addressed path-style
    (``AWS_VIRTUAL_HOSTING=FALSE``), which they all serve. GDAL options already set in the
    environment win. The endpoint URL itself is passed on too, for s3fs on the workers.

    Credentials are not among them: GDAL reads ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` (or ``AWS_PROFILE``'s files) from the
    process environment itself, workers of a LocalCluster inherit the client's, and workers
    elsewhere use their own (an IAM role, a mounted secret): keys never travel with tasks.

    Parameters
    ----------
    environ
        Where to read the variables (default ``os.environ``).

    Returns
    -------
    dict
        Only options derived from variables that are set.

    Examples
    --------
    >>> aws_gdal_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    ...                   "AWS_DEFAULT_REGION": "eu-west-1",
    ...                   "AWS_SECRET_ACCESS_KEY": "s"})  # doctest: +NORMALIZE_WHITESPACE
    {'AWS_REGION': 'eu-west-1', 'AWS_ENDPOINT_URL': 'http://127.0.0.1:9000',
     'AWS_S3_ENDPOINT': '127.0.0.1:9000', 'AWS_HTTPS': 'NO', 'AWS_VIRTUAL_HOSTING': 'FALSE'}
    """
    from urllib.parse import urlsplit

    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for key in _AWS_SAME_NAME:
        if env.get(key):
            out[key] = env[key]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        out["AWS_REGION"] = region
    endpoint_key = next((k for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if env.get(k)),
                        None)
    if endpoint_key:
        url = env[endpoint_key].strip()
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            out[endpoint_key] = url
            out["AWS_S3_ENDPOINT"] = host + (f":{parts.port}" if parts.port else "")
            out["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
            out["AWS_VIRTUAL_HOSTING"] = "FALSE"
    for key in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
        if env.get(key):
            out[key] = env[key]
    return out


def gdal_settings(retry: RetryPolicy | None = None) -> dict[str, str]:
    """GDAL settings pushed to workers: :data:`GDAL_SETTINGS` (each overridable by a
    ``GEOFLOW_GDAL_<NAME>`` environment variable), the ``s3://`` options translated from the
    standard AWS environment (:func:`aws_gdal_options`), then the HTTP retries and timeouts
    of ``retry`` (which the environment does not override: the policy is set at the edge).

    Returns
    -------
    dict
        Name -> value, ready for ``rasterio.Env(**settings)`` or ``os.environ``.

    Examples
    --------
    >>> gdal_settings()["GDAL_DISABLE_READDIR_ON_OPEN"]
    'EMPTY_DIR'
    >>> gdal_settings(RetryPolicy(timeout_s=5))["GDAL_HTTP_TIMEOUT"]
    '5'
    """
    out = dict(GDAL_SETTINGS)
    for key in list(out):
        override = os.environ.get(f"GEOFLOW_GDAL_{key}")
        if override is not None:
            out[key] = override
    out.update(aws_gdal_options())
    out.update((retry or RetryPolicy()).gdal_options())
    return out


class WorkerSetup(WorkerPlugin):
    """Worker plugin: GDAL settings into the environment, torch threads fixed, malloc tuned,
    the chunk task's modules imported.

    GDAL reads configuration options from the process environment when it has no explicit
    setting, so putting them in ``os.environ`` reaches every ``rasterio`` open on the worker,
    including those made by stackstac. Tasks also wrap reads in ``rasterio.Env`` for the case
    where a plugin could not run (an old worker joining later gets the plugin too).
    """

    name = "geoflow-worker-setup"

    def __init__(self, gdal: dict[str, str], torch_threads: int | None) -> None:
        self.gdal = dict(gdal)
        self.torch_threads = torch_threads

    def setup(self, worker: Any) -> None:
        tune_malloc()
        os.environ.update(self.gdal)
        for key, value in WORKER_ENV.items():
            os.environ.setdefault(key, value)
        threads = self.torch_threads or max(1, int(getattr(worker.state, "nthreads", 1) or 1))
        try:
            import torch

            torch.set_num_threads(threads)
        except Exception:  # torch missing on a pure-IO worker: nothing to tune
            pass
        for module in WORKER_MODULES:
            with contextlib.suppress(ImportError):  # a task then fails with the real error
                importlib.import_module(module)


@dataclass
class ClusterInfo:
    """What a run needs to know about its cluster."""

    client: Client
    n_workers: int
    gpu: bool
    dashboard: str | None
    #: Threads of all workers together (tasks the cluster runs at once; at least n_workers).
    n_threads: int


def _worker_resources(client: Client) -> list[dict[str, float]]:
    info = client.scheduler_info()
    return [dict(w.get("resources") or {}) for w in info.get("workers", {}).values()]


def has_gpu_workers(client: Client) -> bool:
    """Whether any worker of ``client``'s cluster advertises a ``GPU`` resource.

    Inference tasks then carry ``resources={"GPU": 1}`` so each GPU runs one chunk at a time.

    Examples
    --------
    >>> has_gpu_workers(client)  # doctest: +SKIP
    False
    """
    return any(r.get("GPU", 0) > 0 for r in _worker_resources(client))


def _dashboard(client: Client) -> str | None:
    try:
        return str(client.dashboard_link)
    except Exception:  # no bokeh, or dashboard disabled
        return None


def new_local_cluster(n_workers: int | None, gdal: dict[str, str], *,
                      threads_per_worker: int = 1,
                      resources: Mapping[str, float] | None = None,
                      ) -> tuple[LocalCluster, Client]:
    """A LocalCluster of processes with one thread each, tuned for chunk tasks
    (:data:`LOCAL_CLUSTER_CONFIG`, :data:`WORKER_ENV`), on 127.0.0.1 only, and its client.

    The caller owns both (:mod:`geoflow.session` keeps one per Python session).
    ``threads_per_worker`` and ``resources`` (e.g. ``{"GPU": 4}``: four chunks at once on a
    worker that owns a GPU) are for the device benchmark.

    Examples
    --------
    >>> cluster, client = new_local_cluster(2, gdal_settings())  # doctest: +SKIP
    """
    n = n_workers or min(os.cpu_count() or 1, 8)
    with dask.config.set(LOCAL_CLUSTER_CONFIG):  # nannies pass it to their workers
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=int(threads_per_worker), processes=True,
            resources=dict(resources) if resources else None,
            # Loopback only: scheduler, workers and dashboard are this machine's.
            host="127.0.0.1",
            # A free port: None would mean the default 8787, taken by a second cluster.
            dashboard_address="127.0.0.1:0",
            # Environment for the worker processes from the start: GDAL options.
            env={**WORKER_ENV, **gdal})
    return cluster, Client(cluster, set_as_default=False)


def close_local_cluster(cluster: LocalCluster, client: Client) -> None:
    """Close a cluster from :func:`new_local_cluster`: the client, the workers, then the
    scheduler (a worker whose scheduler went first logs heartbeat tracebacks)."""
    with contextlib.suppress(Exception):
        client.close()
    with contextlib.suppress(Exception):
        cluster.scale(0)
    with contextlib.suppress(Exception):
        cluster.close(timeout=10)


def prepare_cluster(client: Client, *, retry: RetryPolicy | None = None,
                    clock: Clock | None = None,
                    torch_threads: int | None = None) -> ClusterInfo:
    """Prepare the workers of ``client`` for chunk tasks and describe the cluster.

    Registers :class:`WorkerSetup` (GDAL options of ``retry``, torch threads, malloc, imports)
    on every worker, present and future, and waits for a first worker if there is none yet.

    Parameters
    ----------
    client
        The run's client (from :func:`geoflow.session.get_client`, or the caller's).
    retry
        Its GDAL options go to the workers; ``worker_wait_s`` bounds the wait for a worker.
    clock
        The command's deadline, which caps the wait.
    torch_threads
        Threads torch may use per worker (default: the worker's thread count).

    Raises
    ------
    GeoflowError
        No worker joined in time (:class:`~geoflow.errors.DeadlineError` if the deadline
        passed first).

    Examples
    --------
    >>> info = prepare_cluster(client)  # doctest: +SKIP
    >>> info.n_workers, info.gpu  # doctest: +SKIP
    (2, False)
    """
    policy = retry or RetryPolicy()
    clock = clock or policy.start()
    client.register_plugin(WorkerSetup(gdal_settings(policy), torch_threads),
                           name=WorkerSetup.name)
    n_now = len(client.scheduler_info().get("workers", {}))
    if n_now == 0:
        # A fresh scheduler whose workers are still coming up (k8s, HPC queue): wait, but
        # not forever.
        wait_s = clock.cap(policy.worker_wait_s)
        try:
            client.wait_for_workers(1, timeout=wait_s)
        except TimeoutError:
            clock.check("waiting for Dask workers")
            raise GeoflowError(
                f"no Dask worker joined the scheduler within {wait_s:.0f} s",
                hint="start workers (dask worker ADDRESS, or deploy/local/cluster.sh), or "
                     "wait longer with retry.worker_wait_s") from None
    workers = client.scheduler_info().get("workers", {})
    threads = sum(int(w.get("nthreads") or 1) for w in workers.values())
    return ClusterInfo(client=client, n_workers=max(1, len(workers)),
                       gpu=has_gpu_workers(client), dashboard=_dashboard(client),
                       n_threads=max(1, threads))


__all__ = ["GDAL_SETTINGS", "ClusterInfo", "WorkerSetup", "aws_gdal_options",
           "close_local_cluster", "gdal_settings",
           "has_gpu_workers", "new_local_cluster", "prepare_cluster", "tune_malloc"]
