"""The ``geoflow`` command. Thin: it parses arguments and calls the library.

Every command has ``--help``. Numbers are handed to the library as typed, so that a bad value
gets the same message from ``--workers -1`` as from ``n_workers=-1``. Errors are printed as
one line with their fix, without a traceback, and exit with a documented status (the
README's "Errors and exit codes"):

- 0: done;
- 1: finished, but not everything is right: chunks failed (rerun to retry them), or
  ``verify`` found a store damaged or incomplete;
- 2: bad input, configuration or data, or a service that failed (the message says which);
- 3: the deadline (``--deadline``) passed; finished chunks are kept, rerun to resume;
- 70: a bug in geoflow (set ``GEOFLOW_DEBUG=1`` to see the traceback);
- 130: interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from geoflow.errors import GeoflowError, RequestError, strip_secrets
from geoflow.retry import short_error

app = typer.Typer(
    name="geoflow",
    help="Scene-classification maps of whole regions from cloudy Sentinel-2 and Sentinel-1.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
archive_app = typer.Typer(help="Create, inspect and serve the bundled sample archive.",
                          no_args_is_help=True)
app.add_typer(archive_app, name="archive")


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# Options shared by the commands that search or run; their values go to the library as typed.
_PROFILE = typer.Option(None, "--profile", help="Catalog profile: planetary-computer, "
                        "earth-search or generic (default: guessed from the URL's host).")
_S1_CATALOG = typer.Option(None, "--s1-catalog", help="Another STAC API for Sentinel-1 (e.g. "
                           "Planetary Computer's, with Earth Search for Sentinel-2).")
_WORKERS = typer.Option(None, "--workers", help="LocalCluster workers (>= 1).")
_RETRIES = typer.Option(None, "--retries", help="Retries of each request, read and write "
                        "(default 3).")
_TIMEOUT = typer.Option(None, "--timeout", help="Seconds one HTTP request may take (30).")
_DEADLINE = typer.Option(None, "--deadline", help="Seconds the whole command may take "
                         "(default: no limit); a rerun resumes.")
_IO_THREADS = typer.Option(None, "--io-threads", help="Threads per chunk for remote reads.")
_BACKOFF = typer.Option(None, "--backoff", help="Seconds before the first retry, doubling "
                        "(1).")


# --------------------------------------------------------------------------- archive
# (filled in by the archive work: geoflow.archive)


@archive_app.command("create")
def archive_create_cmd(
    directory: Path = typer.Argument(..., help="Directory to write (new or empty)."),
    seed: int = typer.Option(0, "--seed", min=0, help="World seed: same seed, same files."),
    size: str = typer.Option("default", "--size",
                             help="default (2 x 10 km tiles) or small (2 x 2.56 km, tests)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an archive written with other settings."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
    profile: str = typer.Option("generic", "--profile", help="generic (Planetary Computer's "
                                "asset keys) or earth-search (Earth Search v1's keys, "
                                "properties and raster:bands offsets)."),
) -> None:
    """Write the synthetic Sentinel-2/Sentinel-1 sample archive (COGs + STAC items)."""
    from geoflow.archive import create_archive

    def progress(msg: str) -> None:
        typer.echo(msg, err=True)

    info = create_archive(directory, seed=seed, size=size, overwrite=overwrite,
                          progress=progress, profile=profile)
    if as_json:
        _print_json(info)
        return
    typer.echo(f"archive: {directory}  (seed {info['seed']}, size {info['size']})")
    typer.echo(f"bbox:    {info['bbox']}  (EPSG:{info['epsg']} tiles {', '.join(info['tiles'])})")
    typer.echo(f"dates:   {info['datetime']}")
    for coll, n in info["items"].items():
        typer.echo(f"items:   {coll}: {n}")
    typer.echo(f"demo:    --bbox {','.join(str(v) for v in info['demo_bbox'])}")
    typer.echo(f"truth:   {info['truth']}")


@archive_app.command("info")
def archive_info_cmd(
    directory: Path = typer.Argument(..., help="Archive directory (from `archive create`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
) -> None:
    """Show an archive's extent, dates, collections, item counts and truth raster."""
    from geoflow.archive import archive_info

    info = archive_info(directory)
    if as_json:
        _print_json(info)
        return
    for key in ("path", "seed", "size", "epsg", "bbox", "datetime", "collections", "items",
                "tiles", "demo_bbox", "truth"):
        typer.echo(f"{key + ':':13s}{info.get(key)}")

@archive_app.command("stop")
def archive_stop_cmd(
    directory: Path | None = typer.Argument(None, help="Archive directory (default: the one "
                                            "`geoflow demo` uses, $GEOFLOW_ARCHIVE)."),
) -> None:
    """Stop the detached server of an archive (the one a notebook call or `demo` started)."""
    from geoflow.archive import default_archive_dir
    from geoflow.archive.server import stop_server

    path = directory or default_archive_dir()
    typer.echo(f"stopped the server of {path}" if stop_server(path)
               else f"no server was running for {path}")


@archive_app.command("load-maps")
def archive_load_maps_cmd(
    catalog: Path = typer.Argument(..., help="Maps catalog (catalog.json of a maps directory)."),
    directory: Path | None = typer.Argument(None, help="Archive directory whose server is "
                                            "running (default: the one `geoflow demo` uses, "
                                            "$GEOFLOW_ARCHIVE)."),
) -> None:
    """Load maps into an archive's running STAC API, as the geoflow-maps collection."""
    from geoflow.archive import default_archive_dir
    from geoflow.archive.server import load_maps

    path = directory or default_archive_dir()
    n = load_maps(path, catalog)
    typer.echo(f"loaded {n} map(s) from {catalog} into collection geoflow-maps of {path}")

# --------------------------------------------------------------------------- models
# (the local model registry: geoflow.model.registry)
models_app = typer.Typer(help="List, inspect and add model versions (the local registry, "
                         "$GEOFLOW_MODELS).", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _model_line(e: Any) -> str:
    where = "built-in" if e.builtin else f"added {e.added or '?'}"
    return (f"{e.name + (' *' if e.latest and not e.builtin else ''):<20} {e.version:<44} "
            f"{e.checksum[7:19]}  {where}")


@models_app.command("list")
def models_list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the models as JSON only."),
) -> None:
    """List the built-in models and every version in the registry (* = latest)."""
    from geoflow.model.registry import ModelRegistry

    reg = ModelRegistry()
    entries = reg.list()
    if as_json:
        _print_json({"registry": str(reg.root), "models": [e.to_dict() for e in entries]})
        return
    typer.echo(f"registry: {reg.root}")
    for e in entries:
        typer.echo(_model_line(e))


@models_app.command("show")
def models_show_cmd(
    spec: str = typer.Argument(..., help="NAME (latest), NAME@VERSION or NAME@CHECKSUM-PREFIX."),
    as_json: bool = typer.Option(False, "--json", help="Print the model as JSON only."),
) -> None:
    """Show one model version: version, checksum, file, stage, architecture and metrics."""
    from geoflow.model.checkpoint import read_metadata
    from geoflow.model.registry import ModelRegistry

    reg = ModelRegistry()
    e = reg.get(spec)
    meta = read_metadata(e.path)
    versions = [v.version for v in reg.list() if v.name == e.name]
    if as_json:
        _print_json({**e.to_dict(), "versions": versions, "metadata": meta})
        return
    arch = meta["architecture"]
    for key, value in (("model", e.to_dict()["spec"]), ("checksum", e.checksum),
                       ("path", e.path), ("stage", e.stage), ("created", meta.get("created")),
                       ("added", "built-in" if e.builtin else e.added),
                       ("architecture", f"{arch.get('name')} width {arch.get('width')}, "
                        f"{arch.get('n_parameters')} parameters, {meta['patch_size']} px"),
                       ("classes", ", ".join(meta["classes"])), ("metrics", meta.get("metrics")),
                       ("versions", ", ".join(versions))):
        typer.echo(f"{key + ':':14s}{value}")


@models_app.command("add")
def models_add_cmd(
    path: Path = typer.Argument(..., help="Checkpoint (NAME.safetensors) or `train --out` dir."),
    name: str = typer.Option(..., "--name", help="Registry name; the version is the "
                             "checkpoint's own."),
    as_json: bool = typer.Option(False, "--json", help="Print the entry as JSON only."),
) -> None:
    """Verify a checkpoint and copy it into the registry as NAME@VERSION (the new latest)."""
    from geoflow.model.registry import ModelRegistry

    entry, added = ModelRegistry().add(path, name)
    if as_json:
        _print_json({**entry.to_dict(), "added_now": added})
    else:
        typer.echo(f"{'added' if added else 'already there:'} {entry.name}@{entry.version} "
                   f"({entry.checksum[:19]}...) -> {entry.path}")


# --------------------------------------------------------------------------- search


@archive_app.command("serve")
def archive_serve_cmd(
    directory: Path = typer.Argument(..., help="Archive directory (from `archive create`)."),
    port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 (0: last used, else free)."),
    maps: Path | None = typer.Option(None, "--maps", help="Maps catalog (catalog.json) to "
                                     "serve too, as the geoflow-maps collection."),
) -> None:
    """Serve an archive as a STAC API (stac-fastapi-pgstac) plus its COGs, until Ctrl-C."""
    import signal as _signal

    from geoflow.archive.server import load_maps, serve_archive

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops the server as Ctrl-C does: everything started is shut down. SIGINT is set
    # too, as a shell starts background jobs with it ignored.
    _signal.signal(_signal.SIGTERM, _term)
    _signal.signal(_signal.SIGINT, _term)
    try:
        with serve_archive(directory, port=port) as srv:
            if maps is not None:
                # Loaded at each start: the database is rebuilt whenever the archive changes.
                n = load_maps(srv, maps)
                typer.echo(f"maps: {n} from {maps} in collection geoflow-maps")
            typer.echo(f"STAC API: {srv.url}  (assets under {srv.url}/assets/; "
                       f"started in {srv.timings['total']:.1f} s; Ctrl-C stops)", err=False)
            sys.stdout.flush()
            srv.wait()
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)


@app.command("search")
def search_cmd(
    catalog: str = typer.Option(..., "--catalog", help="STAC API URL."),
    bbox: str = typer.Option(..., "--bbox", help="Region as W,S,E,N in degrees."),
    dates: str = typer.Option(..., "--dates", help="Period as START/END (end inclusive)."),
    max_cloud: str | None = typer.Option(None, "--max-cloud",
                                         help="Largest Sentinel-2 cloud cover, percent."),
    s2_collection: str | None = typer.Option(None, "--s2-collection",
                                             help="Sentinel-2 L2A collection id (default: the "
                                                  "profile's, sentinel-2-l2a)."),
    s1_collection: str | None = typer.Option(None, "--s1-collection",
                                             help="Sentinel-1 RTC collection id (default: the "
                                                  "profile's, sentinel-1-rtc)."),
    max_area_km2: str | None = typer.Option(None, "--max-area-km2",
                                            help="Raise the bbox area limit (km²)."),
    retries: str | None = _RETRIES,
    timeout: str | None = _TIMEOUT,
    deadline: str | None = _DEADLINE,
    as_json: bool = typer.Option(False, "--json", help="Print the scenes as JSON only."),
    profile: str | None = _PROFILE,
    s1_catalog: str | None = _S1_CATALOG,
) -> None:
    """List the Sentinel-2 and Sentinel-1 scenes a STAC API has for a bbox and dates."""
    from dataclasses import replace

    from geoflow.catalog import search_scenes, split_catalogs
    from geoflow.request import Request
    from geoflow.retry import RetryPolicy

    request = Request.from_user(bbox, dates, max_cloud=max_cloud,  # type: ignore[arg-type]
                                max_area_km2=max_area_km2)  # type: ignore[arg-type]
    policy = RetryPolicy.from_options(retries=retries, timeout=timeout, deadline=deadline)
    # The catalogs as classify sees them (profiles, one per sensor); then the collections
    # asked for. An explicit --s1-collection on a catalog without usable Sentinel-1 (Earth
    # Search's GRD) is refused by CatalogSettings with the way out, not dropped silently.
    cats = split_catalogs({"s2": catalog, "s1": s1_catalog} if s1_catalog else catalog, profile)
    if s2_collection:
        cats["s2"] = replace(cats["s2"], s2_collection=s2_collection)
    if s1_collection:
        key = "s1" if "s1" in cats else "s2"
        cats[key] = replace(cats[key], s1_collection=s1_collection)
    rows = search_scenes(request, cats, retry=policy).summary()
    if as_json:
        _print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} scenes")
    for col in ("id", "sensor", "datetime", "cloud cover %"):
        table.add_column(col)
    for row in rows:
        cloud = "" if row["cloud_cover"] is None else f"{row['cloud_cover']:.1f}"
        table.add_row(row["id"], row["sensor"], str(row["datetime"]), cloud)
    Console().print(table)

# --------------------------------------------------------------------------- model


def _given(ctx: typer.Context, names: dict[str, str]) -> list[str]:
    """The flags among ``names`` (parameter -> flag) that the user set, not defaulted."""
    given = []
    for name, flag in names.items():
        source = ctx.get_parameter_source(name)
        # by name: typer's click and an installed click may be different modules
        if source is not None and source.name != "DEFAULT":
            given.append(flag)
    return given


def _echo_finetune(report: dict[str, Any]) -> None:
    test, cv = report["test"], report["cv"]
    typer.echo(f"fine-tuned in {report['seconds']:.0f} s -> {report['checkpoint']}")
    typer.echo(f"  trained on {report['train']['patches']} patches "
               f"({report['train']['groups']} groups)")
    if cv is not None:
        typer.echo(f"  cross-validated over {cv['folds']} folds of groups: every patch tested "
                   "by a run that never saw its group")
        rates = {"before": cv["before"], "after (out of fold)": cv["after"]}
    else:
        typer.echo(f"  tested on {test['patches']} patches of {len(test['groups'])} unseen "
                   "groups")
        rates = {"before": test["before"], "after": test["after"]}
    for when, r in rates.items():
        if r is not None:
            clear = r["clear_window_fit"]
            typer.echo(f"  {when:<6} window fit {100 * r['window_fit']:.1f} %"
                       + (f" (clear {100 * clear:.1f} %)" if clear is not None else "")
                       + f", patch fit {100 * r['patch_fit']:.1f} %")


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Directory for the stage checkpoints."),
    size: str = typer.Option("demo", help="Dataset preset: demo, small or tiny."),
    epochs: int | None = typer.Option(None, help="Epochs for every stage (default: preset's)."),
    seed: int = typer.Option(0, help="Base seed (training areas and initialisation)."),
    patch_size: int = typer.Option(32, "--patch-size", help="Patch side in 10 m pixels."),
    width: int = typer.Option(16, help="Channels of the first encoder stage."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: up to 2)."),
    finetune: str | None = typer.Option(None, "--finetune",
                                        help="Instead: adapt a trained student to real labelled "
                                        "patches: 'bigearthnet' (public development set), "
                                        "'bigearthnet:PATH', or a patch-folder CSV file."),
    model: Path | None = typer.Option(None, "--model", help="With --finetune: the student to "
                                      "start from (default: the shipped weights)."),
    classes: str = typer.Option("model", "--classes", help="With --finetune: 'model' (the "
                                "start's classes) or 'ben19' (BigEarthNet's 19 classes)."),
    folds: int = typer.Option(0, "--folds", help="With --finetune: cross-validate over K "
                              "folds of whole groups (each patch tested once, by a run that "
                              "never saw its group), then train on all patches. 0: one test "
                              "split."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
) -> None:
    """Train all stages (source, F1 auxiliaries, F2 students); resume an interrupted run.
    With --finetune: adapt a student to real patches, tested on groups it did not see."""
    if finetune is not None:
        ignored = _given(ctx, {"size": "--size", "patch_size": "--patch-size",
                               "width": "--width"})
        if ignored:
            raise RequestError(f"{', '.join(ignored)} cannot be used with --finetune",
                               hint="fine-tuning keeps the start checkpoint's architecture and "
                                    "patch size and reads the data given to --finetune; drop "
                                    f"{', '.join(ignored)} (or train from scratch without "
                                    "--finetune)")
        from geoflow.model.finetune import FinetuneConfig
        from geoflow.model.finetune import finetune as run_finetune

        fcfg = FinetuneConfig(seed=seed, classes=classes, threads=threads, folds=folds,
                              **({"epochs": epochs} if epochs is not None else {}))
        report = run_finetune(finetune, out, fcfg, start=model, progress=not json_out)
        if json_out:
            _print_json(report)
        else:
            _echo_finetune(report)
        return
    only_finetune = _given(ctx, {"model": "--model", "classes": "--classes", "folds": "--folds"})
    if only_finetune:
        raise RequestError(f"{', '.join(only_finetune)} only apply with --finetune",
                           hint="add --finetune DATA to adapt a trained student, or drop "
                                f"{', '.join(only_finetune)} to train from scratch")
    from geoflow.model.train import TrainConfig, train

    cfg = TrainConfig(size=size, seed=seed, epochs=epochs, patch_size=patch_size, width=width,
                      threads=threads)
    summary = train(out, cfg, progress=not json_out)
    if json_out:
        _print_json(summary)
    else:
        typer.echo(f"trained in {summary['seconds']:.0f} s -> {summary['out']}")
        for name, st in summary["stages"].items():
            typer.echo(f"  {name:<14} val OA {100 * st['val_oa']:.1f} %")


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    model: Path | None = typer.Option(None, "--model",
                                      help="Student checkpoint or train --out directory "
                                      "(default: shipped demo weights)."),
    seed: int = typer.Option(123, help="World seed of the held-out test area."),
    n: int = typer.Option(4000, help="Number of test patches."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    real: str | None = typer.Option(None, "--real",
                                    help="Evaluate on real patches instead: 'bigearthnet' "
                                    "(public samples, fetched once: dev and held-out sets) or "
                                    "'bigearthnet:PATH' (v1 folders, reBEN LMDB + parquet, "
                                    "v1 LMDB)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON only."),
) -> None:
    """Evaluate source-only, auxiliaries, uniform and IRM students on a held-out area, or
    (--real) the student on real BigEarthNet patches."""
    if real is not None:
        ignored = _given(ctx, {"seed": "--seed", "n": "--n"})
        if ignored:
            raise RequestError(f"{', '.join(ignored)} cannot be used with --real",
                               hint="--real evaluates every patch of the real dataset; --seed "
                                    "and --n choose the synthetic test area: drop "
                                    f"{', '.join(ignored)}")
        from geoflow.model.evaluate_real import evaluate_real, format_real

        real_report = evaluate_real(real, model, device=device)
        if json_out:
            _print_json(real_report)
        else:
            typer.echo(format_real(real_report))
        return
    from geoflow.model.evaluate import evaluate, format_table

    report = evaluate(model, seed=seed, n=n, device=device)
    if json_out:
        _print_json(report)
    else:
        typer.echo(format_table(report))

# --------------------------------------------------------------------------- mapping


@app.command("classify")
def classify_cmd(
    bbox: str = typer.Option(..., "--bbox", help="Region as W,S,E,N in degrees."),
    dates: str = typer.Option(..., "--dates", help="Period as START/END (end inclusive)."),
    out: str = typer.Option(..., "--out", help="Zarr store directory; rerun to resume."),
    catalog: str | None = typer.Option(None, "--catalog", help="STAC API URL (default: "
                                       "GEOFLOW_STAC_URL, else the bundled sample archive)."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint (default: demo weights)."),
    scheduler: str | None = typer.Option(None, "--scheduler",
                                         help="Dask scheduler address (default: LocalCluster)."),
    workers: str | None = _WORKERS,
    stride: str | None = typer.Option(None, "--stride", help="Patch step in pixels."),
    max_cloud: str | None = typer.Option(None, "--max-cloud", help="S2 cloud cover limit %."),
    chunk_patches: str | None = typer.Option(None, "--chunk-patches",
                                             help="Patches per chunk side."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    retries: str | None = _RETRIES,
    timeout: str | None = _TIMEOUT,
    deadline: str | None = _DEADLINE,
    io_threads: str | None = _IO_THREADS,
    backoff: str | None = _BACKOFF,
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the store afresh."),
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON only."),
    profile: str | None = _PROFILE,
    s1_catalog: str | None = _S1_CATALOG,
) -> None:
    """Classify a region over a period into a Zarr map, chunk by chunk on Dask.

    The catalog's profile (asset keys, offsets, URL signing) is guessed from its host:
    Planetary Computer URLs are signed on the workers (extra geoflow[planetary-computer]).
    """
    from geoflow._progress import RunProgress
    from geoflow.regional import classify_region

    policy = _policy(retries, timeout, deadline, io_threads, backoff)
    cat: Any = catalog
    if s1_catalog:
        from geoflow import session

        cat = {"s2": session.get_catalog(catalog), "s1": s1_catalog}
    with RunProgress(enabled=not as_json) as bar:
        # The numbers go in as typed: classify_region checks them (same messages as Python).
        ds = classify_region(bbox, dates, out=out, catalog=cat, model=model, profile=profile,
                             client=scheduler, n_workers=workers,  # type: ignore[arg-type]
                             stride=stride, max_cloud=max_cloud,  # type: ignore[arg-type]
                             chunk_patches=chunk_patches,  # type: ignore[arg-type]
                             device=device, overwrite=overwrite, progress=bar, retry=policy)
    _report_run(ds, out, as_json)


def _policy(retries: str | None, timeout: str | None, deadline: str | None,
            io_threads: str | None, backoff: str | None, base: Any = None) -> Any:
    from geoflow.retry import RetryPolicy

    return RetryPolicy.from_options(retries=retries, timeout=timeout, deadline=deadline,
                                    io_threads=io_threads, backoff=backoff, base=base)


def _report_run(ds: Any, out: str | None, as_json: bool) -> None:
    report = dict(ds.attrs["run"])
    report["store"] = out
    if as_json:
        _print_json(report)
    else:
        typer.echo(f"map written to {out}: {report['chunks_computed']} chunks computed, "
                   f"{report['chunks_skipped']} already done, {report['km2']:.1f} km² in "
                   f"{report['seconds']:.1f} s ({report['km2_per_s']:.2f} km²/s)")


@app.command("run")
def run_cmd(
    spec: Path = typer.Argument(..., help="Workflow spec (YAML), e.g. workflows/demo.yaml."),
    scheduler: str | None = typer.Option(None, "--scheduler",
                                         help="Dask scheduler address (overrides the spec)."),
    retries: str | None = _RETRIES,
    timeout: str | None = _TIMEOUT,
    deadline: str | None = _DEADLINE,
    io_threads: str | None = _IO_THREADS,
    backoff: str | None = _BACKOFF,
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON only."),
) -> None:
    """Run a workflow spec: classify its region into its store; rerun to resume.

    Retry options given here override the spec's ``retry:`` section, field by field.
    """
    from geoflow._progress import RunProgress
    from geoflow.workflow import load_workflow, run_workflow

    wf = load_workflow(spec)
    policy = _policy(retries, timeout, deadline, io_threads, backoff, base=wf.retry)
    with RunProgress(enabled=not as_json) as bar:
        ds = run_workflow(wf, client=scheduler, progress=bar, retry=policy)
    _report_run(ds, wf.out_path(), as_json)


# --------------------------------------------------------------------------- reprocess


@app.command("reprocess")
def reprocess_cmd(
    store: str = typer.Argument(..., help="The previous map (path or URL), or a maps "
                                "catalog (catalog.json, or any STAC Catalog .json) to "
                                "reprocess the maps of; only read."),
    model: str = typer.Option(..., "--model", help="The new model's checkpoint."),
    out: str | None = typer.Option(None, "--out", help="One store: the new map's store; "
                                   "rerun to resume."),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="A catalog: the directory "
                                        "for the new stores, their reports, summary.json "
                                        "and catalog.json; rerun to resume."),
    where: list[str] | None = typer.Option(None, "--where", help="A catalog: which maps, "
                                           "model=NAME[@VERSION] and/or bbox=W,S,E,N; "
                                           "repeat it or separate clauses with commas "
                                           "(all must hold). Default: every map."),
    report: Path | None = typer.Option(None, "--report", help="One store: write the change "
                                       "report (JSON) here, and its PNG next to it."),
    catalog: str | None = typer.Option(None, "--catalog", help="STAC API to fetch the pinned "
                                       "items from (default: the one the map recorded)."),
    research: bool = typer.Option(False, "--research", help="Search the catalog again instead "
                                  "of reading the pinned items."),
    scheduler: str | None = typer.Option(None, "--scheduler",
                                         help="Dask scheduler address (default: LocalCluster)."),
    workers: str | None = _WORKERS,
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    retries: str | None = _RETRIES,
    timeout: str | None = _TIMEOUT,
    deadline: str | None = _DEADLINE,
    io_threads: str | None = _IO_THREADS,
    backoff: str | None = _BACKOFF,
    as_json: bool = typer.Option(False, "--json", help="Print the change report (a catalog: "
                                 "the summary) as JSON only."),
) -> None:
    """Map a map's region again with a new model, from the same input items, into a new
    store (the previous one stays as it is), and report what changed.

    Given a maps catalog instead of a store, reprocess every map it selects (--where) on one
    cluster into --out-dir: one store and change report per map, summary.json and a
    catalog.json of the new maps. Maps made by the new model already are skipped; a rerun
    skips finished maps and resumes the others; exit 1 if any map failed.
    """
    from geoflow._progress import RunProgress
    from geoflow.errors import RunFailedError
    from geoflow.reprocess import reprocess, reprocess_catalog

    # A catalog is a local .json (named catalog.json, or a STAC Catalog); a store never is.
    is_catalog = store.endswith(".json") and "://" not in store
    if is_catalog:
        for given, flag, why in ((out, "--out", "each map's new store goes to "
                                  "--out-dir/NAME.zarr"),
                                 (report, "--report", "each map's report goes to "
                                  "--out-dir/NAME-changes.json")):
            if given is not None:
                raise RequestError(f"{flag} is for one store; {store} is a catalog ({why})",
                                   hint=f"geoflow reprocess {store} --model MODEL "
                                        "--out-dir DIR [--where model=NAME@VERSION]")
        if out_dir is None:
            raise RequestError(f"reprocessing the maps of catalog {store} needs --out-dir",
                               hint=f"geoflow reprocess {store} --model MODEL --out-dir DIR "
                                    "[--where model=NAME@VERSION]")
    else:
        for catalog_only, flag in ((out_dir is not None, "--out-dir"),
                                   (bool(where), "--where")):
            if catalog_only:
                raise RequestError(f"{flag} is for a maps catalog (CATALOG.json); {store} is "
                                   "one store", hint=f"geoflow reprocess {store} --model MODEL "
                                                     "--out NEW_STORE")
        if out is None:
            raise RequestError(f"reprocessing the store {store} needs --out (the new store)",
                               hint=f"geoflow reprocess {store} --model MODEL --out NEW_STORE; "
                                    "or give a CATALOG.json with --out-dir")

    policy = _policy(retries, timeout, deadline, io_threads, backoff)
    if is_catalog:
        assert out_dir is not None  # checked above
        try:
            with RunProgress(enabled=not as_json) as bar:
                summary = reprocess_catalog(store, model=model, out_dir=out_dir, where=where,
                                            client=scheduler, stac_catalog=catalog,
                                            research=research,
                                            n_workers=workers,  # type: ignore[arg-type]
                                            device=device, progress=bar, retry=policy)
        except RunFailedError:
            # Some maps failed: show what was done too, then exit 1 through main().
            path = out_dir / "summary.json"
            if path.is_file():
                _print_catalog_summary(json.loads(path.read_text()), as_json)
            raise
        _print_catalog_summary(summary, as_json)
        return

    assert out is not None  # checked above
    with RunProgress(enabled=not as_json) as bar:
        ds = reprocess(store, model=model, out=out, report=report, catalog=catalog,
                       research=research, client=scheduler,
                       n_workers=workers,  # type: ignore[arg-type]
                       device=device, progress=bar, retry=policy)
    rep = ds.attrs["change_report"]
    if as_json:
        _print_json(rep)
        return
    _report_run(ds, out, False)
    frac = rep["changed_fraction"]
    typer.echo(f"changed: {rep['changed_pixels']} of {rep['compared_pixels']} summary pixels "
               f"({100 * (frac or 0):.2f} %), model {rep['previous_model']['version']} -> "
               f"{rep['model']['version']}")
    if report is not None:
        typer.echo(f"report:  {report}")
    if rep.get("png"):
        typer.echo(f"png:     {rep['png']}")


def _print_catalog_summary(summary: dict[str, Any], as_json: bool) -> None:
    """The archive summary of ``reprocess CATALOG.json``: JSON, or one line per map."""
    if as_json:
        _print_json(summary)
        return
    for row in summary["maps"]:
        frac = row.get("changed_fraction")
        detail = (f"{100 * frac:.2f} % changed -> {row['out']}" if frac is not None
                  else row.get("reason") or "")
        typer.echo(f"{row['status']:8} {row['id']}: {detail}")
    c = summary["counts"]
    typer.echo(f"{c['done']} done, {c['skipped']} skipped, {c['failed']} failed of "
               f"{c['selected']} maps; summary: {summary['out_dir']}/summary.json")


@app.command("demo")
def demo_cmd(
    workers: int | None = typer.Option(None, "--workers", help="LocalCluster workers."),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Where to write the map "
                                        "(default: next to the archive)."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint (default: demo weights)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
) -> None:
    """Run the whole job on the bundled sample archive and report throughput and accuracy."""
    from geoflow._progress import RunProgress
    from geoflow.demo import run_demo

    with RunProgress(enabled=not as_json) as bar:
        result = run_demo(n_workers=workers, out_dir=out_dir, model=model, progress=bar,
                          log=None if as_json else typer.echo)
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"map:       {result['store']}\nquicklook: {result['png']}\n"
                   f"{result['km2']:.1f} km² in {result['seconds']:.1f} s = "
                   f"{result['km2_per_s']:.2f} km²/s; map accuracy vs truth "
                   f"{result['map_accuracy']:.3f}")


@app.command("bench")
def bench_cmd(
    workers: int | None = typer.Option(None, "--workers", help="LocalCluster workers."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint (default: demo weights)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON only."),
    storage: bool = typer.Option(False, "--storage", help="Instead: the demo region written to "
                                 "local disk and to a local S3 server (moto), km^2/s each."),
    cluster: bool = typer.Option(False, "--cluster", help="Instead: a notebook's first and "
                                 "second call, and a dask-scheduler cluster vs LocalCluster."),
    device: str | None = typer.Option(None, "--device", help="Instead: check a device (cuda, "
                                      "or cpu, its twin): the student's patches/s per batch "
                                      "size and the demo region on one device worker."),
    batch_sizes: str | None = typer.Option(None, "--batch-sizes", help="With --device: "
                                           "comma-separated (default 256,...,8192 on a GPU)."),
    read_threads: int | None = typer.Option(None, "--read-threads", help="With --device: "
                                            "chunks read at once (default cores - 1)."),
    compile_model: bool | None = typer.Option(None, "--compile/--no-compile", help="With "
                                              "--device: try torch.compile (default: on GPUs)."),
    stages: Path | None = typer.Option(None, "--stages", help="With --device: rewrite this "
                                       "JSON file with the figures so far after each stage "
                                       "(kept if the run is stopped)."),
) -> None:
    """Measure throughput (end to end, read only, model only), the read path's CPU against
    stackstac, overhead, memory and a plain baseline; or check a GPU (--device)."""
    from geoflow.bench import run_bench, run_cluster_bench, run_storage_bench

    log = None if as_json else typer.echo
    if device is not None:
        from geoflow._device_bench import run_device_bench

        try:
            sizes = [int(v) for v in batch_sizes.split(",")] if batch_sizes else None
        except ValueError:
            raise RequestError(f"--batch-sizes {batch_sizes!r} is not a list of integers",
                               hint="pass e.g. --batch-sizes 256,1024,4096") from None
        from geoflow._jsonfile import write_json

        def save(figures: dict[str, Any]) -> None:
            if stages is not None:  # replaced whole: a reader never sees half a file
                write_json(stages, figures, indent=2, default=str)

        result = run_device_bench(device, batch_sizes=sizes, read_threads=read_threads,
                                  compile=compile_model, model=model, log=log, on_stage=save)
        _print_json(result)
        return
    run = run_storage_bench if storage else run_cluster_bench if cluster else run_bench
    result = run(n_workers=workers, model=model, log=log)
    if as_json:
        _print_json(result)
        return
    for key, value in result.items():
        typer.echo(f"{key:>26}: {value}")
    if "worker_hours_per_100k_km2" in result:
        hours = result["worker_hours_per_100k_km2"] * 3.576
        typer.echo(f"Germany (357,600 km^2) for one month: about {hours:.0f} worker-hours at "
                   f"this rate, {hours / 64:.1f} h on 64 such workers.")


@app.command("export")
def export_cmd(
    path: Path = typer.Argument(..., help="Map store (Zarr) written by `geoflow classify`."),
    cog: Path | None = typer.Option(None, "--cog", help="Write this Cloud-Optimised GeoTIFF."),
    png: Path | None = typer.Option(None, "--png", help="Write a quicklook PNG with legend."),
    variable: str = typer.Option("summary_class", "--variable",
                                 help="Layer: summary_class, class, confidence, sar_weight, "
                                      "cloud_fraction."),
    time: str | None = typer.Option(None, "--time", help="Date index or date for per-date "
                                    "layers (default the first)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an earlier geoflow export at the same path "
                                        "(never any other file)."),
    as_json: bool = typer.Option(False, "--json", help="Print the written paths as JSON only."),
) -> None:
    """Export a map layer as a COG with a colour table and/or a PNG quicklook."""
    from geoflow.export import export_cog, quicklook_png

    if cog is None and png is None:
        raise RequestError("nothing to export", hint="pass --cog OUT.tif and/or --png OUT.png")
    when: int | str | None = int(time) if time is not None and time.lstrip("-").isdigit() \
        else time
    written: dict[str, str] = {}
    if cog is not None:
        written["cog"] = str(export_cog(path, cog, variable, time=when, overwrite=overwrite))
    if png is not None:
        written["png"] = str(quicklook_png(path, png, variable=variable, time=when,
                                           overwrite=overwrite))
    if as_json:
        _print_json(written)
    else:
        for kind, where in written.items():
            typer.echo(f"{kind}: {where}")


@app.command("verify")
def verify_cmd(
    path: str = typer.Argument(..., help="Map store (path or URL) to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON only."),
) -> None:
    """Check a map store against its ledger without changing it; exit 1 if it is damaged or
    incomplete (rerunning the command that made it repairs it)."""
    from geoflow.store import verify_store

    report = verify_store(path)
    if as_json:
        _print_json(report)
    else:
        state = ("complete" if report["complete"] else "incomplete" if report["ok"]
                 else "DAMAGED")
        total = report["chunks_total"]
        typer.echo(f"{report['store']}: {state}; {report['verified']}"
                   f"{f' of {total}' if total is not None else ''} chunks verified")
        for problem in report["metadata"]:
            typer.echo(f"  metadata: {problem}")
        for cid, reason in sorted(report["damaged"].items()):
            typer.echo(f"  damaged {cid}: {reason}")
        if report["missing"]:
            shown = ", ".join(report["missing"][:10])
            more = len(report["missing"]) - 10
            typer.echo(f"  not done: {shown}{f' and {more} more' if more > 0 else ''}")
        for cid, reason in sorted(report["failed"].items()):
            typer.echo(f"  failed {cid}: {reason}")
    if not report["complete"]:
        raise typer.Exit(1)


def _usage_error(err: Exception) -> int | None:
    """Print a command-line usage error (click's, or typer's own copy of click's); its
    status, or None if ``err`` is not one."""
    if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
        return None
    param = getattr(err, "param", None)
    names = getattr(param, "opts", None) or [getattr(param, "name", None)]
    where = f"{names[0]}: " if param is not None and names[0] else ""
    typer.echo(f"error: {where}{strip_secrets(err.format_message())}. Fix: see "
               "`geoflow COMMAND --help`", err=True)
    return int(err.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geoflow`` console script; see the module docstring for the exit
    statuses."""
    try:
        # Without standalone mode, click hands back typer.Exit's status instead of exiting.
        status = app(args=argv, standalone_mode=False)
        if isinstance(status, int) and status:
            sys.exit(status)
    except GeoflowError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except (typer.Exit, SystemExit) as err:
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:
        status = _usage_error(err)  # click usage errors arrive here with standalone_mode=False
        if status is not None:
            sys.exit(status)
        if os.environ.get("GEOFLOW_DEBUG"):
            raise
        typer.echo(f"error: internal error in geoflow: {short_error(err)}. "
                   "Fix: this is a bug; rerun with GEOFLOW_DEBUG=1 for the traceback and "
                   "report it", err=True)
        sys.exit(70)
    finally:
        # The command's LocalCluster and the servers it started end with it, in order (not
        # in the interpreter's exit handlers, where Dask's teardown is noisy).
        from geoflow import session

        session.shutdown()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
