"""The map store: a georeferenced Zarr v3 map, written chunk by chunk, with a resume ledger.

Layout of a store at ``PATH`` (a directory)::

    PATH/zarr.json                  root group; attributes: classes, colours, model, request,
                                    STAC items per date, geoflow version, creation time
    PATH/{time,y,x,spatial_ref}/    coordinates; ``spatial_ref`` is the CF grid mapping
    PATH/class/ ...                 (time, y, x) uint8, 255 = no data (_FillValue)
    PATH/confidence/ ...            (time, y, x) uint8 0-255 (255 * max class probability)
    PATH/sar_weight/ ...            (time, y, x) uint8 0-255 (255 * the IRM weight of SAR)
    PATH/cloud_fraction/ ...        (time, y, x) uint8 0-255 (255 * cloudy/snowy share of patch)
    PATH/summary_class/ ...         (y, x) uint8, 255 = no data: the period's summary
    PATH/summary_confidence/ ...    (y, x) uint8 0-255
    PATH/changed/ ...               (y, x) uint8, only in reprocessed maps: 1 summary class
                                    changed, 0 same, 255 not valid in both maps
    PATH/_geoflow_ledger/           a Zarr group (so Zarr and xarray ignore it quietly) holding
        store.json                  what the store was made for (grid, dates, request, model)
        done/<chunk id>.json        one file per chunk whose write completed, with the size and
                                    sha256 of each object the write left (a rerun and
                                    ``geoflow verify`` check them)
        failed/<chunk id>.json      one file per chunk that failed, with the reason

Writing: :meth:`MapStore.open_or_create` writes the template (metadata and coordinates only,
``compute=False``) and consolidates its metadata, then each worker calls
:meth:`MapStore.write_chunk` with its chunk's map: a region write of whole Zarr chunks, then
the ledger entry. A chunk is therefore marked done only after its bytes are stored. A rerun
checks every done chunk against its entry (:meth:`MapStore.verified_done`) and computes again
the chunks that are missing, damaged or recorded by a garbled entry; :meth:`MapStore.verify`
(``geoflow verify``) reports the same without changing anything. Chunk data depend only on the
inputs, so a resumed run yields the same bytes as an uninterrupted one (:meth:`MapStore.digest`).

The ledger needs no rename, so it works the same on disk and on object storage:

- On a local disk each entry is written to a temporary name, fsynced and renamed into place
  (after the chunk's files are fsynced), so a reader sees the whole entry or none.
- ``PATH`` may also be an fsspec URL (``s3://``, ``gs://``, ``memory://``, ...; with
  ``storage_options``, or the standard AWS environment for ``s3://``). An object PUT is
  already all-or-nothing, and object stores have no rename: each entry is one PUT. A *done*
  entry is written once, with a conditional PUT (``If-None-Match: *``: S3 and compatible
  servers refuse it when the object exists). If a done entry is already there, it is
  accepted when it matches the chunk's objects as stored now (the same chunk written twice:
  a retried PUT whose answer was lost, or a task Dask ran twice; chunk bytes depend only on
  the inputs) and replaced when it does not (a stale entry of a damaged chunk). The
  legitimate rewrite is explicit: :meth:`MapStore.verified_done` deletes the entry of a
  damaged chunk before the run computes it again, so its new entry is again a first write.
  Stores that do not implement conditional writes get a plain PUT. Failure records (which a
  later failure may rewrite) and the template are plain PUTs.

Model versions: a store belongs to one grid, one request (bbox, dates, dates found) and one
model version. Opening it for anything else raises :class:`~geoflow.errors.StoreMismatchError`
and leaves it untouched; the map of a new model version goes to a new path (the hint names
one: ``PATH-<version>.zarr``), so the old map stays readable next to it.

Reading: :func:`open_map` (``geoflow.open_map``) gives the map lazily as stored: classes uint8
with 255 for no data, CRS and transform decoded (rioxarray's ``.rio``), for paths and URLs.
The metadata is consolidated (written with the template, again after
:meth:`MapStore.finalize`), so plain ``xr.open_zarr(PATH)`` opens it without a warning; add
``decode_coords="all"`` for the CRS and ``mask_and_scale=False`` for the raw uint8 (decoding
otherwise turns ``class`` into float with NaN for 255). GDAL reads the store from 3.11 on
(3.10 does not know the Zarr v3 ``bytes`` codec); :func:`geoflow.export.export_cog` writes a
COG for any GIS.

Examples
--------
>>> import numpy as np, pandas as pd, tempfile
>>> from geoflow.grid import GridSpec
>>> from geoflow.tiles import plan_chunks
>>> plan = plan_chunks(GridSpec(32632, 10.0, 500000.0, 5000000.0, 64, 64), 32, 32, 1)
>>> out = tempfile.mkdtemp() + "/map.zarr"
>>> store = MapStore.open_or_create(
...     out, map_grid=plan.map_grid, times=pd.to_datetime(["2024-06-01"]),
...     chunk_shape=plan.chunk_shape,
...     attrs={"request": {"bbox": [11.0, 45.0, 11.1, 45.1]}, "model_version": "demo-1"})
>>> chunk = plan.chunks[0]
>>> maps = xr.Dataset({"class": (("time", "y", "x"), np.full((1, 1, 1), 3, "uint8"))})
>>> store.write_chunk(chunk, maps)
>>> sorted(store.done())
['r0_c0']
>>> store.dataset(mask_and_scale=False)["class"].values[0]
array([[  3, 255],
       [255, 255]], dtype=uint8)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geoflow._jsonfile import write_json
from geoflow.errors import StoreDamagedError, StoreError, StoreMismatchError, strip_secrets
from geoflow.grid import GridSpec
from geoflow.tiles import Chunk

log = logging.getLogger(__name__)

FORMAT = "geoflow-map"
FORMAT_VERSION = 1
LEDGER = "_geoflow_ledger"

#: Per-date variables (time, y, x) and their fill values (None: 0, not masked).
TIME_VARIABLES: dict[str, int | None] = {
    "class": 255, "confidence": None, "sar_weight": None, "cloud_fraction": None}
#: Period summaries (y, x).
SUMMARY_VARIABLES: dict[str, int | None] = {"summary_class": 255, "summary_confidence": None}
DEFAULT_VARIABLES: tuple[str, ...] = (*TIME_VARIABLES, *SUMMARY_VARIABLES)
#: Variables (y, x) a store has only when asked for (``variables=``): ``changed`` is written
#: by :func:`geoflow.reprocess.reprocess`: 1 where the summary class differs from the map the
#: store supersedes, 0 where it is the same, 255 where either map has no data.
OPTIONAL_VARIABLES: dict[str, int | None] = {"changed": 255}
#: Every variable a store may have, with its fill value.
ALL_VARIABLES: dict[str, int | None] = {**TIME_VARIABLES, **SUMMARY_VARIABLES,
                                        **OPTIONAL_VARIABLES}
#: What each variable holds where no scene has data (:meth:`MapStore.empty_chunk`): no class,
#: no confidence, no SAR weight, a fully "cloudy" (unseen) optical view, and no comparison.
EMPTY_VALUES: dict[str, int] = {"class": 255, "confidence": 0, "sar_weight": 0,
                                "cloud_fraction": 255, "summary_class": 255,
                                "summary_confidence": 0, "changed": 255}
#: Flag values of the ``changed`` layer.
CHANGED_FLAGS: dict[str, int] = {"same": 0, "changed": 1, "not_compared": 255}
#: Version of the done-entry layout: 2 records each chunk object's size and sha256.
LEDGER_VERSION = 2

_DESCRIPTIONS = {
    "class": "scene class index per date (255: no data)",
    "confidence": "probability of the class, 0-255 = 0-1",
    "sar_weight": "weight of SAR in the fused answer (IRM), 0-255 = 0-1",
    "cloud_fraction": "share of the patch hidden by cloud, shadow or snow (SCL 3, 8-11), "
                      "0-255 = 0-1 (255 also: no optical)",
    "summary_class": "scene class over the period, confidence-weighted vote (255: no data)",
    "summary_confidence": "confidence of the summary class, 0-255 = 0-1",
    "changed": "summary class differs from the superseded map (1), is the same (0), or is not "
               "valid in both (255)",
}
#: Root attributes of provenance a store may carry besides the required ones (see
#: :meth:`MapStore.open_or_create`): the catalog the items came from (``url`` without
#: secrets, ``s2_collection``, ``s1_collection``), every item the run's chunks chose from
#: (``stac_inputs``: ``s2`` and ``s1`` ids), the model's name, and the store a
#: reprocessed map supersedes (``store``, ``model_version``, ``model_checksum``, ``created``).
PROVENANCE_ATTRS = ("stac_catalog", "stac_inputs", "model_name", "supersedes")
# Attributes that change from run to run; left out of digest() so two runs compare equal.
VOLATILE_ATTRS = ("created", "run")
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|access[_-]?key|signature|"
                         r"credential|authori[sz]ation|^sas$|^sig$|^se$|^sv$)", re.I)
_CHUNK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


# ---------------------------------------------------------------------------- sanitising
def _jsonable(obj: Any) -> Any:
    """JSON-ready copy of attribute values, without secrets."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(obj, str):
        return strip_secrets(obj)
    if isinstance(obj, bool | int | float) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, pd.Timestamp | _dt.datetime | _dt.date | np.datetime64):
        return pd.Timestamp(obj).isoformat()
    if isinstance(obj, GridSpec):
        return obj.to_dict()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Iterable):
        return [_jsonable(v) for v in obj]
    return strip_secrets(str(obj))


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(_jsonable(obj), sort_keys=True))


# ---------------------------------------------------------------------------- files
def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


class _Files:
    """File access inside a store: a local directory, or any fsspec URL (s3://, gs://, ...).

    Local ledger entries are written to a temporary name, fsynced and renamed into place;
    on object stores a single PUT is already all-or-nothing, and :meth:`create_json` is a
    conditional PUT. Listings and existence checks on object stores always ask the store
    (fsspec caches listings per process, and other processes write the ledger).
    """

    def __init__(self, location: str | os.PathLike[str],
                 storage_options: Mapping[str, Any] | None = None) -> None:
        text = os.fspath(location)
        if text.startswith("file://"):
            text = text[len("file://"):]
        self.storage_options = dict(storage_options) if storage_options else None
        self.remote = "://" in text
        if self.remote:
            import fsspec

            try:
                self.fs, self.root = fsspec.core.url_to_fs(text, **(self.storage_options or {}))
            except (ImportError, ValueError) as err:
                raise StoreError(strip_secrets(f"cannot open the map store {text!r} ({err})"),
                                 hint="install the fsspec package for this URL scheme (s3fs, "
                                      "gcsfs, adlfs) or write to a local path") from None
            self.url = text
            #: False once the store refused a conditional PUT as not implemented.
            self.conditional = True
        else:
            self.fs = None
            self.conditional = False
            self.root = str(Path(text).expanduser().absolute())
            self.url = self.root

    @property
    def display(self) -> str:
        return strip_secrets(self.url)

    def _p(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def _fresh(self, rel: str) -> str:
        """The full path of ``rel``, its cached listings dropped (remote only)."""
        path = self._p(rel)
        if self.remote:
            self.fs.invalidate_cache(path)
        return path

    def is_file(self, rel: str) -> bool:
        if not self.remote:
            return Path(self._p(rel)).is_file()
        # Not fsspec's isfile(), which answers False for any error: missing credentials on a
        # worker would then read as "not a map store".
        try:
            return bool(self.fs.info(self._fresh(rel)).get("type") == "file")
        except FileNotFoundError:
            return False
        except Exception as err:
            raise StoreError(f"cannot read {self.display}/{rel} ({type(err).__name__}: "
                             f"{err})", hint="check the store's endpoint and credentials where "
                             "this runs (AWS_* environment or storage_options): Dask workers "
                             "need them as well as the client") from None

    def read_json(self, rel: str) -> Any:
        if self.remote:
            return json.loads(self.fs.cat_file(self._p(rel)))
        return _read_json(Path(self._p(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._p(rel)) if self.remote else Path(self._p(rel)).read_bytes()

    def read_bytes_or_none(self, rel: str) -> bytes | None:
        try:
            return self.read_bytes(rel)
        except FileNotFoundError:
            return None

    def read_many(self, rels: Sequence[str]) -> dict[str, bytes | None]:
        """The bytes of each of ``rels`` (None where missing); concurrent requests on object
        stores (a chunk has one object per variable and date)."""
        if not self.remote:
            return {rel: self.read_bytes_or_none(rel) for rel in rels}
        paths = {self._p(rel): rel for rel in rels}
        got = self.fs.cat(list(paths), on_error="return")
        out: dict[str, bytes | None] = dict.fromkeys(rels)
        for key, value in got.items():
            # fsspec returns the paths it was given, or its own spelling (no protocol).
            rel = paths.get(key) or paths[self.fs._strip_protocol(key)]
            if isinstance(value, FileNotFoundError):
                continue
            if isinstance(value, BaseException):
                raise value
            out[rel] = value
        return out

    def write_json(self, rel: str, obj: Any) -> None:
        if self.remote:
            self.fs.pipe_file(self._p(rel), json.dumps(obj, sort_keys=True, indent=1).encode())
        else:
            write_json(self._p(rel), obj, sort_keys=True)

    def create_json(self, rel: str, obj: Any) -> bool:
        """Write JSON once: False (nothing written) if ``rel`` already exists.

        Object stores: one conditional PUT (``If-None-Match: *``), so two writers never
        replace each other's entry; where the store does not implement it, a plain PUT.
        Local disk: the atomic write of :meth:`write_json` (a rename replaces).
        """
        if not self.remote or not self.conditional:
            self.write_json(rel, obj)
            return True
        data = json.dumps(obj, sort_keys=True, indent=1).encode()
        try:
            self.fs.pipe_file(self._p(rel), data, mode="create")
        except FileExistsError:
            return False
        except (NotImplementedError, TypeError, OSError) as err:
            # 501 NotImplemented (s3fs: ENOSYS), or a file system without mode="create".
            if isinstance(err, OSError) and not (
                    err.errno == errno.ENOSYS or "NotImplemented" in str(err)):
                raise
            log.info("%s: no conditional writes (%s); done entries are plain PUTs",
                     self.display, type(err).__name__)
            self.conditional = False
            self.write_json(rel, obj)
        return True

    def listdir(self, rel: str) -> list[str]:
        if not self.remote:
            d = Path(self._p(rel))
            return sorted(f.name for f in d.iterdir()) if d.is_dir() else []
        try:
            return sorted(str(e).rstrip("/").rsplit("/", 1)[-1]
                          for e in self.fs.ls(self._fresh(rel), detail=False))
        except FileNotFoundError:
            return []

    def delete(self, rel: str) -> None:
        if self.remote:
            with contextlib.suppress(FileNotFoundError):  # S3 answers 204 either way
                self.fs.rm_file(self._fresh(rel))
            self.fs.invalidate_cache(self._p(rel))
        else:
            Path(self._p(rel)).unlink(missing_ok=True)

    def is_empty(self) -> bool:
        if self.remote:
            self._fresh("")
            return not self.fs.exists(self.root) or not self.fs.ls(self.root, detail=False)
        root = Path(self.root)
        return not root.exists() or (root.is_dir() and not any(root.iterdir()))

    def rmtree(self) -> None:
        if self.remote:
            self.fs.rm(self._fresh(""), recursive=True)
            self.fs.invalidate_cache(self.root)
        else:
            shutil.rmtree(self.root)

    def files(self) -> list[str]:
        """Relative paths of every file, sorted."""
        if self.remote:
            base = self.root.rstrip("/") + "/"
            return sorted(f[len(base):] for f in self.fs.find(self._fresh(""))
                          if f.startswith(base))
        root = Path(self.root)
        return sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())

    def fsync(self, rel: str) -> bool:
        """fsync a local file if it exists (object stores need none); True if it exists."""
        if self.remote:
            return True
        f = Path(self._p(rel))
        if not f.exists():
            return False
        _fsync(f)
        return True

    def zarr_kwargs(self) -> dict[str, Any]:
        return {"storage_options": self.storage_options} if self.remote and \
            self.storage_options else {}


def _times_index(times: Any) -> pd.DatetimeIndex:
    if not isinstance(times, pd.Index | np.ndarray | pd.Series):
        times = list(times)
    if len(times) and all(isinstance(t, str) for t in times):
        idx = pd.DatetimeIndex(pd.to_datetime(times, format="ISO8601"))
    else:
        idx = pd.DatetimeIndex(pd.to_datetime(times))
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.as_unit("ns")


def _chunk_shape(chunk_shape: int | Sequence[int]) -> tuple[int, int]:
    shape = (chunk_shape, chunk_shape) if isinstance(chunk_shape, int) else tuple(chunk_shape)
    if len(shape) == 3:  # (time, y, x): time chunks are always one date
        shape = shape[1:]
    if len(shape) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in shape):
        raise StoreError(f"chunk_shape must be (rows, cols) of positive ints, got {chunk_shape!r}",
                         hint="pass plan.chunk_shape from geoflow.tiles.plan_chunks")
    return (int(shape[0]), int(shape[1]))


def _versioned_path(path: str, version: str) -> str:
    """``.../map.zarr`` -> ``.../map-<version>.zarr`` (a sibling for a new model's map)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(version)).strip("-") or "new"
    head, sep, name = path.rstrip("/").rpartition("/")
    stem, dot, ext = name.rpartition(".")
    new = f"{stem}-{safe}.{ext}" if dot and stem else f"{name}-{safe}"
    return f"{head}{sep}{new}"


# ---------------------------------------------------------------------------- the store
class MapStore:
    """A Zarr v3 map store with its resume ledger (see the module docs for the layout).

    Make one with :meth:`open_or_create` (a run) or :meth:`open` (an existing store). The
    object holds only the path and small metadata, so it pickles cheaply into Dask tasks;
    workers may also call :meth:`open` themselves.

    Attributes
    ----------
    path
        The store directory (a :class:`~pathlib.Path`; the URL for object stores).
    map_grid
        Grid of the map (``plan.map_grid``).
    times
        The map's dates (the ``time`` coordinate).
    chunk_shape
        Spatial Zarr chunk shape ``(rows, cols)``; time chunks hold one date.
    variables
        Data variables of the store.
    """

    def __init__(self, files: _Files, meta: Mapping[str, Any]) -> None:
        self._files = files
        #: Local stores: a Path; object stores: the URL.
        self.path: Path | str = files.url if files.remote else Path(files.root)
        self._meta = dict(meta)
        self.map_grid = GridSpec.from_dict(meta["grid"])
        self.times = _times_index(meta["times"])
        self.chunk_shape: tuple[int, int] = (int(meta["chunk_shape"][0]),
                                             int(meta["chunk_shape"][1]))
        self.variables: tuple[str, ...] = tuple(meta["variables"])

    def __repr__(self) -> str:
        return (f"MapStore({self._files.display!r}, grid={self.map_grid.shape} px at "
                f"{self.map_grid.resolution:g} m, dates={len(self.times)}, "
                f"model={self._meta.get('model_version')!r}, done={len(self.done())})")

    @property
    def model_version(self) -> str:
        """Version of the model that made this map."""
        return str(self._meta.get("model_version"))

    @property
    def url(self) -> str:
        """Where the store is, as a string for ``xr.open_zarr`` (path or URL)."""
        return self._files.url

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str],
             storage_options: Mapping[str, Any] | None = None) -> MapStore:
        """Open an existing map store (to read it, or to write more chunks from a worker).

        Raises
        ------
        StoreError
            If ``path`` is not a complete geoflow map store.

        Examples
        --------
        See the module docstring.
        """
        files = path._files if isinstance(path, MapStore) else _Files(path, storage_options)
        p = files.display
        if not files.is_file(f"{LEDGER}/store.json"):
            raise StoreError(f"{p} is not a geoflow map store (no {LEDGER}/store.json)",
                             hint="pass the path given as out= to classify_region / "
                                  "`geoflow classify --out`")
        try:
            meta = files.read_json(f"{LEDGER}/store.json")
        except (OSError, ValueError) as err:
            raise StoreDamagedError(f"the ledger of {p} is unreadable ({err})",
                                    hint="rerun with --overwrite to rebuild the map") from None
        if not isinstance(meta, dict):
            raise StoreDamagedError(f"the ledger of {p} is damaged ({LEDGER}/store.json holds "
                                    f"{type(meta).__name__}, not a mapping)",
                                    hint="rerun with --overwrite to rebuild the map")
        if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(f"{p} is a map store of an unknown format "
                             f"({meta.get('format')!r} v{meta.get('format_version')})",
                             hint="upgrade geoflow, or write to a new path")
        problem = _metadata_problem(files, "zarr.json")
        if problem:
            raise StoreDamagedError(f"the map store {p} is damaged: {problem}",
                                    hint="rerun with --overwrite (overwrite=True) to rebuild the "
                                         "map, or restore the store from a copy; `geoflow verify "
                                         "STORE` lists what is damaged")
        try:
            return cls(files, meta)
        except (KeyError, TypeError, ValueError) as err:
            raise StoreDamagedError(f"the ledger of {p} is damaged ({type(err).__name__}: "
                                    f"{err})", hint="rerun with --overwrite to rebuild the map") \
                from None

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        *,
        map_grid: GridSpec,
        times: Sequence[Any] | pd.DatetimeIndex | np.ndarray,
        chunk_shape: int | Sequence[int],
        attrs: Mapping[str, Any],
        variables: Sequence[str] = DEFAULT_VARIABLES,
        overwrite: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> MapStore:
        """Create the store's template, or reopen a store made for the same job to resume it.

        Parameters
        ----------
        path
            Store directory, local (``file://`` accepted) or an fsspec URL (``s3://...``).
        map_grid
            The map grid (``plan.map_grid``).
        times
            The map's dates, one per Sentinel-2 solar day.
        chunk_shape
            Spatial chunk shape ``(rows, cols)`` in map pixels (``plan.chunk_shape``).
        attrs
            Provenance for the root attributes. Required: ``request`` (JSON-able dict: bbox,
            dates, grid, options) and ``model_version``. Compared on reopen: ``request``,
            ``model_version``, ``model_checksum``. Recommended: ``model_checksum``,
            ``classes``, ``class_colors`` (``"#rrggbb"``), ``stac_items`` (per date: ids of
            the S2 and S1 items), and the fields of :data:`PROVENANCE_ATTRS` (the catalog,
            the model's name, the superseded store). Anything else is stored as given. URLs
            lose their query strings and keys that look like secrets are dropped.
        variables
            Data variables to create (default: the four per-date variables and the two
            summaries; :data:`OPTIONAL_VARIABLES` such as ``changed`` only when named).
        overwrite
            Replace an existing geoflow map store at ``path`` (never anything else).
        storage_options
            fsspec options for URLs (credentials stay in memory, never in the store).

        Returns
        -------
        MapStore

        Raises
        ------
        StoreMismatchError
            The store at ``path`` was made for another grid, dates, chunking, request or model
            version. It is left untouched; the message says what differs and how to proceed.
        StoreError
            ``path`` holds something that is not a geoflow map store, or arguments are bad.

        Examples
        --------
        See the module docstring.
        """
        files = _Files(path, storage_options)
        if "request" not in attrs or "model_version" not in attrs:
            raise StoreError("map store attrs need 'request' and 'model_version'",
                             hint="pass attrs={'request': {...}, 'model_version': model.version, "
                                  "...}")
        unknown = [v for v in variables if v not in ALL_VARIABLES]
        if unknown or not variables:
            raise StoreError(f"unknown map variables {unknown or '(none given)'}",
                             hint=f"choose from {', '.join(ALL_VARIABLES)}")
        times_idx = _times_index(times)
        if len(times_idx) == 0:
            raise StoreError("a map store needs at least one date",
                             hint="search a longer date range or a larger area")
        if not times_idx.is_unique:
            raise StoreError("the map's dates repeat", hint="pass one time per solar day")
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "grid": map_grid.to_dict(),
            "times": [t.isoformat() for t in times_idx],
            "chunk_shape": list(_chunk_shape(chunk_shape)),
            "variables": list(variables),
            "request": _canonical(attrs["request"]),
            "model_version": str(attrs["model_version"]),
            "model_checksum": _canonical(attrs.get("model_checksum")),
        }
        has_marker = files.is_file(f"{LEDGER}/store.json")
        if has_marker and not overwrite:
            existing = cls.open(files.url, storage_options)
            _check_same(files, existing._meta, meta)
            return existing
        if not files.is_empty():
            if not (has_marker or _is_incomplete_template(files)):
                raise StoreError(f"{files.display} exists and is not a geoflow map store",
                                 hint="choose a new path for the map; geoflow never deletes "
                                      "data it did not write")
            # Our own store to overwrite, or a template whose creation was interrupted
            # before any chunk could be written: safe to replace.
            files.rmtree()
        store = cls(files, meta)
        store._write_template(dict(attrs))
        return store

    def _write_template(self, attrs: dict[str, Any]) -> None:
        import dask.array as da
        import rioxarray  # noqa: F401  (registers .rio)

        grid, (cy, cx) = self.map_grid, self.chunk_shape
        n_t = len(self.times)
        classes = list(attrs.get("classes") or [])
        colors = list(attrs.get("class_colors") or [])
        data_vars = {}
        encoding: dict[str, dict[str, Any]] = {}
        for name in self.variables:
            fill = ALL_VARIABLES[name]
            dims: tuple[str, ...]
            shape: tuple[int, ...]
            chunks: tuple[int, ...]
            if name in TIME_VARIABLES:
                dims, shape, chunks = ("time", "y", "x"), (n_t, *grid.shape), (1, cy, cx)
            else:
                dims, shape, chunks = ("y", "x"), grid.shape, (cy, cx)
            # Lazy: compute=False writes metadata only, never these values.
            data = da.full(shape, 0 if fill is None else fill, dtype="uint8", chunks=chunks)
            var_attrs: dict[str, Any] = {"long_name": _DESCRIPTIONS[name]}
            if name == "changed":
                var_attrs["flag_values"] = list(CHANGED_FLAGS.values())
                var_attrs["flag_meanings"] = " ".join(CHANGED_FLAGS)
            elif name.endswith("class") and classes:
                var_attrs["flag_values"] = list(range(len(classes)))
                var_attrs["flag_meanings"] = " ".join(c.replace(" ", "_") for c in classes)
                if colors:
                    var_attrs["flag_colors"] = " ".join(colors)
            else:
                var_attrs.update(valid_range=[0, 255], scale_note="value / 255 = fraction")
            data_vars[name] = xr.Variable(dims, data, var_attrs)
            enc: dict[str, Any] = {"chunks": chunks, "dtype": "uint8",
                                   "fill_value": 0 if fill is None else fill,
                                   "grid_mapping": "spatial_ref"}
            if fill is not None:
                enc["_FillValue"] = fill
            encoding[name] = enc
        ds = xr.Dataset(data_vars, coords={
            "time": ("time", self.times.values),
            "y": ("y", grid.y_coords, {"units": "m", "standard_name": "projection_y_coordinate"}),
            "x": ("x", grid.x_coords, {"units": "m", "standard_name": "projection_x_coordinate"}),
        })
        ds = ds.rio.write_crs(grid.epsg).rio.write_transform(grid.transform)
        # Fixed units (not xarray's data-dependent choice) keep the bytes the same run to run;
        # seconds unless a date carries sub-second precision, which must survive exactly.
        whole_s = bool((self.times.asi8 % 1_000_000_000 == 0).all())
        encoding["time"] = {"units": f"{'seconds' if whole_s else 'nanoseconds'} since 1970-01-01",
                            "calendar": "proleptic_gregorian", "dtype": "int64"}
        root = _jsonable(attrs)
        root.update(
            geoflow_format=FORMAT, geoflow_format_version=FORMAT_VERSION,
            geoflow_version=_geoflow_version(), map_grid=self.map_grid.to_dict(),
            crs=f"EPSG:{grid.epsg}", Conventions="CF-1.8",
            created=_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        )
        ds.attrs = root
        if not self._files.remote:
            Path(self._files.root).parent.mkdir(parents=True, exist_ok=True)
        try:
            ds.to_zarr(self.url, mode="w", compute=False, encoding=encoding, zarr_format=3,
                       consolidated=False, **self._files.zarr_kwargs())
        except OSError as err:
            raise StoreError(f"cannot write the map store at {self._files.display} ({err})",
                             hint="check that the directory is writable and has free space") \
                from None
        # The ledger is a Zarr group so that Zarr and xarray list it without complaint.
        self._files.write_json(f"{LEDGER}/zarr.json",
                               {"zarr_format": 3, "node_type": "group",
                                "attributes": {"description": "geoflow resume ledger"}})
        self._consolidate()
        # Written last: its presence means the template is complete.
        self._files.write_json(f"{LEDGER}/store.json", self._meta)

    def _consolidate(self, attrs: Mapping[str, Any] | None = None) -> None:
        """Rewrite the root ``zarr.json`` with ``attrs`` merged into its attributes and the
        consolidated metadata of the map's arrays, in one write.

        Consolidated metadata (zarr-python's ``consolidated_metadata`` key: each array's own
        ``zarr.json``, inline) lets readers open the map with one request, and xarray's
        default open needs no fallback (which warns). Built here rather than with
        ``zarr.consolidate_metadata``, which would walk into the ledger (thousands of entries
        on a large map) and warn about its files; the ledger is not part of the map.
        """
        root = self._files.read_json("zarr.json")
        if attrs:
            root.setdefault("attributes", {}).update(attrs)
        names = [n for n in self._files.listdir("")
                 if n not in (LEDGER, "zarr.json") and not n.startswith(".")
                 and (self._files.remote or Path(self._files.root, n).is_dir())]
        docs = self._files.read_many([f"{n}/zarr.json" for n in names])
        children = {n: json.loads(doc) for n, doc in zip(names, docs.values(), strict=True)
                    if doc is not None}  # None: not a Zarr node
        root["consolidated_metadata"] = {"kind": "inline", "must_understand": False,
                                         "metadata": children}
        self._files.write_json("zarr.json", root)

    # ------------------------------------------------------------------ reading
    def dataset(self, *, mask_and_scale: bool = True, chunks: Any = "auto") -> xr.Dataset:
        """The map, lazily, with CRS and transform (rioxarray) decoded.

        Parameters
        ----------
        mask_and_scale
            True: CF decoding (``class`` becomes float with NaN for 255). False: the
            variables as stored (uint8, 255 = no data), as :func:`open_map` returns them.
        chunks
            Dask chunks, as for ``xr.open_zarr``.

        Examples
        --------
        See the module docstring.
        """
        import rioxarray  # noqa: F401

        return xr.open_zarr(self.url, decode_coords="all", mask_and_scale=mask_and_scale,
                            chunks=chunks, consolidated=_has_consolidated(self._files),
                            **self._files.zarr_kwargs())

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's root attributes (provenance)."""
        return dict(self._files.read_json("zarr.json").get("attributes", {}))

    # ------------------------------------------------------------------ writing
    def _check_chunk(self, chunk: Chunk) -> tuple[slice, slice]:
        return self._check_place(chunk.id, *chunk.out_slices)

    def _check_place(self, chunk_id: str, ys: slice, xs: slice) -> tuple[slice, slice]:
        if not _CHUNK_ID.match(str(chunk_id)):
            raise StoreError(f"chunk id {chunk_id!r} is not a safe file name",
                             hint="use the ids from geoflow.tiles.plan_chunks")
        (h, w), (cy, cx) = self.map_grid.shape, self.chunk_shape
        for sl, size, step, axis in ((ys, h, cy, "y"), (xs, w, cx, "x")):
            if not (0 <= sl.start < sl.stop <= size) or sl.start % step or (
                    sl.stop != min(sl.start + step, size)):
                raise StoreError(
                    f"chunk {chunk_id} covers {axis} {sl.start}:{sl.stop}, which is not one "
                    f"whole Zarr chunk of this store (chunks of {step} in {size} px)",
                    hint="plan the chunks with the store's chunk_shape and map grid")
        return ys, xs

    def write_chunk(self, chunk: Chunk, ds: xr.Dataset) -> None:
        """Write one chunk's map into its region, then mark it done in the ledger.

        Parameters
        ----------
        chunk
            The chunk (from the same plan as the store: its ``out_slices`` are one Zarr chunk).
        ds
            The chunk's map: any of the store's variables, uint8, dims ``(time, y, x)`` or
            ``(y, x)`` sized to the chunk, all dates of the store. Coordinates, if present,
            must match the store's (they are checked, not written).

        Raises
        ------
        StoreError
            Wrong variables, dtypes, shapes, dates or place.

        Examples
        --------
        See the module docstring.
        """
        ys, xs = self._check_chunk(chunk)
        shape2 = (ys.stop - ys.start, xs.stop - xs.start)
        unknown = [v for v in ds.data_vars if v not in self.variables]
        if unknown or not ds.data_vars:
            raise StoreError(f"chunk {chunk.id}: variables {unknown or '(none)'} are not in the "
                             f"store ({', '.join(self.variables)})",
                             hint="write only the store's variables")
        self._check_coords(chunk.id, ds, ys, xs)
        out: dict[str, xr.Variable] = {}
        for name, var in ds.data_vars.items():
            want_dims = ("time", "y", "x") if name in TIME_VARIABLES else ("y", "x")
            want_shape = (len(self.times), *shape2) if name in TIME_VARIABLES else shape2
            if var.dims != want_dims or var.shape != want_shape:
                raise StoreError(f"chunk {chunk.id}: {name} has dims {var.dims} shape {var.shape}"
                                 f", expected {want_dims} {want_shape}",
                                 hint="classify the chunk's read window for every store date")
            values = np.asarray(var.values)
            if values.dtype != np.uint8:
                if not (np.issubdtype(values.dtype, np.integer) and values.size and
                        values.min() >= 0 and values.max() <= 255):
                    raise StoreError(f"chunk {chunk.id}: {name} is {values.dtype}, not uint8",
                                     hint="encode maps as uint8 (255 = no data for classes)")
                values = values.astype(np.uint8)
            out[str(name)] = xr.Variable(want_dims, values)
        region = {"y": ys, "x": xs}
        if any(n in TIME_VARIABLES for n in out):
            region = {"time": slice(0, len(self.times)), **region}
        try:
            xr.Dataset(out).to_zarr(self.url, region=region, mode="r+", zarr_format=3,
                                    consolidated=False, **self._files.zarr_kwargs())
        except OSError as err:
            raise StoreError(f"chunk {chunk.id}: writing to {self._files.display} failed "
                             f"({err})",
                             hint="check free space and permissions, then rerun to resume") \
                from None
        keys = self._chunk_keys(out, ys, xs)
        self._sync_chunk_files(keys)
        # What the write left, read back: a rerun and `geoflow verify` check the chunk against
        # it. Written only now, so a chunk is never marked done before its bytes are stored.
        entry = {"chunk": chunk.id, "ledger_version": LEDGER_VERSION,
                 "out_slices": [[ys.start, ys.stop], [xs.start, xs.stop]],
                 "variables": sorted(out), "objects": self._describe(keys)}
        try:
            self._mark_done(chunk.id, entry)
        except OSError as err:
            raise StoreError(f"chunk {chunk.id}: marking it done in {self._files.display} "
                             f"failed ({err})",
                             hint="check free space and permissions, then rerun to resume") \
                from None
        self._files.delete(f"{LEDGER}/failed/{chunk.id}.json")

    def _mark_done(self, chunk_id: str, entry: dict[str, Any]) -> None:
        """Write a chunk's done entry once (see the module docs, "without rename")."""
        rel = f"{LEDGER}/done/{chunk_id}.json"
        if self._files.create_json(rel, entry):
            return
        # An entry exists: this chunk was written twice (a retried PUT whose answer was
        # lost, or a task run twice), and the entry describes what is stored now; or it is
        # the stale entry of a chunk that was damaged after a run verified it.
        reason = self.check_chunk(chunk_id)
        if reason is None:
            return
        log.warning("chunk %s of %s: replacing its stale done entry (%s)", chunk_id,
                    self._files.display, reason)
        self._files.delete(rel)
        if not self._files.create_json(rel, entry):
            raise StoreError(f"chunk {chunk_id}: another writer marked it done in "
                             f"{self._files.display} at the same time",
                             hint="run one job per store at a time, then rerun to resume")

    def empty_chunk(self, chunk: Chunk) -> xr.Dataset:
        """A chunk's map where no scene has data (:data:`EMPTY_VALUES` in every variable).

        Examples
        --------
        >>> store.empty_chunk(plan.chunks[0])["class"].values.max()  # doctest: +SKIP
        255
        """
        ys, xs = chunk.out_slices
        h, w = ys.stop - ys.start, xs.stop - xs.start
        return xr.Dataset({
            name: (("time", "y", "x"), np.full((len(self.times), h, w), EMPTY_VALUES[name],
                                               np.uint8))
            if name in TIME_VARIABLES else
            (("y", "x"), np.full((h, w), EMPTY_VALUES[name], np.uint8))
            for name in self.variables})

    def _check_coords(self, chunk_id: str, ds: xr.Dataset, ys: slice, xs: slice) -> None:
        if "time" in ds.coords:
            got = _times_index(ds["time"].values)
            if len(got) != len(self.times) or not (got == self.times).all():
                raise StoreError(f"chunk {chunk_id}: dates {list(got.date)} differ from the "
                                 f"store's {list(self.times.date)}",
                                 hint="classify every date of the store, in order")
        tol = 1e-6 * self.map_grid.resolution
        for axis, sl, ref in (("y", ys, self.map_grid.y_coords), ("x", xs, self.map_grid.x_coords)):
            if axis in ds.coords:
                got = np.asarray(ds[axis].values, dtype="float64")
                if got.shape != ref[sl].shape or np.abs(got - ref[sl]).max() > tol:
                    raise StoreError(f"chunk {chunk_id}: its {axis} coordinates do not match the "
                                     "store's map grid at the chunk's place",
                                     hint="classify the chunk's read_grid from the same plan")

    def _chunk_keys(self, names: Iterable[str], ys: slice, xs: slice) -> list[str]:
        """The Zarr objects of a chunk's variables (one per date for per-date variables)."""
        cy, cx = ys.start // self.chunk_shape[0], xs.start // self.chunk_shape[1]
        keys: list[str] = []
        for name in sorted(names):
            keys.extend([f"{name}/c/{t}/{cy}/{cx}" for t in range(len(self.times))]
                        if name in TIME_VARIABLES else [f"{name}/c/{cy}/{cx}"])
        return keys

    def _sync_chunk_files(self, keys: Sequence[str]) -> None:
        """fsync the chunk files just written, so the ledger never runs ahead of the data."""
        if self._files.remote:
            return
        dirs = set()
        for key in keys:
            # Chunks equal to the fill value are not stored at all.
            if self._files.fsync(key):
                dirs.add(key.rsplit("/", 1)[0])
        for d in sorted(dirs):
            self._files.fsync(d)

    def _describe(self, keys: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Size and sha256 of each object; None for one that is not stored (all fill)."""
        return {key: None if data is None else {
                    "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                for key, data in self._files.read_many(keys).items()}

    # ------------------------------------------------------------------ verification
    def chunk_ids(self) -> list[str]:
        """Ids of every chunk of the map grid (as :func:`geoflow.tiles.plan_chunks` names them).

        Examples
        --------
        >>> store.chunk_ids()[:2]  # doctest: +SKIP
        ['r0_c0', 'r0_c1']
        """
        (h, w), (cy, cx) = self.map_grid.shape, self.chunk_shape
        return [f"r{r}_c{c}" for r in range(-(-h // cy)) for c in range(-(-w // cx))]

    def check_chunk(self, chunk_id: str) -> str | None:
        """Why a done chunk cannot be trusted, or None if what the ledger recorded is there.

        The done entry must parse, name this chunk, and list every object of the chunk with
        the size and sha256 it has now (an object recorded as absent must still be absent).
        """
        rel = f"{LEDGER}/done/{chunk_id}.json"
        try:
            entry = self._files.read_json(rel)
        except FileNotFoundError:
            return "not done"
        except (OSError, ValueError, UnicodeDecodeError) as err:
            return f"its done entry is unreadable ({type(err).__name__})"
        if not isinstance(entry, dict) or entry.get("chunk") != chunk_id or \
                not isinstance(entry.get("objects"), dict):
            return "its done entry is not a geoflow ledger entry for this chunk" + (
                " (written by an older geoflow, without checksums)"
                if isinstance(entry, dict) and entry.get("chunk") == chunk_id else "")
        ys_xs: Any = entry.get("out_slices")
        names: Any = entry.get("variables")
        if not isinstance(names, list) or not set(names) <= set(self.variables):
            return "its done entry names variables the store does not have"
        try:
            (y0, y1), (x0, x1) = ys_xs
            self._check_place(chunk_id, slice(int(y0), int(y1)), slice(int(x0), int(x1)))
        except (TypeError, ValueError, StoreError):
            return "its done entry has no valid place (out_slices)"
        want = self._chunk_keys(names, slice(y0, y1), slice(x0, x1))
        objects = entry["objects"]
        if sorted(objects) != sorted(want) or not want:
            return "its done entry does not list the chunk's objects"
        now = self._describe(want)
        for key in want:
            rec, got = objects[key], now[key]
            if rec is None and got is None:
                continue
            if got is None:
                return f"object {key} is missing"
            if not isinstance(rec, dict):
                return f"object {key} was recorded as not stored but exists"
            if rec.get("size") != got["size"]:
                return f"object {key} has {got['size']} bytes, the ledger recorded " \
                       f"{rec.get('size')}"
            if rec.get("sha256") != got["sha256"]:
                return f"object {key} differs from what was written (sha256)"
        return None

    def verified_done(self) -> set[str]:
        """Done chunks whose objects match the ledger; the others lose their done entry, so
        that a rerun computes them again. Used by runs; :meth:`verify` only reports.

        Examples
        --------
        >>> sorted(store.verified_done())  # doctest: +SKIP
        ['r0_c0']
        """
        good = set()
        for cid in sorted(self.done()):
            reason = self.check_chunk(cid)
            if reason is None:
                good.add(cid)
            else:
                log.warning("chunk %s of %s will be computed again: %s", cid,
                            self._files.display, reason)
                self._files.delete(f"{LEDGER}/done/{cid}.json")
        return good

    def verify(self) -> dict[str, Any]:
        """Report the store's health without changing anything.

        Returns
        -------
        dict
            ``ok`` (metadata readable and no chunk damaged), ``complete`` (``ok`` and every
            chunk done), ``chunks_total``, ``verified`` (count), ``missing`` (chunk ids not
            done), ``damaged`` (id -> reason), ``failed`` (id -> recorded reason),
            ``unknown_entries`` (done entries of chunks the grid does not have) and
            ``metadata`` (problems with the Zarr metadata).

        Examples
        --------
        >>> MapStore.open("map.zarr").verify()["complete"]  # doctest: +SKIP
        True
        """
        ids = self.chunk_ids()
        done = self.done()
        damaged, verified = {}, 0
        for cid in sorted(done & set(ids)):
            reason = self.check_chunk(cid)
            if reason is None:
                verified += 1
            else:
                damaged[cid] = reason
        metadata = [p for p in (_metadata_problem(self._files, rel) for rel in
                                ["zarr.json", *(f"{v}/zarr.json" for v in self.variables)]) if p]
        failed = self.failures()
        missing = [c for c in ids if c not in done]
        ok = not damaged and not metadata
        return {"store": self._files.display, "ok": ok, "complete": ok and not missing,
                "chunks_total": len(ids), "verified": verified, "missing": missing,
                "damaged": damaged, "failed": failed,
                "unknown_entries": sorted(done - set(ids)), "metadata": metadata}

    # ------------------------------------------------------------------ ledger
    def done(self) -> set[str]:
        """Ids of the chunks whose write completed.

        Examples
        --------
        See the module docstring.
        """
        return {n[:-5] for n in self._files.listdir(f"{LEDGER}/done")
                if n.endswith(".json") and not n.startswith(".")}

    def record_failure(self, chunk_id: str, reason: str) -> None:
        """Record that a chunk failed, and why (URLs in ``reason`` lose their tokens).

        Examples
        --------
        >>> import pandas as pd, tempfile
        >>> from geoflow.grid import GridSpec
        >>> s = MapStore.open_or_create(tempfile.mkdtemp(), map_grid=GridSpec(
        ...     32632, 320.0, 0.0, 0.0, 2, 2), times=pd.to_datetime(["2024-06-01"]),
        ...     chunk_shape=(1, 1), attrs={"request": {}, "model_version": "1"})
        >>> s.record_failure("r0_c1", "HTTP 500 from https://h/a.tif?sig=SECRET")
        >>> s.failures()
        {'r0_c1': 'HTTP 500 from https://h/a.tif'}
        """
        if not _CHUNK_ID.match(str(chunk_id)):
            raise StoreError(f"chunk id {chunk_id!r} is not a safe file name",
                             hint="use the ids from geoflow.tiles.plan_chunks")
        self._files.write_json(f"{LEDGER}/failed/{chunk_id}.json",
                               {"chunk": chunk_id, "reason": strip_secrets(str(reason))})

    def failures(self) -> dict[str, str]:
        """Chunks that failed and are not done since, with their reasons."""
        done = self.done()
        out = {}
        for name in self._files.listdir(f"{LEDGER}/failed"):
            if name.endswith(".json") and not name.startswith("."):
                cid = name[:-5]
                if cid not in done:
                    try:
                        out[cid] = str(self._files.read_json(f"{LEDGER}/failed/{name}")
                                       .get("reason", ""))
                    except (OSError, json.JSONDecodeError):
                        out[cid] = "(unreadable failure record)"
        return out

    def finalize(self, attrs: Mapping[str, Any] | None = None) -> None:
        """Add run attributes (e.g. a summary) to the store's root attributes.

        Existing keys given in ``attrs`` are replaced; ``created`` is kept. Put values that
        differ between runs (timings) under ``"run"`` so :meth:`digest` ignores them.
        """
        new = {k: v for k, v in _jsonable(dict(attrs or {})).items() if k != "created"}
        # With the metadata consolidated again, in the same write: the consolidated view
        # then matches the store (and a store from an older geoflow, without one, gets it).
        self._consolidate(new)

    def digest(self) -> str:
        """sha256 of the map's bytes: every chunk and metadata file, without the ledger and
        the run-dependent root attributes (:data:`VOLATILE_ATTRS`).

        Two runs of the same job, interrupted or not, have the same digest.
        """
        h = hashlib.sha256()
        rels = [r for r in self._files.files() if r.split("/", 1)[0] != LEDGER]
        for start in range(0, len(rels), 256):  # concurrent reads on object stores, bounded
            batch = self._files.read_many(rels[start:start + 256])
            for rel, data in batch.items():
                if data is None:
                    raise StoreError(f"{rel} vanished from {self._files.display} while it "
                                     "was being read", hint="digest a store nobody writes")
                h.update(rel.encode() + b"\0")
                if rel == "zarr.json":
                    root = json.loads(data)
                    for k in VOLATILE_ATTRS:
                        root.get("attributes", {}).pop(k, None)
                    data = json.dumps(root, sort_keys=True).encode()
                h.update(data)
        return h.hexdigest()


def verify_store(path: str | os.PathLike[str],
                 storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:meth:`MapStore.verify` for a path, also when the store cannot even be opened.

    Returns
    -------
    dict
        As :meth:`MapStore.verify`; a store whose ledger or root metadata is unreadable gives
        ``ok=False`` with the problem under ``metadata``.

    Raises
    ------
    StoreError
        ``path`` is not a geoflow map store at all.

    Examples
    --------
    >>> verify_store("map.zarr")["ok"]  # doctest: +SKIP
    True
    """
    try:
        return MapStore.open(path, storage_options).verify()
    except StoreDamagedError as err:
        return {"store": _Files(path, storage_options).display, "ok": False, "complete": False,
                "chunks_total": None, "verified": 0, "missing": [], "damaged": {},
                "failed": {}, "unknown_entries": [], "metadata": [err.message]}


def _has_consolidated(files: _Files) -> bool:
    """Whether the root ``zarr.json`` holds consolidated metadata (stores before it do not)."""
    try:
        root = files.read_json("zarr.json")
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(root, dict) and isinstance(root.get("consolidated_metadata"), dict)


def open_map(path_or_url: str | os.PathLike[str],
             storage_options: Mapping[str, Any] | None = None, *,
             chunks: Any = "auto") -> xr.Dataset:
    """Open a geoflow map store for reading, lazily, as stored.

    ``class`` and ``summary_class`` are uint8 class indices with 255 for no data (not float
    with NaN); ``confidence``, ``sar_weight``, ``cloud_fraction`` and ``summary_confidence``
    are uint8 0-255 (= 0-1). The CRS and transform are decoded (``ds.rio.crs``,
    ``ds.rio.transform()``); the root attributes name the classes, colours, model, request
    and STAC items. Works for local paths and fsspec URLs alike; the resume ledger is not
    needed (a copy of the Zarr arrays alone opens too).

    Parameters
    ----------
    path_or_url
        The store: a directory, ``file://``, ``s3://bucket/map.zarr`` or any fsspec URL.
        ``s3://`` honours the standard AWS environment (``AWS_ENDPOINT_URL``, keys, region)
        unless ``storage_options`` say otherwise.
    storage_options
        fsspec options for URLs, e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}``
        for s3fs.
    chunks
        Dask chunks (default: the store's chunks, merged up to Dask's chunk size).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    StoreError
        Nothing there, or not a geoflow map.

    Examples
    --------
    >>> import geoflow
    >>> m = geoflow.open_map("maps/kiel.zarr")  # doctest: +SKIP
    >>> m["summary_class"].dtype, int(m["summary_class"].attrs["_FillValue"])  # doctest: +SKIP
    (dtype('uint8'), 255)
    >>> m.rio.crs  # doctest: +SKIP
    CRS.from_epsg(32632)
    >>> opts = {"endpoint_url": "http://127.0.0.1:9000"}
    >>> geoflow.open_map("s3://bucket/kiel.zarr", storage_options=opts)  # doctest: +SKIP
    """
    import rioxarray  # noqa: F401  (registers .rio)

    files = _Files(path_or_url, storage_options)
    try:
        root = files.read_json("zarr.json")
    except FileNotFoundError:
        raise StoreError(f"no map store at {files.display}",
                         hint="pass the path or URL given as out= to classify_region / "
                              "`geoflow classify --out`") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise StoreError(f"cannot read the map store at {files.display} "
                         f"({type(err).__name__})",
                         hint="check the path, and the credentials / endpoint for URLs "
                              "(storage_options or the AWS_* environment)") from None
    attrs = root.get("attributes", {}) if isinstance(root, dict) else {}
    if not isinstance(attrs, dict) or attrs.get("geoflow_format") != FORMAT:
        raise StoreError(f"{files.display} is not a geoflow map store",
                         hint="open other Zarr stores with xarray.open_zarr")
    return xr.open_zarr(files.url, decode_coords="all", mask_and_scale=False, chunks=chunks,
                        consolidated=isinstance(root.get("consolidated_metadata"), dict),
                        **files.zarr_kwargs())


def _metadata_problem(files: _Files, rel: str) -> str | None:
    """Why the Zarr metadata document ``rel`` is unusable, or None."""
    try:
        doc = files.read_json(rel)
    except FileNotFoundError:
        return f"{rel} is missing"
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"{rel} is not valid JSON ({type(err).__name__})"
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
        return f"{rel} is not Zarr v3 metadata"
    return None


def _is_incomplete_template(files: _Files) -> bool:
    try:
        attrs = files.read_json("zarr.json").get("attributes", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return attrs.get("geoflow_format") == FORMAT


def _check_same(files: _Files, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    labels = {"grid": "map grid", "times": "dates", "chunk_shape": "chunk shape",
              "variables": "variables", "request": "request", "model_version": "model version",
              "model_checksum": "model checksum"}
    diffs = [k for k in labels if _canonical(old.get(k)) != _canonical(new.get(k))]
    if not diffs:
        return
    parts = []
    for k in diffs:
        a, b = json.dumps(_canonical(old.get(k))), json.dumps(_canonical(new.get(k)))
        if len(a) + len(b) > 160:
            a, b = a[:70] + "...", b[:70] + "..."
        parts.append(f"{labels[k]}: store has {a}, this run has {b}")
    if {"model_version", "model_checksum"} & set(diffs):
        hint = (f"write this model's map to a new path, e.g. "
                f"{_versioned_path(files.display, str(new.get('model_version')))} (the old "
                "map stays "
                "readable), or pass overwrite=True / --overwrite to replace it")
    else:
        hint = ("write to a new path, or pass overwrite=True / --overwrite to replace the "
                "existing map")
    raise StoreMismatchError(f"the map store {files.display} was made for another job ("
                             + "; ".join(parts) + ")", hint=hint)


def _geoflow_version() -> str:
    from geoflow import __version__

    return __version__


__all__ = ["ALL_VARIABLES", "CHANGED_FLAGS", "DEFAULT_VARIABLES", "EMPTY_VALUES",
           "OPTIONAL_VARIABLES", "PROVENANCE_ATTRS", "SUMMARY_VARIABLES", "TIME_VARIABLES",
           "MapStore", "open_map", "verify_store"]
