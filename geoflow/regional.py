"""Regional maps on Dask: :func:`classify_region`.

The flow is one direction: validate the request and options, lay the output grid and its
chunks, search the catalog, get the cluster ready, write the store's template (or verify the
done chunks of an existing one), then run one task per chunk. A task reads its chunk's cube
window, classifies it with the worker's cached model (sent once by content), computes the
period summary for its pixels and writes its region of the Zarr store; the ledger then records
what the chunk wrote. Only small summaries come back to the client, and chunks are submitted in
a bounded window, so a region of any size costs time, not client memory or scheduler load.
Reprocessing (:mod:`geoflow.reprocess`) runs the same steps with pinned inputs.

Which client and catalog a call uses, when it passes none, is decided at the edge
(:mod:`geoflow.session`). Without ``out`` the run writes to a temporary local store, loads the
result into memory and deletes the store: one code path for both cases. A temporary store
needs workers that share the client's file system (any LocalCluster); on a remote cluster pass
``out`` on a shared file system or an object store.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from geoflow import session
from geoflow._cluster import gdal_settings
from geoflow._options import RunOptions
from geoflow._progress import auto_progress, check_progress
from geoflow.errors import GeoflowError, RequestError, RunFailedError, strip_secrets
from geoflow.profiles import item_overlaps
from geoflow.retry import ChunkFailure, Clock, RetryPolicy, assets_are_local, attempt, short_error

#: Futures in flight per worker thread: enough to keep each busy while the client handles
#: results (a worker with N threads, such as the GPU check's, runs N chunks at once).
WINDOW_PER_WORKER = 2
#: Patches per chunk side when the caller does not say. Bigger chunks read their assets with
#: less overhead (fewer opens, fewer COG blocks decoded twice); memory per task grows with it
#: (about 14 MB per date for 16 x 16 patches of 32 px).
DEFAULT_CHUNK_PATCHES = 16

ProgressCallback = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- worker side
@dataclass
class _TaskSpec:
    """Everything a chunk task needs besides the chunk and the scenes; small and picklable."""

    store_path: str
    stride: int
    batch_size: int | None
    device: str
    n_classes: int
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Reader threads of a chunk (the policy's, or the default for where the assets are).
    io_threads: int = 1
    #: The command's deadline (wall clock): no retry starts after it.
    clock: Clock = field(default_factory=Clock)
    gdal: dict[str, str] = field(default_factory=dict)
    #: Token of the run: workers keep assets open across the run's chunks, not across runs.
    session: str = ""
    #: fsspec options of the store (may hold credentials: kept out of the repr, which Dask
    #: logs for a failed task).
    storage_options: dict[str, Any] | None = field(default=None, repr=False)
    #: Adds layers to a chunk's map before it is written: ``hook(chunk, result, spec)`` ->
    #: result (reprocessing's ``changed``). A picklable module-level callable or None.
    chunk_hook: Callable[[Any, xr.Dataset, Any], xr.Dataset] | None = None
    #: Sign asset hrefs just before each read (geoflow.signing); kept out of the repr.
    signers: tuple[Any, ...] = field(default=(), repr=False)


def _open_store(path: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    from geoflow.store import MapStore

    return MapStore.open(path, storage_options)


def run_chunk(chunk: Any, scenes: dict[str, list[dict]], spec: _TaskSpec,
              model_bytes: Any) -> dict[str, Any]:
    """Task body for one chunk: read, classify, summarise, write, mark done.

    Module level so it pickles by reference. Returns a small summary dict; a chunk that keeps
    failing is recorded in the store's ledger and returned with ``status="failed"`` rather
    than raised, so one broken asset does not stop the region. The run's signers are active
    while it runs (:func:`geoflow.signing.activated`).
    """
    from geoflow.signing import activated

    with activated(spec.signers):
        return _run_chunk(chunk, scenes, spec, model_bytes)


def read_chunk_cube(scenes: Any, read_grid: Any, gdal: dict[str, str],
                    io_threads: int) -> xr.Dataset:
    """A chunk's cube read into memory as a worker reads it: under the run's GDAL settings,
    on ``io_threads`` reader threads (``geoflow bench`` measures this same read)."""
    import rasterio

    from geoflow.cube import build_cube

    with rasterio.Env(**gdal):
        cube = build_cube(scenes, read_grid)
        if io_threads <= 1:
            return cube.compute(scheduler="sync")
        return cube.compute(scheduler="threads", num_workers=io_threads)


def _run_chunk(chunk: Any, scenes: dict[str, list[dict]], spec: _TaskSpec,
               model_bytes: Any) -> dict[str, Any]:
    from geoflow.catalog import SceneSet
    from geoflow.cube import read_session
    from geoflow.infer import add_summary, classify_window, get_model

    t0 = time.perf_counter()
    read_session(spec.session or None)
    store = _open_store(spec.store_path, spec.storage_options)
    if not any(item_overlaps(it, chunk.read_grid.bbox_lonlat) for it in scenes["s2"]):
        # A chunk beyond the scenes' footprints (the region's edge past the archive): a valid,
        # empty map, not a failure.
        store.write_chunk(chunk, store.empty_chunk(chunk))
        return {"chunk": chunk.id, "status": "done", "seconds": time.perf_counter() - t0,
                "read_s": 0.0, "infer_s": 0.0, "pixels": 0, "valid": 0,
                "worker_pid": os.getpid()}
    try:
        scene_set = SceneSet(s2=scenes["s2"], s1=scenes["s1"])
        cube = attempt(lambda: read_chunk_cube(scene_set, chunk.read_grid, spec.gdal,
                                               spec.io_threads),
                       "reading the cube", spec.retry, spec.clock)
        t_read = time.perf_counter() - t0
        model = get_model(model_bytes, device=spec.device)
        result = classify_window(cube, model, spec.stride, batch_size=spec.batch_size or 256)
        result = add_summary(result, spec.n_classes)
        if spec.chunk_hook is not None:
            result = spec.chunk_hook(chunk, result, spec)
        t_infer = time.perf_counter() - t0 - t_read

        def write() -> None:
            store.write_chunk(chunk, result)

        attempt(write, "writing the chunk", spec.retry, spec.clock)
    except ChunkFailure as err:
        reason = str(err)  # built by short_error: signed hrefs have lost their tokens
        store.record_failure(chunk.id, reason)
        return {"chunk": chunk.id, "status": "failed", "reason": reason,
                "seconds": time.perf_counter() - t0}
    except GeoflowError as err:
        reason = f"{type(err).__name__}: {err}"  # GeoflowError messages are stripped already
        store.record_failure(chunk.id, reason)
        return {"chunk": chunk.id, "status": "failed", "reason": reason,
                "seconds": time.perf_counter() - t0}
    cls = result["class"].values
    return {
        "chunk": chunk.id,
        "status": "done",
        "seconds": time.perf_counter() - t0,
        "read_s": t_read,
        "infer_s": t_infer,
        "pixels": int(cls[0].size) if cls.ndim == 3 else int(cls.size),
        "valid": int((cls != 255).sum()),
        "worker_pid": os.getpid(),
    }


# --------------------------------------------------------------------------- client side
@dataclass
class RunReport:
    """What a run did; stored in the map's root attributes as ``run``."""

    chunks_total: int = 0
    chunks_skipped: int = 0
    chunks_computed: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    km2: float = 0.0
    dashboard: str | None = None

    @property
    def km2_per_s(self) -> float:
        return self.km2 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunks_total": self.chunks_total,
            "chunks_skipped": self.chunks_skipped,
            "chunks_computed": self.chunks_computed,
            "failures": dict(self.failures),
            "seconds": round(self.seconds, 3),
            "km2": round(self.km2, 3),
            "km2_per_s": round(self.km2_per_s, 3),
        }


def _model_meta(model: str | os.PathLike[str] | None) -> tuple[Any, Any]:
    """The checkpoint's bytes (what the workers get) and the model loaded here (metadata)."""
    from geoflow.model import load
    from geoflow.model.checkpoint import CheckpointBytes
    from geoflow.model.registry import resolve_model

    # A path, a registry name (NAME, NAME@VERSION) or None (the shipped demo weights).
    loaded = load(resolve_model(model), device="cpu")
    return CheckpointBytes.from_path(loaded.path), loaded


def _times_and_ids(scenes: Any, grid: Any) -> tuple[np.ndarray, list[str], list[str]]:
    """Time steps of the cube (same for every chunk: each chunk's cube sees all scenes)."""
    from geoflow.cube import build_cube

    cube = build_cube(scenes, grid)  # lazy: nothing is read
    times = cube["time"].values
    s2_ids = [str(v) for v in cube["s2_ids"].values] if "s2_ids" in cube.coords else []
    s1_ids = [str(v) for v in cube["s1_ids"].values] if "s1_ids" in cube.coords else []
    return times, s2_ids, s1_ids


def classify_region(
    bbox: str | Sequence[float],
    dates: str | tuple[Any, Any],
    *,
    out: str | os.PathLike[str] | None = None,
    catalog: Any = None,
    model: str | os.PathLike[str] | None = None,
    client: Any = None,
    crs: int | None = None,
    resolution: float = 10,
    stride: int | None = None,
    max_cloud: float | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    chunk_patches: int | None = None,
    progress: ProgressCallback | bool | str | None = "auto",
    overwrite: bool = False,
    n_workers: int | None = None,
    max_area_km2: float | None = None,
    retry: RetryPolicy | Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    items: Any = None,
    profile: str | None = None,
    signer: Any = None,
) -> xr.Dataset:
    """Map scene classes over a region and period, chunk by chunk on a Dask cluster.

    Parameters
    ----------
    bbox
        ``(W, S, E, N)`` in degrees, or ``"W,S,E,N"``.
    dates
        ``"YYYY-MM-DD/YYYY-MM-DD"`` (end inclusive) or a pair.
    out
        Zarr store: a directory (local, or on a file system all workers mount), or an fsspec
        URL all workers reach (``s3://bucket/map.zarr``, ``gs://...``; see
        ``storage_options``). The map is written there as chunks finish and the result is
        opened from it lazily. Rerunning the same request on the same store resumes: done
        chunks are skipped. None: a temporary store, loaded into memory, then deleted.
    catalog
        STAC API URL, :class:`geoflow.catalog.CatalogSettings`, a ``pystac_client.Client``,
        or ``{"s2": ..., "s1": ...}`` (one catalog per sensor, e.g. Earth Search for
        Sentinel-2 and Planetary Computer for Sentinel-1). The catalog profile (asset keys,
        offsets, signing) is guessed from each URL's host. Default: ``GEOFLOW_STAC_URL``,
        else the bundled sample archive, served locally (created and started if needed).
    model
        Checkpoint path; default the shipped demo checkpoint. Its bytes go to each worker once
        (checked by sha256 there and cached per worker): workers need no file of the client's.
    client
        A ``distributed.Client`` or scheduler address; default ``DASK_SCHEDULER_ADDRESS``, else
        the current client, else this Python session's LocalCluster (processes, one thread
        each), started on the first call and reused by the next (see :mod:`geoflow.session`).
    crs
        EPSG code of the output grid; default the UTM zone of the bbox centre.
    resolution
        Pixel size of the input grid in metres.
    stride
        Patch step in input pixels; default the model's patch size. Smaller gives overlapping
        windows and a finer map (map pixel = ``stride * resolution``).
    max_cloud
        Upper limit on Sentinel-2 scene cloud cover (percent).
    batch_size
        Patches per model batch on the workers.
    device
        ``"cpu"``, ``"cuda"`` or None (each worker picks CUDA if it has a GPU).
    chunk_patches
        Patches per chunk side (the unit of work, retry and resume). Default: at most 16,
        split evenly across the region (a region 17 patches wide gets chunks of 9 and 8).
    progress
        ``"auto"`` (default): a live line in Jupyter (chunks, km², failures, elapsed, ETA,
        the dashboard link), a bar when stderr is a terminal, else nothing; True / False; or
        a callable, called with small event dicts: ``{"event": "start", ...}`` once, then
        ``{"event": "chunk", ...}`` per finished chunk.
    overwrite
        Delete an existing store at ``out`` first instead of resuming it.
    n_workers
        Workers of the session's LocalCluster (another number restarts it).
    max_area_km2
        Raise the request's area limit.
    retry
        Attempts, backoff, per-request timeout, overall deadline and reader threads
        (:class:`geoflow.retry.RetryPolicy` or a mapping of its fields). With a deadline the
        call ends by then with :class:`~geoflow.errors.DeadlineError`, keeping the chunks
        finished so far for a rerun.
    storage_options
        fsspec options for an ``out`` URL, used on the client and on every worker (e.g.
        ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for s3fs); never written to
        the store. Without them s3fs follows the standard AWS environment
        (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
        ``AWS_REGION``): a LocalCluster's workers inherit it; the endpoint and region also go
        to every worker, translated for GDAL's ``s3://`` reads of inputs; workers elsewhere
        use their own credentials.
    items
        Bring your own search: a pystac ``ItemCollection`` or a list of Sentinel-2 (and
        Sentinel-1) items or item dicts, used instead of searching ``catalog``; items outside
        the bbox and dates (and S2 items over ``max_cloud``) are left out, as a search would.
        A signer that owns an href re-signs it on the workers; other hrefs are read as given.
        The catalog their ``root`` links name is recorded for reprocessing.
    profile
        ``"planetary-computer"``, ``"earth-search"`` or ``"generic"``: overrides the profile
        guessed for ``catalog`` URLs or for ``items`` (a ready ``CatalogSettings`` with
        another profile is an error: set it there).
    signer
        For ``items``: how the workers sign their hrefs (``"planetary-computer"`` or a
        :class:`geoflow.signing.HrefSigner`); default the items' profile's. For a catalog,
        set it in :class:`~geoflow.catalog.CatalogSettings` (given with ``catalog=`` it is
        an error, not ignored).

    Returns
    -------
    xarray.Dataset
        ``class``, ``confidence``, ``sar_weight``, ``cloud_fraction`` on (time, y, x) and
        ``summary_class``, ``summary_confidence`` on (y, x), all uint8 as stored (classes
        255 = no data; the others 0-255 = 0-1); CRS in ``spatial_ref``; attrs name
        the region, dates, model and classes (the Jupyter repr shows them), and
        ``run`` reports the run (chunks computed and skipped, failures, seconds, km²).

    Raises
    ------
    RequestError
        A bad bbox, date, option or keyword (before anything is searched or written).
    RunFailedError
        Some chunks kept failing; the rest of the map is written and ``err.failures`` maps
        chunk ids to reasons. Rerun the same call to retry only those chunks.
    DeadlineError
        ``retry.deadline_s`` passed; finished chunks are kept, a rerun resumes.

    Examples
    --------
    >>> import geoflow
    >>> m = geoflow.classify_region((13.30, 52.45, 13.45, 52.55), "2024-06-01/2024-06-30",
    ...                             out="berlin.zarr")  # doctest: +SKIP
    >>> m.summary_class.plot()  # doctest: +SKIP
    """

    from geoflow.catalog import search_scenes
    from geoflow.request import Request

    t_start = time.perf_counter()
    session.check_not_reimported()  # a worker importing the user's script must not run this
    # Everything the user passed is checked before anything is searched, started or written.
    request = Request.from_user(bbox, dates, max_cloud=max_cloud, max_area_km2=max_area_km2)
    opts = RunOptions.from_user(n_workers=n_workers, stride=stride, chunk_patches=chunk_patches,
                                batch_size=batch_size, resolution=resolution, crs=crs,
                                device=device)
    if items is not None and catalog is not None:
        raise RequestError("pass catalog= or items=, not both",
                           hint="items= replaces the search of a catalog")
    if items is None and signer is not None:
        raise RequestError("signer= applies to items=, not to a catalog",
                           hint="for a catalog set it in its settings: catalog="
                                "CatalogSettings(url, signer=...); a Planetary Computer "
                                "URL is signed without it")
    job = _prepare(request, opts, model, retry, progress, t_start)
    if items is not None:
        from geoflow.catalog import scenes_from_items

        scenes = scenes_from_items(items, profile=profile, signer=signer, request=request)
    else:
        settings = session.get_catalog(catalog)
        job.clock.check("starting the catalog")
        scenes = search_scenes(request, settings, retry=job.policy, clock=job.clock,
                               profile=profile)
    log.info("search: %d S2 + %d S1 scenes (%.2f s)", len(scenes.s2), len(scenes.s1),
             time.perf_counter() - t_start)
    return _map_region(job, scenes, out=out, client=client, progress=progress,
                       overwrite=overwrite, storage_options=storage_options)


@dataclass
class _Job:
    """A checked run before its scenes are known: request, options, policy, model and grid.

    Classify and reprocess both build one (:func:`_prepare`), get their scenes their own way
    (a search; the items a map pinned) and hand both to :func:`_map_region`.
    """

    request: Any
    opts: RunOptions
    policy: RetryPolicy
    clock: Clock
    model_bytes: Any
    loaded: Any
    patch: int
    stride: int
    grid: Any
    t_start: float

    def plan(self) -> Any:
        """The chunk plan of the options: an explicit chunk size is the store's chunk edge;
        by default chunks of up to 16 patches are split evenly, so a small region does not
        leave one worker a sliver."""
        from geoflow.tiles import plan_chunks

        cp = self.opts.chunk_patches
        return plan_chunks(self.grid, self.patch, self.stride, int(cp or DEFAULT_CHUNK_PATCHES),
                           balance=cp is None)

    def request_attrs(self) -> dict[str, Any]:
        """The ``request`` of the store's provenance (compared when a store is reopened)."""
        return {**self.request.to_dict(), "resolution": self.opts.resolution,
                "stride": self.stride, "patch_size": self.patch, "epsg": self.grid.epsg}


def _prepare(request: Any, opts: RunOptions, model: Any, retry: Any, progress: Any,
             t_start: float) -> _Job:
    """Check the policy and progress, load the model's metadata and lay the grid."""
    from geoflow.grid import GridSpec

    policy = RetryPolicy.coerce(retry)
    check_progress(progress)
    clock = policy.start()
    model_bytes, loaded = _model_meta(model)
    patch = int(loaded.patch_size)
    stride = int(opts.stride or patch)
    if stride > patch:
        raise RequestError(f"stride {stride} is larger than the model's patch size {patch}",
                           hint=f"use a stride of at most {patch} pixels")
    log.info("model %s loaded for metadata (%.2f s)", loaded.version, time.perf_counter() - t_start)
    # Align the grid to whole patches and map pixels, so chunks of one region line up across
    # requests and the map's pixels tile the input grid exactly. Laid before the search, so a
    # bad grid is reported before any request goes out.
    align = patch * stride // math.gcd(patch, stride)
    grid = GridSpec.from_bbox(request.bbox, resolution=opts.resolution, epsg=opts.crs,
                              align=align)
    return _Job(request, opts, policy, clock, model_bytes, loaded, patch, stride, grid, t_start)


def _model_name(loaded: Any) -> str:
    """A model's name for provenance: its own, else its checkpoint's file name."""
    name = getattr(loaded, "name", None)
    return str(name) if name else os.path.splitext(os.path.basename(str(loaded.path)))[0]


def _map_region(job: _Job, scenes: Any, *, out: str | os.PathLike[str] | None, client: Any,
                progress: ProgressCallback | bool | str | None, overwrite: bool,
                storage_options: Mapping[str, Any] | None, plan: Any = None,
                variables: Sequence[str] | None = None,
                extra_attrs: Mapping[str, Any] | None = None,
                chunk_hook: Callable[[Any, xr.Dataset, Any], xr.Dataset] | None = None,
                check_times: Callable[[np.ndarray], None] | None = None) -> xr.Dataset:
    """Map ``scenes`` on the job's grid into a store, chunk by chunk on Dask: the part of a
    run that classify and reprocess share.

    ``plan`` (default :meth:`_Job.plan`), ``variables`` (default the store's defaults),
    ``extra_attrs`` (merged into the provenance), ``chunk_hook`` (see :class:`_TaskSpec`) and
    ``check_times`` (called with the dates before the store is touched) let reprocessing
    reuse the chunk loop unchanged.
    """
    from geoflow.catalog import CatalogSettings

    request, loaded, stride, patch = job.request, job.loaded, job.stride, job.patch
    plan = plan if plan is not None else job.plan()
    # The whole region's cube (lazy): every item of a date, not only those of one chunk.
    times, s2_ids, s1_ids = _times_and_ids(scenes, job.grid)
    if check_times is not None:
        check_times(times)

    dates_text = f"{request.start:%Y-%m-%d}/{request.end:%Y-%m-%d}"
    attrs: dict[str, Any] = {
        "title": f"geoflow scene-class map {dates_text}",
        "region_bbox": [float(v) for v in request.bbox],
        "dates": dates_text,
        "model_version": str(loaded.version),
        "model_checksum": str(loaded.checksum),
        "model_name": _model_name(loaded),
        "classes": list(loaded.classes),
        "class_colors": list(loaded.colors),
        "stride": stride,
        "patch_size": patch,
        "stac_items": [{"time": str(t), "s2": a.split(",") if a else [],
                        "s1": b.split(",") if b else []}
                       for t, a, b in zip(np.datetime_as_string(times, unit="D"), s2_ids,
                                          s1_ids, strict=True)],
        # Every item the chunks chose from (a chunk pairs its dates with the Sentinel-1
        # passes that reach it): what a reprocess fetches, to read the same inputs.
        "stac_inputs": {"s2": [str(i["id"]) for i in scenes.s2],
                        "s1": [str(i["id"]) for i in scenes.s1]},
        "request": job.request_attrs(),
    }
    if scenes.settings is not None or getattr(scenes, "s1_settings", None) is not None:
        # What pinning needs besides the ids: where they came from (no credentials).
        cat = CatalogSettings.coerce(scenes.settings or scenes.s1_settings)
        attrs["stac_catalog"] = {"url": strip_secrets(cat.url),
                                 "s2_collection": cat.s2_collection,
                                 "s1_collection": cat.s1_collection,
                                 "profile": cat.profile_name}
        s1_cat = getattr(scenes, "s1_settings", None)
        if s1_cat is not None and scenes.settings is not None:
            attrs["stac_catalog"].update(s1_url=strip_secrets(s1_cat.url),
                                         s1_collection=s1_cat.s1_collection,
                                         s1_profile=s1_cat.profile_name)
    attrs.update(extra_attrs or {})

    temp_dir: str | None = None
    if out is None:
        temp_dir = tempfile.mkdtemp(prefix="geoflow-map-")
        store_path = os.path.join(temp_dir, "map.zarr")
    else:
        store_path = os.fspath(out)
    policy, opts = job.policy, job.opts
    spec = _TaskSpec(store_path=store_path, stride=stride,
                     batch_size=opts.batch_size, device=opts.device,
                     n_classes=len(loaded.classes), retry=policy, clock=job.clock,
                     io_threads=policy.threads_for(assets_are_local([*scenes.s2, *scenes.s1])),
                     gdal=gdal_settings(policy),
                     session=f"{store_path}@{os.getpid()}.{time.time_ns()}",
                     storage_options=dict(storage_options) if storage_options else None,
                     chunk_hook=chunk_hook, signers=tuple(getattr(scenes, "signers", ())))
    try:
        cl = session.get_client(client, n_workers=opts.n_workers, gdal=spec.gdal,
                                # A busy scheduler's handshake is slower than an HTTP answer.
                                timeout=max(policy.timeout_s, 5.0), clock=job.clock)
        with auto_progress(progress) as show:
            return _run(plan, scenes, times, attrs, spec, job.model_bytes, cl, show, job.grid,
                        job.t_start, in_memory=temp_dir is not None, overwrite=overwrite,
                        variables=variables)
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _run(plan: Any, scenes: Any, times: np.ndarray, attrs: dict[str, Any], spec: _TaskSpec,
         model_bytes: Any, client: Any, progress: ProgressCallback | None, grid: Any,
         t_start: float, *, in_memory: bool, overwrite: bool,
         variables: Sequence[str] | None = None) -> xr.Dataset:

    from geoflow._cluster import prepare_cluster
    from geoflow.store import DEFAULT_VARIABLES, MapStore

    store_path, clock = spec.store_path, spec.clock
    km2_per_chunk = {c.id: _chunk_km2(c, plan) for c in plan.chunks}
    report = RunReport(chunks_total=len(plan.chunks), km2=float(grid.area_km2))
    clock.check("starting the run")
    # The cluster first: a run that cannot get workers leaves no store behind.
    info = prepare_cluster(client, retry=spec.retry, clock=clock)
    report.dashboard = info.dashboard
    log.info("cluster of %d workers ready (%.2f s)", info.n_workers,
             time.perf_counter() - t_start)
    store = MapStore.open_or_create(store_path, map_grid=plan.map_grid, times=times,
                                    chunk_shape=plan.chunk_shape, attrs=attrs,
                                    variables=tuple(variables or DEFAULT_VARIABLES),
                                    overwrite=overwrite, storage_options=spec.storage_options)
    # Done chunks are verified against what the ledger recorded of their writes; a
    # missing or damaged one is computed again.
    done = store.verified_done()
    log.info("store template ready (%.2f s)", time.perf_counter() - t_start)
    todo = [c for c in plan.chunks if c.id not in done]
    report.chunks_skipped = len(plan.chunks) - len(todo)
    if progress is not None:
        progress({"event": "start", "chunks_total": report.chunks_total,
                  "chunks_todo": len(todo), "km2_total": report.km2,
                  "km2_todo": sum(km2_per_chunk[c.id] for c in todo),
                  "dashboard": info.dashboard, "workers": info.n_workers, "gpu": info.gpu,
                  "store": store_path})
    if todo:
        for summary in _compute(info, todo, scenes, spec, store, model_bytes):
            if summary["status"] == "failed":
                report.failures[summary["chunk"]] = summary["reason"]
            else:
                report.chunks_computed += 1
            if progress is not None:
                progress({"event": "chunk", "km2": km2_per_chunk[summary["chunk"]],
                          **summary})
    log.info("all chunks finished (%.2f s)", time.perf_counter() - t_start)

    report.seconds = time.perf_counter() - t_start
    # Under "run": values that differ between runs, which the store's digest leaves out.
    store.finalize({"run": report.to_dict()})
    if report.failures:
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(report.failures.items())[:5])
        more = len(report.failures) - 5
        raise RunFailedError(
            f"{len(report.failures)} of {report.chunks_total} chunks failed "
            f"({listing}{f'; and {more} more' if more > 0 else ''}); "
            f"the other chunks are written to {store_path if not in_memory else 'memory'}",
            failures=report.failures,
            hint="fix the cause (often an unreachable asset) and rerun the same command with the "
                 "same --out: only failed chunks are computed again",
        )
    if not in_memory:
        # The finished map as a STAC Item beside the store; a reprocessed map links the map
        # it supersedes.
        from geoflow.stac_maps import item_path, write_map_item

        previous = (attrs.get("supersedes") or {}).get("store")
        write_map_item(store, storage_options=spec.storage_options,
                       previous=item_path(previous) if previous else None)
    # Raw uint8 as written (255 = no data): classes stay integer codes, not floats with NaN.
    # Through the store, so that URLs with storage options open too.
    ds = store.dataset(mask_and_scale=False)
    if in_memory:
        ds = ds.load()
    return ds


#: Seconds between checks that a cluster still has workers while chunks run.
_POLL_S = 5.0


def _compute(info: Any, todo: list[Any], scenes: Any, spec: _TaskSpec, store: Any,
             model_bytes: Any) -> Iterator[dict[str, Any]]:
    """Run the chunk tasks in a bounded window; yield each chunk's summary as it finishes.

    Ends with :class:`DeadlineError` when the deadline passes (running chunks are cancelled;
    finished ones stay in the store), or with a :class:`GeoflowError` when the cluster has
    had no worker for ``spec.retry.worker_wait_s``.
    """
    from distributed import wait

    cl, clock = info.client, spec.clock
    # The scene list and the checkpoint's bytes are the sizeable arguments: each goes to each
    # worker once, and tasks reference it. Workers need no file of the client's.
    payload = {"s2": list(scenes.s2), "s1": list(scenes.s1)}
    [scenes_future, model_future] = cl.scatter([payload, model_bytes], broadcast=True)
    resources = {"GPU": 1} if info.gpu else None
    window = max(2, WINDOW_PER_WORKER * info.n_threads)
    pending = iter(_strips(todo, [] if info.gpu else _worker_addresses(cl)))
    in_flight: dict[Any, Any] = {}
    finished = 0
    no_workers_since: float | None = None

    def submit_next() -> None:
        chunk, worker = next(pending, (None, None))
        if chunk is not None:
            fut = cl.submit(run_chunk, chunk, scenes_future, spec, model_future,
                            key=f"geoflow-{chunk.id}-"
                            f"{os.getpid()}-{time.time_ns()}", resources=resources,
                            workers=worker, allow_other_workers=worker is not None,
                            pure=False)
            in_flight[fut] = chunk

    for _ in range(window):
        submit_next()
    try:
        while in_flight:
            try:
                # wait() asks for the current client; the session's is not made the default.
                with cl.as_current():
                    ready = wait(list(in_flight), timeout=min(_POLL_S, clock.remaining()),
                                 return_when="FIRST_COMPLETED").done
            except TimeoutError:
                ready = set()
            if not ready:
                clock.check(f"computing chunks ({finished} of {len(todo)} finished; the store "
                            "keeps them)")
                if cl.scheduler_info().get("workers"):
                    no_workers_since = None
                else:
                    no_workers_since = no_workers_since or time.monotonic()
                    if time.monotonic() - no_workers_since > spec.retry.worker_wait_s:
                        raise GeoflowError(
                            f"the cluster has had no workers for "
                            f"{spec.retry.worker_wait_s:g} s ({finished} of {len(todo)} "
                            "chunks finished; the store keeps them)",
                            hint="start workers for the scheduler (or check why they died), "
                                 "then rerun the same command to resume")
                continue
            for fut in ready:
                chunk = in_flight.pop(fut)
                try:
                    summary = fut.result()
                except Exception as err:  # the task itself died (KilledWorker, lost data)
                    reason = short_error(err)
                    store.record_failure(chunk.id, reason)
                    summary = {"chunk": chunk.id, "status": "failed", "reason": reason}
                finally:
                    fut.release()
                finished += 1
                yield summary
                submit_next()
    finally:
        if in_flight:  # stopped early: nothing of this run keeps computing
            cl.cancel(list(in_flight))


def _worker_addresses(client: Any) -> list[str]:
    return sorted(client.scheduler_info().get("workers", {}))


def _strips(chunks: list[Any], workers: list[str]) -> list[tuple[Any, list[str] | None]]:
    """Chunks in submission order, each with the worker it should preferably run on.

    Each worker gets a contiguous run of the chunks (row-major, so mostly neighbours in a
    row): the COG blocks two neighbours share are then read and decoded once, from the
    worker's open datasets, instead of once on each of two workers. Runs are interleaved so
    every worker starts at once; the preference is loose, so an idle worker still takes
    (steals) queued chunks and a lost worker's chunks go elsewhere.
    """
    n = len(workers)
    if n < 2:
        return [(c, None) for c in chunks]
    runs = [chunks[k * len(chunks) // n:(k + 1) * len(chunks) // n] for k in range(n)]
    order: list[tuple[Any, list[str] | None]] = []
    for i in range(max(map(len, runs))):
        order.extend((run[i], [workers[k]]) for k, run in enumerate(runs) if i < len(run))
    return order


def _chunk_km2(chunk: Any, plan: Any) -> float:
    ys, xs = chunk.out_slices
    res = float(plan.map_grid.resolution)
    return (ys.stop - ys.start) * (xs.stop - xs.start) * res * res / 1e6


__all__ = ["RunReport", "classify_region", "run_chunk"]
