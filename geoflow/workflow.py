"""Run specs: a YAML file that says what region to map, when, from which catalog, with which
model, into which store and on which cluster; loaded into a checked, typed :class:`Workflow`.

A spec (every key but ``bbox`` and ``dates`` optional)::

    name: po-valley                    # default: the file name without .yaml
    bbox: [11.0, 45.0, 11.5, 45.3]     # W, S, E, N in degrees; or "11.0,45.0,11.5,45.3"
    dates: 2024-06-01/2024-06-30       # START/END, end inclusive; "today-30d/today" rolls
    out: maps/{name}-{start}-{end}.zarr   # Zarr path or fsspec URL; {name} {start} {end}
    catalog:                           # default: GEOFLOW_STAC_URL, else the sample archive
      url: https://planetarycomputer.microsoft.com/api/stac/v1
      s2_collection: sentinel-2-l2a
      s1_collection: sentinel-1-rtc    # null: optical only
      signer: planetary-computer       # or null: the profile's (Planetary Computer: signed)
      profile: null                    # planetary-computer, earth-search, generic; null: by host
      s1_url: null                     # another STAC API for Sentinel-1 (e.g. Earth Search
                                       # for S2 + Planetary Computer for S1)
    max_cloud: 60                      # % scene cloud cover, S2 only
    model: null                        # checkpoint path; null: the shipped demo weights
    resolution: 10                     # m
    stride: null                       # px; null: the model's patch size
    chunk_patches: null                # patches per chunk side; null: up to 16, balanced
    cluster:
      scheduler: null                  # tcp://HOST:8786; null: a LocalCluster
      workers: 4                       # LocalCluster workers
    retry:                             # geoflow.retry.RetryPolicy; every key optional
      attempts: 4                      # tries per request, chunk read and chunk write
      backoff_s: 1.0                   # before the 2nd attempt, doubling
      timeout_s: 30                    # one HTTP request
      deadline_s: 7200                 # the whole run; default: no limit (a rerun resumes)
      io_threads: null                 # remote reads per chunk; null: 4 (1 for local assets)
    reprocess:                         # only for reprocessing with a new model
      previous: maps/po-valley-v1.zarr # the map made with the old model (kept as is)
      report: maps/po-valley-changes.json

Strings may name environment variables as ``${NAME}`` (e.g. a bucket in a CronJob); an unset
one is an error. Relative paths are relative to the working directory of the run.

Examples
--------
>>> from geoflow.workflow import load_workflow
>>> wf = load_workflow("workflows/demo.yaml")                    # doctest: +SKIP
>>> ds = geoflow.classify_region(*wf.region(), **wf.classify_kwargs())  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from geoflow.errors import GeoflowError, RequestError
from geoflow.retry import SPEC_KEYS, RetryPolicy

_TOP_KEYS = ("name", "bbox", "dates", "out", "catalog", "max_cloud", "model", "resolution",
             "stride", "chunk_patches", "cluster", "retry", "reprocess")
_CATALOG_KEYS = ("url", "s2_collection", "s1_collection", "signer", "profile", "s1_url")
_CLUSTER_KEYS = ("scheduler", "workers")
_REPROCESS_KEYS = ("previous", "report")
_SIGNERS = ("planetary-computer",)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RELATIVE_DAY = re.compile(r"^today(?:\s*-\s*(\d+)\s*d)?$")


@dataclass(frozen=True)
class CatalogSpec:
    """Which STAC API and collections to search (``url=None``: geoflow's default catalog)."""

    url: str | None = None
    s2_collection: str | None = "sentinel-2-l2a"
    s1_collection: str | None = "sentinel-1-rtc"  # None: optical only (no SAR)
    signer: str | None = None
    #: Catalog profile; None: guessed from the URL's host (geoflow.profiles).
    profile: str | None = None
    #: Another STAC API for Sentinel-1 (its s1_collection); None: ``url`` gives both.
    s1_url: str | None = None


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: a scheduler address, or ``None`` for a LocalCluster of ``workers``."""

    scheduler: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class ReprocessSpec:
    """Reprocessing: the map made with the previous model, and where the change report goes."""

    previous: str
    report: str | None = None


@dataclass(frozen=True)
class Workflow:
    """A checked run spec. Build it with :func:`load_workflow` or :meth:`from_dict`.

    ``bbox`` is ``(W, S, E, N)`` in degrees; ``dates`` the ``"START/END"`` string as written
    (relative dates like ``today-30d`` are resolved by :meth:`region`, at run time).
    """

    name: str
    bbox: tuple[float, float, float, float]
    dates: str
    out: str | None = None
    catalog: CatalogSpec = field(default_factory=CatalogSpec)
    max_cloud: float | None = None
    model: str | None = None
    resolution: float = 10.0
    stride: int | None = None
    chunk_patches: int | None = None
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    reprocess: ReprocessSpec | None = None
    source: str = "<dict>"

    # ------------------------------------------------------------------ building

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], *, source: str = "<dict>",
                  default_name: str = "run") -> Workflow:
        """Check a spec (as parsed from YAML) and build the :class:`Workflow`.

        Parameters
        ----------
        spec
            The mapping; see the module docstring for its keys.
        source
            Where it came from, for error messages (a file path).
        default_name
            Name when the spec has none.

        Raises
        ------
        RequestError
            Unknown keys (with the closest known one), missing ``bbox`` or ``dates``, values
            of the wrong type or range, unset ``${VARIABLES}``.

        Examples
        --------
        >>> wf = Workflow.from_dict({"bbox": "11,45,11.1,45.1", "dates": "2024-06-01/2024-06-30"})
        >>> wf.bbox, wf.resolution
        ((11.0, 45.0, 11.1, 45.1), 10.0)
        """
        where = source
        if not isinstance(spec, Mapping):
            raise RequestError(f"{where}: a workflow must be a mapping of keys to values, "
                               f"got {type(spec).__name__}",
                               hint="write 'bbox: ...', 'dates: ...' etc. at the top level")
        spec = _expand_env(dict(spec), where)
        _check_keys(spec, _TOP_KEYS, where, "")
        for key in ("bbox", "dates"):
            if spec.get(key) in (None, ""):
                example = ("bbox: [11.0, 45.0, 11.5, 45.3]   # W, S, E, N in degrees"
                           if key == "bbox" else "dates: 2024-06-01/2024-06-30")
                raise RequestError(f"{where}: '{key}' is missing", hint=f"add e.g. '{example}'")
        from geoflow.request import parse_bbox, parse_dates

        bbox = _wrap(where, "bbox", parse_bbox, spec["bbox"])
        dates = _dates_text(spec["dates"], where)
        today = datetime.now(UTC).date()
        _wrap(where, "dates", parse_dates, _resolve_dates(dates, where, today))

        catalog = _section(spec, "catalog", _CATALOG_KEYS, where)
        signer = _opt_str(catalog, "signer", f"{where}: catalog")
        if "s2_collection" in catalog and catalog["s2_collection"] in (None, ""):
            raise RequestError(f"{where}: catalog s2_collection is null",
                               hint="maps are made per Sentinel-2 date: name the Sentinel-2 "
                                    "L2A collection (only s1_collection may be null)")
        if catalog and _opt_str(catalog, "url", f"{where}: catalog") is None:
            raise RequestError(f"{where}: catalog has {', '.join(sorted(catalog))} but no url",
                               hint="add 'url: <STAC API root>', or drop the catalog section to "
                                    "use GEOFLOW_STAC_URL or the bundled sample archive")
        if signer is not None and signer not in _SIGNERS:
            raise RequestError(f"{where}: catalog signer {signer!r} is not known",
                               hint="use 'planetary-computer' or leave it out (null)")
        profile = _opt_str(catalog, "profile", f"{where}: catalog")
        s1_url = _opt_str(catalog, "s1_url", f"{where}: catalog")
        s1_collection = _collection(catalog, "s1_collection", where)
        if catalog:
            from geoflow.profiles import PROFILES, get_profile

            if profile is not None and profile not in PROFILES:
                raise RequestError(f"{where}: catalog profile {profile!r} is not known",
                                   hint=f"use one of {sorted(PROFILES)} or leave it out (null)")
            prof = get_profile(profile, _opt_str(catalog, "url", f"{where}: catalog"))
            if prof.s1_refusal and s1_url is None and s1_collection is not None:
                if "s1_collection" in catalog:
                    raise RequestError(f"{where}: {prof.s1_refusal}",
                                       hint="add 's1_url: https://planetarycomputer.microsoft."
                                            "com/api/stac/v1' (Sentinel-1 RTC), or set "
                                            "s1_collection: null")
                s1_collection = None  # Sentinel-2 only, unless s1_url says where S1 is
        cluster = _section(spec, "cluster", _CLUSTER_KEYS, where)
        workers = _opt_number(cluster, "workers", f"{where}: cluster", integer=True, low=1)
        retry = RetryPolicy.from_spec(_section(spec, "retry", SPEC_KEYS, where),
                                      where=f"{where}: retry")
        scheduler = _opt_str(cluster, "scheduler", f"{where}: cluster")
        if scheduler is not None and not re.match(r"^[a-z+]+://|^[\w.-]+:\d+$", scheduler):
            raise RequestError(f"{where}: cluster scheduler {scheduler!r} is not an address",
                               hint="use tcp://HOST:8786 (or null for a LocalCluster)")
        reprocess = None
        if spec.get("reprocess") is not None:
            section = _section(spec, "reprocess", _REPROCESS_KEYS, where)
            previous = _opt_str(section, "previous", f"{where}: reprocess")
            if previous is None:
                raise RequestError(f"{where}: reprocess needs 'previous'",
                                   hint="name the store made with the previous model, e.g. "
                                        "'previous: maps/region-v1.zarr'")
            reprocess = ReprocessSpec(previous, _opt_str(section, "report", f"{where}: reprocess"))
            if spec.get("model") in (None, ""):
                raise RequestError(f"{where}: reprocessing needs the new 'model'",
                                   hint="add 'model: path/to/new-checkpoint.safetensors'")

        name = _opt_str(spec, "name", where) or default_name
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise RequestError(f"{where}: name {name!r} may hold only letters, digits, '.', "
                               "'_' and '-'", hint="it is used in file names; e.g. 'po-valley'")
        stride = _opt_number(spec, "stride", where, integer=True, low=1)
        chunk_patches = _opt_number(spec, "chunk_patches", where, integer=True, low=1, high=256)
        resolution = _opt_number(spec, "resolution", where, low=0, low_open=True)
        return cls(
            name=name,
            bbox=bbox,
            dates=dates,
            out=_opt_str(spec, "out", where),
            catalog=CatalogSpec(
                url=_opt_str(catalog, "url", f"{where}: catalog"),
                s2_collection=_collection(catalog, "s2_collection", where),
                s1_collection=s1_collection,
                signer=signer,
                profile=profile,
                s1_url=s1_url,
            ),
            max_cloud=_opt_number(spec, "max_cloud", where, low=0, high=100),
            model=_opt_str(spec, "model", where),
            resolution=10.0 if resolution is None else float(resolution),
            stride=None if stride is None else int(stride),
            chunk_patches=None if chunk_patches is None else int(chunk_patches),
            cluster=ClusterSpec(scheduler=scheduler,
                                workers=None if workers is None else int(workers)),
            retry=retry,
            reprocess=reprocess,
            source=source,
        )

    # ------------------------------------------------------------------ using

    def region(self, today: date | None = None) -> tuple[tuple[float, float, float, float], str]:
        """``(bbox, dates)`` for :func:`geoflow.classify_region`, relative dates resolved.

        Parameters
        ----------
        today
            The day ``today`` means (default: the current UTC date).

        Examples
        --------
        >>> wf = Workflow.from_dict({"bbox": [11, 45, 11.1, 45.1], "dates": "today-6d/today"})
        >>> wf.region(today=date(2024, 6, 30))[1]
        '2024-06-24/2024-06-30'
        """
        today = today or datetime.now(UTC).date()
        return self.bbox, _resolve_dates(self.dates, self.source, today)

    def request(self, today: date | None = None, max_area_km2: float | None = None) -> Any:
        """The :class:`geoflow.request.Request` of this run (validated, area limit included).

        Examples
        --------
        >>> wf = Workflow.from_dict({"bbox": [11, 45, 11.1, 45.1], "dates": "2024-06-01"})
        >>> wf.request().datetime
        '2024-06-01T00:00:00Z/2024-06-01T23:59:59.999999Z'
        """
        from geoflow.request import Request

        bbox, dates = self.region(today)
        return _wrap(self.source, "region", lambda _: Request.from_user(
            bbox, dates, max_cloud=self.max_cloud, max_area_km2=max_area_km2), None)

    def out_path(self, today: date | None = None) -> str | None:
        """``out`` with ``{name}``, ``{start}`` and ``{end}`` (dates as YYYY-MM-DD) filled in.

        Examples
        --------
        >>> Workflow.from_dict({"name": "x", "bbox": [11, 45, 11.1, 45.1],
        ...                     "dates": "2024-06-01/2024-06-30",
        ...                     "out": "maps/{name}-{start}-{end}.zarr"}).out_path()
        'maps/x-2024-06-01-2024-06-30.zarr'
        """
        if self.out is None:
            return None
        start, end = self.region(today)[1].split("/")
        try:
            return self.out.format(name=self.name, start=start[:10], end=end[:10])
        except (KeyError, IndexError, ValueError) as err:
            raise RequestError(f"{self.source}: out {self.out!r} has an unknown placeholder "
                               f"({err})", hint="use only {name}, {start} and {end}") from None

    def catalog_settings(self) -> Any:
        """The catalog as :class:`geoflow.catalog.CatalogSettings` (``{"s2": ..., "s1": ...}``
        with ``s1_url``), or ``None`` (the default).

        ``None`` lets :func:`geoflow.classify_region` pick ``GEOFLOW_STAC_URL`` or the
        bundled sample archive.
        """
        if self.catalog.url is None:
            return None
        from geoflow.catalog import CatalogSettings

        cat = self.catalog
        url = str(self.catalog.url)
        if cat.s1_url is None:
            return CatalogSettings(url, s2_collection=cat.s2_collection,
                                   s1_collection=cat.s1_collection, signer=cat.signer,
                                   profile=cat.profile)
        return {"s2": CatalogSettings(url, s2_collection=cat.s2_collection,
                                      s1_collection=None, signer=cat.signer,
                                      profile=cat.profile),
                "s1": CatalogSettings(cat.s1_url, s2_collection=None,
                                      s1_collection=cat.s1_collection or "sentinel-1-rtc")}

    def classify_kwargs(self, today: date | None = None) -> dict[str, Any]:
        """Keyword arguments for :func:`geoflow.classify_region` (besides bbox and dates).

        Examples
        --------
        >>> wf = Workflow.from_dict({"bbox": [11, 45, 11.1, 45.1], "dates": "2024-06-01",
        ...                          "cluster": {"workers": 2}})
        >>> sorted(wf.classify_kwargs())  # doctest: +NORMALIZE_WHITESPACE
        ['catalog', 'chunk_patches', 'client', 'max_cloud', 'model', 'n_workers', 'out',
         'resolution', 'retry', 'stride']
        """
        return {
            "out": self.out_path(today),
            "catalog": self.catalog_settings(),
            "model": self.model,
            "client": self.cluster.scheduler,
            "n_workers": self.cluster.workers,
            "resolution": self.resolution,
            "stride": self.stride,
            "chunk_patches": self.chunk_patches,
            "max_cloud": self.max_cloud,
            "retry": self.retry,
        }

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what a YAML file would hold), e.g. for store provenance."""
        out = asdict(self)
        out["bbox"] = list(self.bbox)
        out.pop("source")
        if self.reprocess is None:
            out.pop("reprocess")
        return out


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read a YAML run spec and check it.

    Parameters
    ----------
    path
        The ``.yaml`` file.

    Returns
    -------
    Workflow

    Raises
    ------
    RequestError
        The file is missing or is not YAML, or the spec is invalid (see
        :meth:`Workflow.from_dict`); the message names the file.

    Examples
    --------
    >>> wf = load_workflow("workflows/example-region.yaml")   # doctest: +SKIP
    >>> wf.catalog.signer                                      # doctest: +SKIP
    'planetary-computer'
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RequestError(f"workflow file {p} does not exist",
                           hint="pass the path of a .yaml run spec, e.g. workflows/demo.yaml")
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RequestError(f"{p} is not valid YAML{at}: {problem}",
                           hint="check indentation and quoting there") from None
    if spec is None:
        raise RequestError(f"{p} is empty", hint="a workflow needs at least 'bbox' and 'dates'")
    return Workflow.from_dict(spec, source=str(p), default_name=p.stem)


def run_workflow(workflow: Workflow | str | os.PathLike[str], *, client: Any = None,
                 progress: Any = None, today: date | None = None,
                 retry: RetryPolicy | None = None) -> Any:
    """Run a spec: :func:`geoflow.classify_region` with the spec's region, settings and cluster,
    or, with a ``reprocess:`` section, :func:`geoflow.reprocess.reprocess` of the previous map
    with the spec's model into ``out`` (and the change report into ``report``).

    Parameters
    ----------
    workflow
        A :class:`Workflow` or the path of a YAML spec.
    client
        A ``distributed.Client`` (or scheduler address) to run on instead of the spec's
        ``cluster`` section, e.g. one connected to a dask-jobqueue cluster.
    progress
        Passed to :func:`geoflow.classify_region` (e.g. the CLI's progress bar).
    today
        The day relative dates refer to (default: the current UTC date).
    retry
        A retry policy instead of the spec's ``retry:`` section (the CLI's options).

    Returns
    -------
    xarray.Dataset
        The map, as :func:`geoflow.classify_region` returns it (reprocessing: with
        ``changed`` and ``attrs["change_report"]``).

    Examples
    --------
    >>> ds = run_workflow("workflows/demo.yaml")   # doctest: +SKIP
    """
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow)
    kwargs = wf.classify_kwargs(today)
    if client is not None:
        kwargs["client"] = client
    if retry is not None:
        kwargs["retry"] = retry
    if wf.reprocess is not None:
        # The previous map fixes region, dates, grid and inputs: the spec's model, out,
        # catalog (where to fetch the pinned items), cluster and retry apply.
        from geoflow.reprocess import reprocess

        if kwargs["out"] is None:
            raise RequestError(f"{wf.source}: reprocessing needs 'out' for the new map",
                               hint="add e.g. 'out: maps/{name}-{start}-{end}.zarr'")
        return reprocess(wf.reprocess.previous, model=str(wf.model), out=kwargs["out"],
                         report=wf.reprocess.report, catalog=kwargs["catalog"],
                         client=kwargs["client"], n_workers=kwargs["n_workers"],
                         retry=kwargs["retry"], progress=progress)
    from geoflow.regional import classify_region

    bbox, dates = wf.region(today)
    return classify_region(bbox, dates, progress=progress, **kwargs)


# --------------------------------------------------------------------------- helpers


def _check_keys(spec: Mapping[str, Any], allowed: tuple[str, ...], where: str,
                section: str) -> None:
    for key in spec:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            did = f"did you mean '{close[0]}'? " if close else ""
            label = f"{section}.{key}" if section else str(key)
            raise RequestError(f"{where}: unknown key '{label}'",
                               hint=f"{did}known keys{' in ' + section if section else ''}: "
                                    + ", ".join(allowed))


def _section(spec: Mapping[str, Any], key: str, allowed: tuple[str, ...],
             where: str) -> dict[str, Any]:
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(f"{where}: '{key}' must be a mapping, got {value!r}",
                           hint=f"write its keys indented below it: {', '.join(allowed)}")
    _check_keys(value, allowed, where, key)
    return dict(value)


def _opt_str(spec: Mapping[str, Any], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str | Path):
        return str(value)
    raise RequestError(f"{where}: '{key}' must be text, got {value!r}",
                       hint=f"quote it: {key}: \"{value}\"")


def _opt_number(spec: Mapping[str, Any], key: str, where: str, *, integer: bool = False,
                low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not float(value).is_integer()):
        raise RequestError(f"{where}: '{key}' must be {kind}, got {value!r}",
                           hint=f"write e.g. '{key}: {10 if integer else 10.0}' or leave it out")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        rng = (f"{'above' if low_open else 'at least'} {low:g}" if high is None
               else f"from {low:g} to {high:g}")
        raise RequestError(f"{where}: '{key}' is {value!r}, it must be {rng}",
                           hint=f"fix '{key}' or leave it out for the default")
    return value


def _collection(catalog: Mapping[str, Any], key: str, where: str) -> str | None:
    """A collection id; absent: the default; written as null: that sensor is skipped."""
    if key not in catalog:
        return str(getattr(CatalogSpec, key))
    return _opt_str(catalog, key, f"{where}: catalog")


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise RequestError(f"{where}: environment variable {name} is not set "
                                   f"(used in {value!r})",
                                   hint=f"export {name}=... before the run, or write the value")
            return os.environ[name]
        return _ENV.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: _expand_env(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, where) for v in value]
    return value


def _dates_text(value: Any, where: str) -> str:
    """The dates as one 'START/END' string (YAML may hand over date objects or a list)."""
    if isinstance(value, date | datetime):
        value = value.isoformat()
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise RequestError(f"{where}: 'dates' needs a start and an end, got {value!r}",
                               hint="write 'dates: 2024-06-01/2024-06-30'")
        value = "/".join(v.isoformat() if isinstance(v, date | datetime) else str(v)
                         for v in value)
    if not isinstance(value, str):
        raise RequestError(f"{where}: 'dates' must be text like 2024-06-01/2024-06-30, "
                           f"got {value!r}", hint="write 'dates: 2024-06-01/2024-06-30'")
    return value.strip()


def _resolve_dates(dates: str, where: str, today: date) -> str:
    """Replace 'today' / 'today-Nd' ends with ISO dates."""
    parts = dates.split("/")
    out = []
    for part in parts:
        m = _RELATIVE_DAY.match(part.strip())
        if m:
            try:
                out.append((today - timedelta(days=int(m.group(1) or 0))).isoformat())
            except OverflowError:
                raise RequestError(f"{where}: relative date {part.strip()!r} is too far back",
                                   hint="use at most a few thousand days, e.g. today-30d") \
                    from None
        elif part.strip().lower().startswith("today"):
            raise RequestError(f"{where}: relative date {part.strip()!r} is not understood",
                               hint="write 'today' or 'today-<N>d', e.g. today-30d/today")
        else:
            out.append(part.strip())
    return "/".join(out)


def _wrap(where: str, key: str, fn: Any, value: Any) -> Any:
    """Call a geoflow parser, prefixing its error with the spec's file and key."""
    try:
        return fn(value)
    except GeoflowError as err:
        raise RequestError(f"{where}: {key}: {err.message}", hint=err.hint) from None


__all__ = ["CatalogSpec", "ClusterSpec", "ReprocessSpec", "Workflow", "load_workflow",
           "run_workflow"]
