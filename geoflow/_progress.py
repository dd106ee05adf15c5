"""rich progress bars on stderr (so ``--json`` output on stdout stays clean).

:func:`progress_bar` is the one bar layout of geoflow (training stages use it directly);
:class:`RunProgress` is the CLI's ``progress`` callback of
:func:`geoflow.regional.classify_region`: chunks, km², elapsed, ETA, dashboard link.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(*extra: TextColumn, console: Console | None = None,
                 disable: bool = False) -> Progress:
    """Description, bar, done/total, the ``extra`` text columns, then elapsed and ETA.

    Examples
    --------
    >>> with progress_bar(TextColumn("{task.fields[loss]}")) as bar:  # doctest: +SKIP
    ...     t = bar.add_task("epochs", total=10, loss="")
    """
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console or Console(stderr=True), disable=disable)


class RunProgress:
    """Progress callback showing a rich bar; use as a context manager.

    Examples
    --------
    >>> with RunProgress() as bar:  # doctest: +SKIP
    ...     classify_region(bbox, dates, progress=bar)
    """

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._bar = progress_bar(
            TextColumn("chunks  {task.fields[km2]:.1f}/{task.fields[km2_total]:.1f} km²"),
            TextColumn("[red]{task.fields[failed]} failed", justify="right"),
            console=self.console, disable=not enabled)
        self._task: Any = None
        self.failed = 0
        self.km2 = 0.0

    def __enter__(self) -> RunProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "start":
            if self.enabled:
                if event.get("dashboard"):
                    self.console.print(f"Dask dashboard: {event['dashboard']}")
                skipped = event["chunks_total"] - event["chunks_todo"]
                if skipped:
                    self.console.print(f"resuming {event['store']}: {skipped} chunks already done")
            self._task = self._bar.add_task(
                "classifying", total=event["chunks_todo"], km2=0.0,
                km2_total=float(event["km2_todo"]), failed=0)
        elif event.get("event") == "chunk" and self._task is not None:
            if event.get("status") == "failed":
                self.failed += 1
            self.km2 += float(event.get("km2", 0.0))
            self._bar.update(self._task, advance=1, failed=self.failed, km2=self.km2)


__all__ = ["RunProgress", "progress_bar"]
