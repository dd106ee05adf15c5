"""Reprocessing a map with a new model: :func:`reprocess`, and the report of what changed.

A map records the Sentinel-2 and Sentinel-1 items of each date (``stac_items``) and the
catalog they came from (``stac_catalog``: URL without secrets, collections). Reprocessing
fetches exactly those items by id, not a new search, and runs the same chunk tasks as
:func:`geoflow.classify_region` (``regional._map_region``: bounded submission, progress,
ledger, resume) with the new model into a new store. Each chunk task also writes the
``changed`` layer (1: the summary class differs from the previous map's, 0: same, 255: not
valid in both), read from the previous store for the chunk's pixels. The previous store is
only read; the new one has the same grid, request, dates and pinned items, the new model's
provenance and a ``supersedes`` link to the previous store.

The change report (:func:`change_report`) is then counted from the two stores, window by
window (memory bounded by one chunk of each): the share of changed summary pixels, class
confusion for the summary and per date, area per class before and after, the same per
cloud-fraction bin of the observations, and mean confidence and SAR weight. A PNG shows where
the summary class changed, and from what to what.

Examples
--------
>>> import geoflow
>>> m = geoflow.reprocess("maps/kiel.zarr", model="models/v2/student_irm.safetensors",
...                       out="maps/kiel-v2.zarr", report="maps/kiel-v2.json")  # doctest: +SKIP
>>> m.attrs["change_report"]["changed_fraction"]  # doctest: +SKIP
0.042
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geoflow._jsonfile import write_json
from geoflow.errors import RequestError, StoreError, strip_secrets

log = logging.getLogger(__name__)

#: Cloud-fraction bins of the report, in percent: [low, high) (the last one includes 100).
CLOUD_BINS: tuple[tuple[int, int], ...] = ((0, 10), (10, 30), (30, 60), (60, 90), (90, 100))
_NODATA = 255


# --------------------------------------------------------------------------- the layer
def changed_layer(previous: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The ``changed`` layer of two summary-class maps (uint8, 255 = no data).

    Returns
    -------
    numpy.ndarray
        uint8: 1 where both are valid and differ, 0 where both are valid and equal, 255 where
        either is not valid.

    Examples
    --------
    >>> changed_layer(np.array([1, 2, 255, 3], "uint8"), np.array([1, 4, 2, 255], "uint8"))
    array([  0,   1, 255, 255], dtype=uint8)
    """
    previous, new = np.asarray(previous), np.asarray(new)
    valid = (previous != _NODATA) & (new != _NODATA)
    return np.where(valid, (previous != new).astype(np.uint8), np.uint8(_NODATA)).astype(np.uint8)


@dataclass(frozen=True)
class _ChangedHook:
    """Chunk hook of a reprocess run (see ``regional._TaskSpec.chunk_hook``): adds the chunk's
    ``changed`` layer, comparing its new summary with the previous store's, before the write.

    Computed in the chunk task, so the layer is written, ledgered, verified and resumed with
    the rest of the chunk.
    """

    previous: str
    storage_options: dict[str, Any] | None = field(default=None, repr=False)

    def __call__(self, chunk: Any, result: xr.Dataset, spec: Any) -> xr.Dataset:
        from geoflow.retry import attempt
        from geoflow.store import MapStore

        ys, xs = chunk.out_slices

        def read() -> np.ndarray:
            ds = MapStore.open(self.previous, self.storage_options).dataset(
                mask_and_scale=False, chunks=None)
            return np.asarray(ds["summary_class"].values[ys, xs])

        before = attempt(read, "reading the previous map", spec.retry, spec.clock)
        layer = changed_layer(before, result["summary_class"].values)
        return result.assign(changed=(("y", "x"), layer))


# --------------------------------------------------------------------------- the run
def _previous(store: Any, storage_options: Mapping[str, Any] | None) -> tuple[Any, dict]:
    """The previous store, opened read-only and checked complete, and its root attributes."""
    from geoflow.store import MapStore

    prev = MapStore.open(store, storage_options)
    health = prev.verify()  # reads only: the previous store is never changed
    if not health["complete"]:
        problems = [*health["metadata"], *(f"{k}: {v}" for k, v in health["damaged"].items())]
        missing = health["missing"]
        detail = "; ".join(problems[:3]) or f"{len(missing)} chunk(s) not done"
        raise StoreError(f"the previous map {strip_secrets(str(store))} is not complete "
                         f"({detail})",
                         hint="finish it first (rerun the command that made it), check it "
                              "with `geoflow verify STORE`, then reprocess")
    attrs = prev.attrs
    for key in ("request", "stac_items", "model_version"):
        if key not in attrs:
            raise StoreError(f"the previous map {strip_secrets(str(store))} has no {key!r} "
                             "in its provenance", hint="reprocess a map made by geoflow "
                                                       "classify")
    return prev, attrs


def _pinned_catalog(attrs: Mapping[str, Any], catalog: Any) -> Any:
    """Where to fetch the pinned items: ``catalog`` if given, else the one the map recorded
    (with its collections, profile and Sentinel-1 catalog), else geoflow's default catalog.
    A URL given as ``catalog`` replaces the recorded (Sentinel-2) URL only."""
    from geoflow import session
    from geoflow.catalog import CatalogSettings

    recorded = attrs.get("stac_catalog") or {}
    if catalog is not None and not isinstance(catalog, str):
        return session.get_catalog(catalog)  # settings, a client or {"s2":, "s1":} as given
    url = catalog or recorded.get("url") or session.get_catalog(None)
    if not recorded:
        return CatalogSettings.coerce(url)
    # The items' collections (and their catalogs' profiles) are part of what was pinned.
    s1_url = recorded.get("s1_url")
    s2 = CatalogSettings(str(url), s2_collection=recorded.get("s2_collection"),
                         s1_collection=None if s1_url else recorded.get("s1_collection"),
                         profile=recorded.get("profile") if catalog is None else None)
    if not s1_url:
        return s2
    return {"s2": s2, "s1": CatalogSettings(str(s1_url), s2_collection=None,
                                            s1_collection=recorded.get("s1_collection"),
                                            profile=recorded.get("s1_profile"))}


def _plan_like(prev: Any, job: Any) -> Any:
    """The chunk plan of the previous store: same map grid and chunk shape, or an error."""
    from geoflow.tiles import plan_chunks

    cy, cx = prev.chunk_shape
    candidates = [(cy, False)] if cy == cx else []
    # A balanced plan (the default) has chunk edges split evenly from some larger limit.
    candidates += [(k, True) for k in range(max(cy, cx), max(prev.map_grid.shape) + 1)]
    for k, balance in candidates:
        plan = plan_chunks(job.grid, job.patch, job.stride, k, balance=balance)
        if plan.map_grid != prev.map_grid:
            break
        if tuple(plan.chunk_shape) == (cy, cx):
            return plan
    raise RequestError(f"the new model (patch {job.patch} px, stride {job.stride}) does not "
                       f"give the previous map's grid and chunks ({prev.map_grid.shape} px, "
                       f"chunks of {cy} x {cx})",
                       hint="reprocess with a model of the same patch size, or classify the "
                            "region anew with `geoflow classify`")


def reprocess(
    store: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    report: str | os.PathLike[str] | None = None,
    png: str | os.PathLike[str] | None = None,
    catalog: Any = None,
    research: bool = False,
    client: Any = None,
    n_workers: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    progress: Any = "auto",
    retry: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Map the region of an existing map again with a new model, into a new store.

    Parameters
    ----------
    store
        The previous map (path or URL). Only read: its bytes are the same afterwards.
    model
        The new model's checkpoint.
    out
        The new store. Same grid, request, dates and pinned items as ``store``; rerun the
        same call to resume it after an interruption (same bytes).
    report
        Where to write the change report (JSON). The PNG of changes goes next to it
        (``.png``) unless ``png`` says otherwise.
    png
        Where to write the PNG of changes; default next to ``report``, else next to a local
        ``out`` (``<out>-changes.png``), else none.
    catalog
        STAC API URL or :class:`~geoflow.catalog.CatalogSettings` to fetch the pinned items
        from; default the catalog the map recorded.
    research
        Search the catalog again (same bbox, dates and cloud limit) instead of fetching the
        pinned items: the change then reflects new scenes as well as the model.
    client, n_workers, batch_size, device, progress, retry, storage_options
        As for :func:`geoflow.classify_region` (``storage_options`` serve both stores).

    Returns
    -------
    xarray.Dataset
        The new map as :func:`geoflow.classify_region` returns it, with ``changed`` and,
        in ``attrs["change_report"]``, the report (also stored in the map's attributes).

    Raises
    ------
    StoreError
        ``store`` is not a complete geoflow map, or ``out`` is ``store``.
    CatalogError
        A pinned item is no longer in the catalog (named; pass ``research=True`` to search
        again).
    RequestError
        The new model does not fit the previous grid (another patch size) or classes.
    RunFailedError, DeadlineError
        As for :func:`geoflow.classify_region`; rerun to resume.

    Examples
    --------
    >>> import geoflow
    >>> m = geoflow.reprocess("maps/kiel.zarr", model="models/v2/student_irm.safetensors",
    ...                       out="maps/kiel-v2.zarr")  # doctest: +SKIP
    >>> m["changed"].values.max()  # doctest: +SKIP
    1
    """
    import pandas as pd

    from geoflow import session
    from geoflow._options import RunOptions
    from geoflow.catalog import fetch_scenes, search_scenes
    from geoflow.regional import _map_region, _prepare
    from geoflow.request import Request
    from geoflow.store import DEFAULT_VARIABLES, MapStore, _Files

    t_start = time.perf_counter()
    session.check_not_reimported()
    if model is None:
        raise RequestError("reprocessing needs the new model", hint="pass --model PATH")
    prev, attrs = _previous(store, storage_options)
    prev_url = prev.url
    if _Files(out, storage_options).url.rstrip("/") == prev_url.rstrip("/"):
        raise StoreError(f"the new map would overwrite the previous one ({prev_url})",
                         hint="write the new model's map to a new path with --out; the "
                              "previous map stays as it is")
    req = attrs["request"]
    request = Request(tuple(req["bbox"]), pd.Timestamp(req["start"]), pd.Timestamp(req["end"]),
                      max_cloud=req.get("max_cloud"))
    opts = RunOptions.from_user(n_workers=n_workers, stride=req.get("stride"),
                                chunk_patches=None, batch_size=batch_size,
                                resolution=req.get("resolution", 10), crs=req.get("epsg"),
                                device=device)
    job = _prepare(request, opts, model, retry, progress, t_start)
    if list(job.loaded.classes) != list(attrs.get("classes") or job.loaded.classes):
        raise RequestError(f"the new model's classes {list(job.loaded.classes)} differ from the "
                           f"previous map's {attrs.get('classes')}",
                           hint="a model with other classes cannot be compared pixel by pixel: "
                                "classify the region anew with `geoflow classify`")
    plan = _plan_like(prev, job)
    settings = _pinned_catalog(attrs, catalog)
    job.clock.check("starting the catalog")
    if research:
        scenes = search_scenes(request, settings, retry=job.policy, clock=job.clock)
    else:
        dates = attrs["stac_items"]
        # Every item the previous run's chunks chose from; maps made before geoflow recorded
        # them have only the items per date.
        inputs = attrs.get("stac_inputs") or {
            "s2": [i for d in dates for i in d.get("s2", [])],
            "s1": [i for d in dates for i in d.get("s1", [])]}
        scenes = fetch_scenes(settings, list(inputs.get("s2", [])), list(inputs.get("s1", [])),
                              retry=job.policy, clock=job.clock)

    def same_dates(times: np.ndarray) -> None:
        if research:
            return
        got = list(np.datetime_as_string(times, unit="D"))
        want = [str(d["time"])[:10] for d in attrs["stac_items"]]
        if got != want:
            raise StoreError(f"the pinned items give the dates {got}, the previous map has "
                             f"{want}", hint="reprocess with --research to search again")

    supersedes = {"store": strip_secrets(prev_url),
                  "model_version": attrs.get("model_version"),
                  "model_checksum": attrs.get("model_checksum"),
                  "model_name": attrs.get("model_name"),
                  "created": attrs.get("created")}
    ds = _map_region(job, scenes, out=out, client=client, progress=progress, overwrite=False,
                     storage_options=storage_options, plan=plan,
                     variables=(*DEFAULT_VARIABLES, "changed"),
                     extra_attrs={"supersedes": supersedes},
                     chunk_hook=_ChangedHook(prev_url, dict(storage_options)
                                             if storage_options else None),
                     check_times=same_dates)
    new = MapStore.open(out, storage_options)
    png_path = _png_path(png, report, out)
    result = change_report(prev, new, png=png_path)
    # With the map: its report travels with it (values are the same on a resumed run). Not
    # where the map and its PNG are: the same job written elsewhere must have the same bytes.
    new.finalize({"change_report": {k: v for k, v in result.items()
                                    if k not in ("store", "png")}})
    if report is not None:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    log.info("reprocessed %s -> %s (%.2f s)", prev_url, new.url, time.perf_counter() - t_start)
    ds = new.dataset(mask_and_scale=False)
    ds.attrs["change_report"] = result
    return ds


# --------------------------------------------------------------------------- an archive
#: Keys of a ``where`` selection (:func:`parse_where`).
WHERE_KEYS = ("model", "bbox")


def parse_where(where: str | Sequence[str] | None) -> dict[str, Any]:
    """Parse a map selection: ``model=NAME[@VERSION]`` and/or ``bbox=W,S,E,N``.

    Clauses come as several strings (a repeated ``--where``) or comma-separated in one;
    the commas inside a bbox belong to it (a part without ``=`` continues the clause
    before it).

    Parameters
    ----------
    where
        ``None``, a string, or a sequence of strings.

    Returns
    -------
    dict
        ``model`` (str) and/or ``bbox`` (tuple of 4 floats), for
        :func:`geoflow.stac_maps.find_maps`.

    Raises
    ------
    RequestError
        An unknown key, a clause without ``=``, an empty value, a key given twice, or a bbox
        that is not four numbers W < E, S < N in degrees.

    Examples
    --------
    >>> parse_where("model=student_irm@v2,bbox=10.4,53.9,10.7,54.1")
    {'model': 'student_irm@v2', 'bbox': (10.4, 53.9, 10.7, 54.1)}
    >>> parse_where(["model=student_irm"])
    {'model': 'student_irm'}
    >>> parse_where("cloud=10")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geoflow.errors.RequestError: unknown --where key 'cloud' in 'cloud=10'. Fix: ...
    """
    if where is None:
        return {}
    texts = [where] if isinstance(where, str) else list(where)
    example = "--where model=student_irm@VERSION --where bbox=10.4,53.9,10.7,54.1"
    clauses: list[list[str]] = []
    for text in texts:
        if not isinstance(text, str):
            raise RequestError(f"a --where clause must be text, got {type(text).__name__}",
                               hint=f"write e.g. {example}")
        for part in text.split(","):
            part = part.strip()
            if "=" in part:
                clauses.append(part.split("=", 1))
            elif clauses and part:
                clauses[-1][1] += "," + part  # the next number of a bbox
            else:
                raise RequestError(f"--where clause {part or text!r} is not KEY=VALUE",
                                   hint=f"keys are {', '.join(WHERE_KEYS)}; e.g. {example}")
    out: dict[str, Any] = {}
    for key, value in ((k.strip().lower(), v.strip()) for k, v in clauses):
        if key not in WHERE_KEYS:
            raise RequestError(f"unknown --where key {key!r} in '{key}={value}'",
                               hint=f"select maps by {' and/or '.join(WHERE_KEYS)}: {example}")
        if key in out:
            raise RequestError(f"--where {key} is given twice ({out[key]!r} and {value!r})",
                               hint="give each key once; all clauses must hold")
        if not value:
            raise RequestError(f"--where {key}= has no value", hint=f"e.g. {example}")
        if key == "model":
            if value.startswith("@") or value.endswith("@"):
                raise RequestError(f"--where model={value}: not NAME or NAME@VERSION",
                                   hint="e.g. model=student_irm or "
                                        "model=student_irm@student_irm-20261124T122353-96c94eb2")
            out[key] = value
        else:
            out[key] = _where_bbox(value)
    return out


def _where_bbox(value: str) -> tuple[float, float, float, float]:
    hint = "bbox=W,S,E,N in degrees, e.g. bbox=10.4,53.9,10.7,54.1"
    try:
        nums = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise RequestError(f"--where bbox={value}: not four numbers", hint=hint) from None
    if len(nums) != 4 or not all(np.isfinite(nums)):
        raise RequestError(f"--where bbox={value}: not four numbers", hint=hint)
    w, s, e, n = nums
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise RequestError(f"--where bbox={value}: needs -180 <= W < E <= 180 and "
                           "-90 <= S < N <= 90", hint=hint)
    return w, s, e, n


def _open_catalog(catalog: str | os.PathLike[str]) -> Path:
    """The catalog file, checked to be a STAC Catalog (or Collection) before any work."""
    path = Path(catalog)
    hint = ("pass the catalog.json of a maps catalog (made by geoflow.stac_maps."
            "add_to_catalog), or reprocess one store with --out")
    if not path.is_file():
        raise RequestError(f"the maps catalog {path} does not exist", hint=hint)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"{path} is not a readable JSON file ({err})", hint=hint) from None
    if not isinstance(doc, dict) or doc.get("type") not in ("Catalog", "Collection"):
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise RequestError(f"{path} is not a STAC Catalog (type {kind!r})", hint=hint)
    return path


def _store_of(item: Any) -> str:
    asset = item.assets.get("zarr")
    if asset is None:
        raise StoreError(f"the catalog's Item {item.id} has no 'zarr' asset",
                         hint="select maps made by geoflow (their Items name the store)")
    return str(asset.get_absolute_href() or asset.href)


def _store_name(url: str) -> str:
    """``kiel.zarr`` of ``/maps/kiel.zarr`` or ``s3://bucket/kiel.zarr/``."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _done_already(out: Path, report: Path, prev_url: str, checksum: str,
                  storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The change report of a map a previous run of the same command finished, or None.

    Finished means: the new store verifies complete (every chunk against its ledger), was
    made by the target model from this very previous map, and its report is there.
    """
    from geoflow.store import MapStore

    if not (out.exists() and report.is_file()):
        return None
    try:
        new = MapStore.open(str(out), storage_options)
        attrs = new.attrs
        if (attrs.get("model_checksum") != checksum
                or (attrs.get("supersedes") or {}).get("store") != strip_secrets(prev_url)
                or not new.verify()["complete"]):
            return None
        rep = json.loads(report.read_text())
    except (StoreError, OSError, ValueError):
        return None  # anything unexpected: let reprocess resume (or refuse) it
    return rep if isinstance(rep, dict) else None


def reprocess_catalog(
    catalog: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    where: str | Sequence[str] | None = None,
    client: Any = None,
    stac_catalog: Any = None,
    research: bool = False,
    n_workers: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    progress: Any = "auto",
    retry: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Reprocess every map of a maps catalog (selected by ``where``) with a new model.

    All maps run on one Dask client, one map after the other (each map's chunks fill the
    cluster). Each map ``.../NAME.zarr`` becomes ``out_dir/NAME.zarr`` with its change report
    ``out_dir/NAME-changes.json`` (and ``.png``); the new maps' Items go into
    ``out_dir/catalog.json``; ``out_dir/summary.json`` lists the maps done, skipped and
    failed. A map made by the target model already (same checksum) is skipped, as is one a
    previous run of the same command finished (its new store verifies, its report is there);
    an unfinished one resumes. So rerunning the same command resumes the archive.

    Parameters
    ----------
    catalog
        A maps catalog's ``catalog.json`` (:func:`geoflow.stac_maps.add_to_catalog`), or any
        STAC Catalog / Collection JSON whose Items are geoflow maps. Only read.
    model
        The new model (checkpoint path or registry ``NAME[@VERSION]``).
    out_dir
        Local directory for the new stores, reports, summary and catalog.
    where
        Which maps: ``model=NAME[@VERSION]`` (made by that model) and/or ``bbox=W,S,E,N``
        (intersecting it), as one comma-separated string or a sequence (all must hold);
        default every map of the catalog. See :func:`parse_where`.
    client
        A ``distributed.Client`` or scheduler address; default as
        :func:`geoflow.classify_region`. Resolved once; every map uses it.
    stac_catalog, research
        As ``catalog`` and ``research`` of :func:`reprocess`, for every map.
    n_workers, batch_size, device, progress, retry, storage_options
        As for :func:`reprocess`. A ``retry`` deadline holds for the whole archive.

    Returns
    -------
    dict
        The summary (also ``out_dir/summary.json``): ``catalog``, ``where``, ``model``
        (name, version, checksum), ``counts`` (``selected``, ``done``, ``skipped``,
        ``failed``), ``maps`` (one entry per selected map: ``id``, ``store``, ``out``,
        ``status`` = done / skipped / failed, ``reason`` for skipped and failed,
        ``report``, ``png``, ``changed_fraction``, ``changed_pixels``,
        ``compared_pixels``, ``seconds``), ``out_catalog`` and ``seconds``.

    Raises
    ------
    RequestError
        A bad ``where``, a ``catalog`` that is not a STAC Catalog, or two selected maps with
        the same store name (they would share ``out_dir/NAME``).
    RunFailedError
        Some maps failed (``failures``: Item id -> reason); the others are done and the
        summary is written. Rerun the same call to retry them.
    DeadlineError
        The deadline passed; the summary so far is written, rerun to resume.

    Examples
    --------
    >>> from geoflow.reprocess import reprocess_catalog
    >>> s = reprocess_catalog("maps/catalog.json", model="student_irm@v2",
    ...                       out_dir="maps-v2", where="model=student_irm@v1")  # doctest: +SKIP
    >>> s["counts"]  # doctest: +SKIP
    {'selected': 12, 'done': 11, 'skipped': 1, 'failed': 0}
    """
    from geoflow import session
    from geoflow._cluster import gdal_settings
    from geoflow.errors import DeadlineError, GeoflowError, RunFailedError
    from geoflow.regional import _model_meta, _model_name
    from geoflow.retry import RetryPolicy, short_error
    from geoflow.stac_maps import add_to_catalog, find_maps, item_path

    t_start = time.perf_counter()
    session.check_not_reimported()
    if model is None:
        raise RequestError("reprocessing needs the new model", hint="pass --model PATH")
    # Everything that can be wrong with the command is checked before any map is touched.
    selection = parse_where(where)
    catalog_path = _open_catalog(catalog)
    policy = RetryPolicy.coerce(retry)
    clock = policy.start()  # one deadline for the whole archive, not one per map
    items = find_maps(catalog_path, model=selection.get("model"), bbox=selection.get("bbox"))
    stores = {item.id: _store_of(item) for item in items}
    by_name: dict[str, list[str]] = {}
    for item_id, url in stores.items():
        by_name.setdefault(_store_name(url), []).append(item_id)
    clash = {name: ids for name, ids in by_name.items() if len(ids) > 1}
    if clash:
        name, ids = next(iter(clash.items()))
        raise RequestError(f"{len(ids)} selected maps are all named {name} ({', '.join(ids)}); "
                           f"they would share {Path(out_dir) / name}",
                           hint="narrow the selection with --where (model=NAME@VERSION, "
                                "bbox=...) and reprocess each group into its own --out-dir")
    _, loaded = _model_meta(model)  # its checksum: which maps it made already
    target = {"name": _model_name(loaded), "version": str(loaded.version),
              "checksum": str(loaded.checksum)}
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    # One client for every map: resolved here, so maps do not each start a cluster.
    cl = session.get_client(client, n_workers=n_workers, gdal=gdal_settings(policy),
                            timeout=max(policy.timeout_s, 5.0), clock=clock)
    summary: dict[str, Any] = {
        "catalog": str(catalog_path.absolute()),
        "where": {k: list(v) if k == "bbox" else v for k, v in selection.items()},
        "model": target, "out_dir": str(root.absolute()), "maps": [],
        "out_catalog": None, "counts": {}, "seconds": None,
    }

    def save() -> None:
        rows = summary["maps"]
        summary["counts"] = {"selected": len(items), **{
            s: sum(1 for r in rows if r["status"] == s) for s in ("done", "skipped", "failed")}}
        summary["seconds"] = round(time.perf_counter() - t_start, 3)
        write_json(root / "summary.json", summary, sort_keys=True, default=str)

    try:
        for item in items:
            prev_url = stores[item.id]
            name = _store_name(prev_url)
            stem = name.removesuffix(".zarr") or name
            out, report = root / name, root / f"{stem}-changes.json"
            row: dict[str, Any] = {"id": item.id, "store": strip_secrets(prev_url),
                                   "previous_model": item.properties.get("geoflow:model"),
                                   "out": str(out.absolute()), "report": None, "png": None,
                                   "item": None, "changed_fraction": None,
                                   "changed_pixels": None, "compared_pixels": None,
                                   "reason": None, "seconds": None}
            summary["maps"].append(row)
            t_map = time.perf_counter()
            if (item.properties.get("geoflow:model") or {}).get("checksum") == \
                    target["checksum"]:
                row.update(status="skipped", out=None, reason="made by the target model "
                           "already (same checksum): nothing to do")
                continue
            rep = _done_already(out, report, prev_url, target["checksum"], storage_options)
            if rep is not None:
                row.update(status="skipped", reason="done by an earlier run (the new store "
                           "verifies complete)")
            else:
                clock.check(f"starting map {item.id}")
                remaining = clock.remaining()
                map_policy = policy if not np.isfinite(remaining) else RetryPolicy(**{
                    **policy.to_dict(), "deadline_s": max(remaining, 0.05)})
                try:
                    ds = reprocess(prev_url, model=model, out=out, report=report,
                                   catalog=stac_catalog, research=research, client=cl,
                                   n_workers=n_workers, batch_size=batch_size,
                                   device=device, progress=progress, retry=map_policy,
                                   storage_options=storage_options)
                except DeadlineError:
                    row.update(status="failed", reason="the deadline passed")
                    raise
                except Exception as err:  # one map's failure must not stop the archive
                    if not isinstance(err, GeoflowError):
                        log.exception("reprocessing %s failed", item.id)
                    row.update(status="failed", reason=short_error(err),
                               seconds=round(time.perf_counter() - t_map, 3))
                    log.warning("map %s failed: %s", item.id, row["reason"])
                    continue
                rep = dict(ds.attrs["change_report"])
                row["status"] = "done"
            row.update(report=str(report.absolute()), png=rep.get("png"),
                       item=str(item_path(out)),
                       changed_fraction=rep.get("changed_fraction"),
                       changed_pixels=rep.get("changed_pixels"),
                       compared_pixels=rep.get("compared_pixels"),
                       seconds=round(time.perf_counter() - t_map, 3))
            # Into the new catalog as each map finishes: an interrupted archive still lists
            # what it made (adding an Item again replaces it).
            summary["out_catalog"] = str(add_to_catalog(item_path(out), root).absolute())
    finally:
        save()
    failures = {r["id"]: r["reason"] for r in summary["maps"] if r["status"] == "failed"}
    if failures:
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(failures.items())[:3])
        raise RunFailedError(
            f"{len(failures)} of {len(items)} maps failed ({listing}); the others are in "
            f"{root}, see {root / 'summary.json'}", failures=failures,
            hint="fix the cause and rerun the same command: finished maps are skipped, "
                 "unfinished ones resume")
    log.info("reprocessed %d maps of %s into %s (%.2f s)", summary["counts"]["done"],
             catalog_path, root, time.perf_counter() - t_start)
    return summary


def _png_path(png: Any, report: Any, out: Any) -> str | None:
    if png is not None:
        return os.fspath(png)
    if report is not None:
        return str(Path(report).with_suffix(".png"))
    text = os.fspath(out)
    if "://" in text and not text.startswith("file://"):
        return None
    path = Path(text.removeprefix("file://"))
    return str(path.with_name(f"{path.stem}-changes.png"))


# --------------------------------------------------------------------------- the report
def _model(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": attrs.get("model_name"), "version": attrs.get("model_version"),
            "checksum": attrs.get("model_checksum")}


def _bins(cloud: np.ndarray) -> np.ndarray:
    """Bin index (0..4) of each cloud fraction (uint8 0-255 = 0-1) in :data:`CLOUD_BINS`."""
    pct = cloud.astype(np.float64) * (100.0 / 255.0)
    return np.searchsorted(np.array([b[1] for b in CLOUD_BINS[:-1]], float), pct,
                           side="right")


def _pairs(matrix: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """A confusion matrix as ``{previous: {new: count}}``, nonzero counts only."""
    out: dict[str, dict[str, int]] = {}
    for i, j in zip(*np.nonzero(matrix), strict=True):
        out.setdefault(names[i], {})[names[j]] = int(matrix[i, j])
    return out


def _mean(total: float, count: int) -> float | None:
    return total / count / 255.0 if count else None


def change_report(previous: Any, new: Any, *, png: str | os.PathLike[str] | None = None,
                  storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Count what changed between two maps of the same grid and classes.

    Parameters
    ----------
    previous, new
        The maps (:class:`~geoflow.store.MapStore` or paths/URLs).
    png
        Also draw where the summary class changed, from what to what, into this PNG.
    storage_options
        fsspec options for URLs.

    Returns
    -------
    dict
        ``previous_model`` / ``model`` (name, version, checksum); ``compared_pixels`` and
        ``changed_pixels`` (summary pixels valid in both, and those whose class differs)
        and ``changed_fraction``; ``confusion``: ``summary`` and ``per_date`` (dates of
        both maps), ``{previous class: {new class: pixels}}`` (nonzero counts);
        ``area_km2``: ``before`` / ``after`` / ``difference`` per class of the summary;
        ``by_cloud_fraction``: per bin (``"0-10"`` ... ``"90-100"`` percent) of the
        per-date observations (valid pixel-dates; the bin of an observation is its cloud
        fraction in the map it belongs to, and in the new map for comparisons), the
        observation area per class before / after / difference (km² summed over dates),
        compared and changed observations, ``changed_fraction``, mean confidence and mean
        SAR weight before / after; ``mean_confidence`` and ``mean_sar_weight`` (0-1, over
        valid observations) before / after; ``pixel_area_km2``; ``png``.

    Examples
    --------
    >>> rep = change_report("maps/kiel.zarr", "maps/kiel-v2.zarr")  # doctest: +SKIP
    >>> rep["confusion"]["summary"]["forest"]  # doctest: +SKIP
    {'forest': 1200, 'pasture': 31}
    """
    from geoflow.store import MapStore

    prev = previous if isinstance(previous, MapStore) else MapStore.open(previous,
                                                                          storage_options)
    cur = new if isinstance(new, MapStore) else MapStore.open(new, storage_options)
    if prev.map_grid != cur.map_grid:
        raise StoreError("the two maps have different grids",
                         hint="compare a map with its reprocessed version")
    pa, ca = prev.attrs, cur.attrs
    names = list(ca.get("classes") or pa.get("classes") or [])
    k = max(len(names), 1)
    names = names or ["class 0"]
    dp = prev.dataset(mask_and_scale=False, chunks=None)
    dc = cur.dataset(mask_and_scale=False, chunks=None)
    tp = list(np.datetime_as_string(dp["time"].values, unit="D"))
    tc = list(np.datetime_as_string(dc["time"].values, unit="D"))
    common = [d for d in tc if d in tp]
    ip, ic = [tp.index(d) for d in common], [tc.index(d) for d in common]
    nb = len(CLOUD_BINS)
    s_conf = np.zeros((k, k), np.int64)
    s_before, s_after = np.zeros(k, np.int64), np.zeros(k, np.int64)
    d_conf = np.zeros((len(common), k, k), np.int64)
    b_before, b_after = np.zeros((nb, k), np.int64), np.zeros((nb, k), np.int64)
    b_compared, b_changed = np.zeros(nb, np.int64), np.zeros(nb, np.int64)
    # Sums of confidence / SAR weight (uint8) and counts of valid observations, per bin.
    sums = {key: np.zeros(nb, np.float64) for key in
            ("conf_before", "conf_after", "sar_before", "sar_after")}

    def counts(values: np.ndarray, length: int) -> np.ndarray:
        return np.bincount(values.ravel(), minlength=length)[:length]

    (h, w), (cy, cx) = cur.map_grid.shape, cur.chunk_shape
    for y0 in range(0, h, cy):  # one chunk window at a time: memory stays small
        for x0 in range(0, w, cx):
            win = {"y": slice(y0, min(y0 + cy, h)), "x": slice(x0, min(x0 + cx, w))}
            a = dp.isel(win)
            b = dc.isel(win)
            sa, sb = a["summary_class"].values, b["summary_class"].values
            va, vb = sa != _NODATA, sb != _NODATA
            both = va & vb
            s_conf += counts(sa[both].astype(np.int64) * k + sb[both], k * k).reshape(k, k)
            s_before += counts(sa[va].astype(np.int64), k)
            s_after += counts(sb[vb].astype(np.int64), k)
            for store_ds, bins_out, conf_key, sar_key in (
                    (a, b_before, "conf_before", "sar_before"),
                    (b, b_after, "conf_after", "sar_after")):
                cls = store_ds["class"].values
                valid = cls != _NODATA
                bins = _bins(store_ds["cloud_fraction"].values)[valid]
                bins_out += counts(bins * k + cls[valid].astype(np.int64), nb * k).reshape(nb, k)
                sums[conf_key] += np.bincount(bins, weights=store_ds["confidence"].values[valid],
                                              minlength=nb)[:nb]
                sums[sar_key] += np.bincount(bins, weights=store_ds["sar_weight"].values[valid],
                                             minlength=nb)[:nb]
            if common:
                ca_ = a["class"].values[ip]
                cb_ = b["class"].values[ic]
                cbin = _bins(b["cloud_fraction"].values[ic])
                for t in range(len(common)):
                    ok = (ca_[t] != _NODATA) & (cb_[t] != _NODATA)
                    d_conf[t] += counts(ca_[t][ok].astype(np.int64) * k + cb_[t][ok],
                                        k * k).reshape(k, k)
                    b_compared += counts(cbin[t][ok], nb)
                    b_changed += counts(cbin[t][ok & (ca_[t] != cb_[t])], nb)

    px_km2 = float(cur.map_grid.resolution) ** 2 / 1e6
    compared = int(s_conf.sum())
    changed = compared - int(np.trace(s_conf))

    def areas(before: np.ndarray, after: np.ndarray) -> dict[str, dict[str, float]]:
        return {"before": {n: float(before[i] * px_km2) for i, n in enumerate(names)},
                "after": {n: float(after[i] * px_km2) for i, n in enumerate(names)},
                "difference": {n: float((after[i] - before[i]) * px_km2)
                               for i, n in enumerate(names)}}

    n_before, n_after = b_before.sum(axis=1), b_after.sum(axis=1)
    by_cloud = {}
    for j, (lo, hi) in enumerate(CLOUD_BINS):
        by_cloud[f"{lo}-{hi}"] = {
            "area_km2": areas(b_before[j], b_after[j]),
            "observations": {"before": int(n_before[j]), "after": int(n_after[j])},
            "compared_observations": int(b_compared[j]),
            "changed_observations": int(b_changed[j]),
            "changed_fraction": (float(b_changed[j] / b_compared[j]) if b_compared[j]
                                 else None),
            "mean_confidence": {"before": _mean(sums["conf_before"][j], int(n_before[j])),
                                "after": _mean(sums["conf_after"][j], int(n_after[j]))},
            "mean_sar_weight": {"before": _mean(sums["sar_before"][j], int(n_before[j])),
                                "after": _mean(sums["sar_after"][j], int(n_after[j]))},
        }
    out = {
        "previous": strip_secrets(prev.url),
        "store": strip_secrets(cur.url),
        "previous_model": _model(pa),
        "model": _model(ca),
        "classes": names,
        "pixel_area_km2": px_km2,
        "compared_pixels": compared,
        "changed_pixels": changed,
        "changed_fraction": changed / compared if compared else None,
        "confusion": {"summary": _pairs(s_conf, names),
                      "per_date": {d: _pairs(d_conf[t], names)
                                   for t, d in enumerate(common)}},
        "area_km2": areas(s_before, s_after),
        "by_cloud_fraction": by_cloud,
        "mean_confidence": {"before": _mean(sums["conf_before"].sum(), int(n_before.sum())),
                            "after": _mean(sums["conf_after"].sum(), int(n_after.sum()))},
        "mean_sar_weight": {"before": _mean(sums["sar_before"].sum(), int(n_before.sum())),
                            "after": _mean(sums["sar_after"].sum(), int(n_after.sum()))},
        "png": None,
    }
    if png is not None:
        out["png"] = str(_draw_changes(dp, dc, names, s_conf, png))
    return out


def _draw_changes(dp: xr.Dataset, dc: xr.Dataset, names: list[str], confusion: np.ndarray,
                  path: str | os.PathLike[str]) -> Path:
    """A PNG of the summary: unchanged pixels grey, no data white, each change (previous ->
    new class) in its own colour, with a legend of the largest changes and their counts."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    h, w = dc["summary_class"].shape
    step = max(1, -(-max(h, w) // 2000))  # a quicklook: at most ~2000 px a side
    a = dp["summary_class"].values[::step, ::step].astype(np.int64)
    b = dc["summary_class"].values[::step, ::step].astype(np.int64)
    k = len(names)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = [int(i) for i in np.argsort(off.ravel(), kind="stable")[::-1] if off.ravel()[i]]
    shown = order[:12]
    # Codes: 0 no data, 1 same, 2.. one per shown change, last: any other change.
    image = np.zeros(a.shape, np.int64)
    both = (a != _NODATA) & (b != _NODATA)
    image[both & (a == b)] = 1
    diff = both & (a != b)
    image[diff] = 2 + len(shown)
    pair = np.where(diff, a * k + b, -1)
    for n, code in enumerate(shown):
        image[pair == code] = 2 + n
    palette = list(getattr(plt.get_cmap("tab20"), "colors", ["#1f77b4"]))
    cmap = ListedColormap(["#ffffff", "#d9d9d9", *[palette[n % 20] for n in range(len(shown))],
                           "#000000"])
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    ax.imshow(image, cmap=cmap, vmin=0, vmax=len(shown) + 2, interpolation="nearest")
    ax.set_axis_off()
    total = int(off.sum())
    ax.set_title(f"summary class changes: {total} px of {int(confusion.sum())} compared")
    handles = [Patch(color="#d9d9d9", label="same class"),
               Patch(facecolor="#ffffff", edgecolor="#999999", label="no data in a map")]
    for n, code in enumerate(shown):
        i, j = divmod(code, k)
        handles.append(Patch(color=palette[n % 20],
                             label=f"{names[i]} -> {names[j]} ({int(off.ravel()[code])} px)"))
    if len(order) > len(shown):
        rest = int(sum(off.ravel()[c] for c in order[len(shown):]))
        handles.append(Patch(color="#000000", label=f"other changes ({rest} px)"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
              frameon=False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


__all__ = ["CLOUD_BINS", "WHERE_KEYS", "change_report", "changed_layer", "parse_where",
           "reprocess", "reprocess_catalog"]
