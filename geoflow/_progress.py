"""Progress of long runs: rich bars in a terminal, a live line in Jupyter.

:func:`progress_bar` is the one bar layout of geoflow (training stages use it directly);
:class:`RunProgress` is the CLI's ``progress`` callback of
:func:`geoflow.regional.classify_region`: chunks, km², elapsed, ETA, dashboard link.
:class:`NotebookProgress` shows the same in a Jupyter cell (one HTML line, updated in place;
no widget library needed), and :func:`auto_progress` picks one for ``progress="auto"``.
"""

from __future__ import annotations

import contextlib
import html
import sys
import time
from collections.abc import Callable, Iterator
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


def _clock(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class NotebookProgress:
    """Progress callback for Jupyter: one line, updated in place through IPython's display.

    Parameters
    ----------
    display
        ``IPython.display.display`` (default), or any function with its ``display_id=True``
        behaviour (returns a handle with ``update``); injectable for tests.

    Examples
    --------
    >>> shown = []
    >>> class Handle:
    ...     def update(self, obj): shown.append(obj.data)
    >>> bar = NotebookProgress(display=lambda obj, display_id: Handle())
    >>> bar({"event": "start", "chunks_total": 4, "chunks_todo": 4, "km2_todo": 8.0,
    ...      "dashboard": "http://127.0.0.1:8787/status"})
    >>> bar({"event": "chunk", "status": "done", "km2": 2.0})
    >>> "1/4 chunks" in shown[-1] and "2.0/8.0 km²" in shown[-1]
    True
    """

    def __init__(self, display: Callable[..., Any] | None = None) -> None:
        self._display = display
        self._handle: Any = None
        self.done = self.total = self.failed = 0
        self.km2 = self.km2_total = 0.0
        self.dashboard: str | None = None
        self._t0 = time.monotonic()

    def _html(self) -> Any:
        elapsed = time.monotonic() - self._t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        link = (f' · <a href="{html.escape(self.dashboard)}" target="_blank">dashboard</a>'
                if self.dashboard else "")
        failed = f' · <span style="color:#c00">{self.failed} failed</span>' if self.failed \
            else ""
        text = (f"<code>classifying {self.done}/{self.total} chunks · {self.km2:.1f}/"
                f"{self.km2_total:.1f} km²{failed} · {_clock(elapsed)} elapsed · ETA "
                f"{_clock(eta) if eta is not None else '-:--:--'}</code>{link}")
        try:
            from IPython.display import HTML

            return HTML(text)
        except ImportError:  # an injected display without IPython (tests)
            class _Html:
                data = text

                def _repr_html_(self) -> str:
                    return text
            return _Html()

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "start":
            self.total = int(event["chunks_todo"])
            self.km2_total = float(event.get("km2_todo", 0.0))
            self.dashboard = event.get("dashboard")
            self._t0 = time.monotonic()
            if self._display is None:
                from IPython.display import display

                self._display = display
            self._handle = self._display(self._html(), display_id=True)
        elif event.get("event") == "chunk":
            self.done += 1
            self.failed += event.get("status") == "failed"
            self.km2 += float(event.get("km2", 0.0))
            if self._handle is not None:
                self._handle.update(self._html())


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (an IPython shell that talks ZMQ)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def check_progress(progress: Any) -> None:
    """Raise :class:`~geoflow.errors.RequestError` unless ``progress`` is a valid choice."""
    if not (callable(progress) or progress is None or progress is False
            or progress is True or progress == "auto"):
        from geoflow.errors import RequestError

        raise RequestError(f"progress must be 'auto', True, False or a callable, got "
                           f"{progress!r}", hint="e.g. progress=True")


@contextlib.contextmanager
def auto_progress(progress: Any) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """The progress callback for ``classify_region(progress=...)``.

    ``"auto"``: a live line in Jupyter, a rich bar when stderr is a terminal, else none;
    ``True``: the same, but a bar even without a terminal; ``False`` / None: none; a callable:
    itself.
    """
    check_progress(progress)
    if callable(progress) or progress is None or progress is False:
        yield progress or None
        return
    if in_notebook():
        yield NotebookProgress()
    elif progress is True or sys.stderr.isatty():
        with RunProgress() as bar:
            yield bar
    else:
        yield None


__all__ = ["NotebookProgress", "RunProgress", "auto_progress", "check_progress", "in_notebook",
           "progress_bar"]
