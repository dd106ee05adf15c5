"""The ``geoflow`` command. Thin: it parses arguments and calls the library.

Every command has ``--help``. Errors raised on purpose (:class:`geoflow.GeoflowError`) are
printed as one line with their fix and exit with status 2; a run with failed chunks exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path  # noqa: F401  (used by commands below)
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

# --------------------------------------------------------------------------- search

# --------------------------------------------------------------------------- model

# --------------------------------------------------------------------------- mapping


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
