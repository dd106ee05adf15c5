"""The ``geoflow`` command. Thin: it parses arguments and calls the library.

Every command has ``--help``. Errors raised on purpose (:class:`geoflow.GeoflowError`) are
printed as one line with their fix and exit with status 2; a run with failed chunks exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from geoflow.errors import GeoflowError, RunFailedError

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
) -> None:
    """Write the synthetic Sentinel-2/Sentinel-1 sample archive (COGs + STAC items)."""
    from geoflow.archive import create_archive

    def progress(msg: str) -> None:
        typer.echo(msg, err=True)

    info = create_archive(directory, seed=seed, size=size, overwrite=overwrite,
                          progress=progress)
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

# --------------------------------------------------------------------------- search


@archive_app.command("serve")
def archive_serve_cmd(
    directory: Path = typer.Argument(..., help="Archive directory (from `archive create`)."),
    port: int = typer.Option(0, "--port", help="Port on 127.0.0.1 (0: last used, else free)."),
) -> None:
    """Serve an archive as a STAC API (stac-fastapi-pgstac) plus its COGs, until Ctrl-C."""
    import signal as _signal

    from geoflow.archive.server import serve_archive

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops the server as Ctrl-C does: everything started is shut down. SIGINT is set
    # too, as a shell starts background jobs with it ignored.
    _signal.signal(_signal.SIGTERM, _term)
    _signal.signal(_signal.SIGINT, _term)
    try:
        with serve_archive(directory, port=port) as srv:
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
    max_cloud: float | None = typer.Option(None, "--max-cloud",
                                           help="Largest Sentinel-2 cloud cover, percent."),
    s2_collection: str = typer.Option("sentinel-2-l2a", "--s2-collection",
                                      help="Sentinel-2 L2A collection id."),
    s1_collection: str = typer.Option("sentinel-1-rtc", "--s1-collection",
                                      help="Sentinel-1 collection id."),
    max_area_km2: float | None = typer.Option(None, "--max-area-km2",
                                              help="Raise the bbox area limit (km²)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scenes as JSON only."),
) -> None:
    """List the Sentinel-2 and Sentinel-1 scenes a STAC API has for a bbox and dates."""
    from geoflow.catalog import CatalogSettings, search_scenes
    from geoflow.request import Request

    request = Request.from_user(bbox, dates, max_cloud=max_cloud, max_area_km2=max_area_km2)
    settings = CatalogSettings(catalog, s2_collection=s2_collection, s1_collection=s1_collection)
    rows = search_scenes(request, settings).summary()
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


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Directory for the stage checkpoints."),
    size: str = typer.Option("demo", help="Dataset preset: demo, small or tiny."),
    epochs: int | None = typer.Option(None, help="Epochs for every stage (default: preset's)."),
    seed: int = typer.Option(0, help="Base seed (training areas and initialisation)."),
    patch_size: int = typer.Option(32, "--patch-size", help="Patch side in 10 m pixels."),
    width: int = typer.Option(16, help="Channels of the first encoder stage."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: up to 2)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
) -> None:
    """Train all stages (source, F1 auxiliaries, F2 students); resume an interrupted run."""
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
    model: Path | None = typer.Option(None, "--model",
                                      help="Student checkpoint or train --out directory "
                                      "(default: shipped demo weights)."),
    seed: int = typer.Option(123, help="World seed of the held-out test area."),
    n: int = typer.Option(4000, help="Number of test patches."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON only."),
) -> None:
    """Evaluate source-only, auxiliaries, uniform and IRM students on a held-out area."""
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
    workers: int | None = typer.Option(None, "--workers", help="LocalCluster workers."),
    stride: int | None = typer.Option(None, "--stride", help="Patch step in pixels."),
    max_cloud: float | None = typer.Option(None, "--max-cloud", help="S2 cloud cover limit %."),
    chunk_patches: int | None = typer.Option(None, "--chunk-patches",
                                             help="Patches per chunk side."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the store afresh."),
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON only."),
) -> None:
    """Classify a region over a period into a Zarr map, chunk by chunk on Dask."""
    from geoflow._progress import RunProgress
    from geoflow.regional import classify_region

    with RunProgress(enabled=not as_json) as bar:
        ds = classify_region(bbox, dates, out=out, catalog=catalog, model=model,
                             client=scheduler, n_workers=workers, stride=stride,
                             max_cloud=max_cloud, chunk_patches=chunk_patches,
                             overwrite=overwrite, progress=bar)
    _report_run(ds, out, as_json)


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
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON only."),
) -> None:
    """Run a workflow spec: classify its region into its store; rerun to resume."""
    from geoflow._progress import RunProgress
    from geoflow.workflow import load_workflow, run_workflow

    wf = load_workflow(spec)
    with RunProgress(enabled=not as_json) as bar:
        ds = run_workflow(wf, client=scheduler, progress=bar)
    _report_run(ds, wf.out_path(), as_json)


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
) -> None:
    """Measure end-to-end and model-only throughput, memory and a plain baseline."""
    from geoflow.bench import run_bench

    result = run_bench(n_workers=workers, model=model, log=None if as_json else typer.echo)
    if as_json:
        _print_json(result)
    else:
        for key, value in result.items():
            typer.echo(f"{key:>26}: {value}")
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
    as_json: bool = typer.Option(False, "--json", help="Print the written paths as JSON only."),
) -> None:
    """Export a map layer as a COG with a colour table and/or a PNG quicklook."""
    from geoflow.errors import RequestError
    from geoflow.export import export_cog, quicklook_png

    if cog is None and png is None:
        raise RequestError("nothing to export", hint="pass --cog OUT.tif and/or --png OUT.png")
    when: int | str | None = int(time) if time is not None and time.lstrip("-").isdigit() \
        else time
    written: dict[str, str] = {}
    if cog is not None:
        written["cog"] = str(export_cog(path, cog, variable, time=when))
    if png is not None:
        written["png"] = str(quicklook_png(path, png, variable=variable, time=when))
    if as_json:
        _print_json(written)
    else:
        for kind, where in written.items():
            typer.echo(f"{kind}: {where}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geoflow`` console script."""
    try:
        app(args=argv, standalone_mode=False)
    except RunFailedError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except GeoflowError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as err:
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # click usage errors come through here in standalone_mode=False
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
