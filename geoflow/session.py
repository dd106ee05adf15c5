"""Bootstrapping at the edge: the catalog and the Dask client a call runs with when the caller
passed none. The pipeline (:mod:`geoflow.regional`, :mod:`geoflow.catalog`) never creates
either; the CLI, ``geoflow demo`` and a bare notebook call come through here.

The client, in order of precedence:

1. the ``client`` argument: a ``distributed.Client``, or a scheduler address;
2. ``DASK_SCHEDULER_ADDRESS`` (Dask's ``scheduler-address`` setting);
3. the current Dask client (``distributed.get_client()``), e.g. one the notebook made;
4. this Python session's LocalCluster: started on the first call, reused by the next ones
   (a second call costs seconds, not a cluster start), closed when the interpreter exits.

The catalog: the ``catalog`` argument, else ``GEOFLOW_STAC_URL``, else the bundled sample
archive, created if missing and served locally; a server this session started is stopped
when the session ends (:func:`shutdown`, also at interpreter exit).

Dask starts its worker processes by importing the main script again. A script that calls
geoflow at its top level, without ``if __name__ == "__main__":``, would then run again in
each worker: geoflow refuses that in the worker with a clear error, and says what to add when
the workers fail to start because of it.

Examples
--------
>>> from geoflow import session
>>> client = session.get_client()          # doctest: +SKIP
>>> session.get_client() is client         # doctest: +SKIP
True
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import sys
import threading
from pathlib import Path
from typing import Any

from geoflow.errors import GeoflowError, RequestError
from geoflow.retry import Clock

log = logging.getLogger(__name__)

_LOCK = threading.RLock()
#: What this session started and owns: closed by :func:`shutdown`.
_STATE: dict[str, Any] = {"cluster": None, "client": None, "workers": None,
                          "clients": {}, "servers": []}
_GUARD_HINT = ('put the calls under  if __name__ == "__main__":  at the bottom of your '
               "script (Dask's worker processes import the script again, and must not run it)")


# --------------------------------------------------------------------------- the __main__ guard
def _in_reimported_main() -> bool:
    """Whether this process is a child that multiprocessing started by importing the
    parent's main script (Dask's nanny does that to start a worker)."""
    # multiprocessing marks a child as "inheriting" while it imports the parent's main module
    # (the flag behind its own "bootstrapping phase" error); Dask's nanny spawns workers so.
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def check_not_reimported() -> None:
    """Refuse to run in a worker process that is importing the user's script.

    Raises
    ------
    GeoflowError
        Always, when called from such an import; its hint says what to add.
    """
    if _in_reimported_main():
        script = getattr(sys.modules.get("__mp_main__", sys.modules.get("__main__")),
                         "__file__", None) or "your script"
        raise GeoflowError(f"{script} calls geoflow when it is imported, and a Dask worker "
                           "process is importing it", hint=_GUARD_HINT)


def _main_is_a_script() -> str | None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return str(path) if path and not hasattr(sys, "ps1") else None


# --------------------------------------------------------------------------- the client
def _connect(address: str, timeout: float, clock: Clock) -> Any:
    from distributed import Client

    with _LOCK:
        cached = _STATE["clients"].get(address)
        if cached is not None and cached.status == "running":
            return cached
    try:
        cl = Client(address, timeout=clock.cap(timeout), set_as_default=False)
    except (OSError, TimeoutError) as err:
        clock.check(f"connecting to the Dask scheduler at {address}")
        raise GeoflowError(f"cannot connect to the Dask scheduler at {address}: {err}",
                           hint="check the address (tcp://HOST:8786) and that the scheduler "
                                "is running") from None
    with _LOCK:
        _STATE["clients"][address] = cl
    return cl


def _check_address(address: str) -> str:
    import re

    text = address.strip()
    if not (re.match(r"^[a-z][a-z0-9+]*://\S+$", text)
            or re.match(r"^[\w.\-\[\]:]+:\d{1,5}$", text)):
        raise RequestError(f"scheduler address {address!r} is not HOST:PORT",
                           hint="pass e.g. --scheduler tcp://127.0.0.1:8786")
    return text


def _local_cluster(n_workers: int | None, gdal: dict[str, str]) -> Any:
    """This session's LocalCluster, started now or reused; restarted for another size."""
    from geoflow._cluster import new_local_cluster

    n = n_workers or min(os.cpu_count() or 1, 8)
    with _LOCK:
        cl = _STATE["client"]
        if cl is not None and cl.status == "running" and _STATE["workers"] == n:
            return cl
        if cl is not None:
            log.info("restarting the session's LocalCluster with %d workers", n)
            _close_local()
        try:
            cluster, cl = new_local_cluster(n, gdal)
        except Exception as err:
            script = _main_is_a_script()
            if script and "failed to start" in str(err).lower():
                raise GeoflowError(f"Dask could not start its worker processes ({err}); they "
                                   f"import {script} again, which must not run geoflow "
                                   "at import time", hint=_GUARD_HINT) from None
            raise GeoflowError(f"could not start a local Dask cluster: {err}",
                               hint="check free memory and ports, or pass a running "
                                    "scheduler with --scheduler / client=") from None
        _STATE.update(cluster=cluster, client=cl, workers=n)
        return cl


def get_client(client: Any = None, *, n_workers: int | None = None,
               gdal: dict[str, str] | None = None, timeout: float = 30.0,
               clock: Clock | None = None) -> Any:
    """The Dask client a run uses (see the module docstring for the order).

    Parameters
    ----------
    client
        A ``distributed.Client``, a scheduler address, or None.
    n_workers
        Workers of the session's LocalCluster (a different number restarts it).
    gdal
        Environment for new LocalCluster workers (GDAL options).
    timeout
        Seconds to try connecting to a scheduler address (capped by ``clock``).
    clock
        The command's deadline.

    Returns
    -------
    distributed.Client
        Owned by the caller when passed in; otherwise by this session (do not close it).

    Raises
    ------
    GeoflowError
        A scheduler that cannot be reached, a local cluster that cannot start (with the
        ``__main__`` hint where that is why).

    Examples
    --------
    >>> get_client("tcp://127.0.0.1:8786")  # doctest: +SKIP
    <Client: 'tcp://127.0.0.1:8786' processes=2 threads=2, memory=...>
    """
    from distributed import Client

    check_not_reimported()
    if client is not None and not isinstance(client, Client | str):
        raise RequestError(f"client must be a distributed.Client or a scheduler address, got "
                           f"{type(client).__name__}",
                           hint="pass client=Client(...) or 'tcp://HOST:8786', or None")
    if isinstance(client, Client):
        return client
    clock = clock or Clock()
    if isinstance(client, str):
        return _connect(_check_address(client), timeout, clock)
    import dask

    address = dask.config.get("scheduler-address", None) or dask.config.get(
        "scheduler_address", None)
    if address:
        return _connect(_check_address(str(address)), timeout, clock)
    with contextlib.suppress(ValueError):
        from distributed import get_client as current

        return current()
    return _local_cluster(n_workers, gdal or {})


# --------------------------------------------------------------------------- the catalog
def get_catalog(catalog: Any = None) -> Any:
    """The catalog a run searches: ``catalog`` if given, else ``GEOFLOW_STAC_URL``, else the
    bundled sample archive, created if missing and served on 127.0.0.1.

    A URL (given or from ``GEOFLOW_STAC_URL``) gets its catalog profile from its host when it
    is searched (:func:`geoflow.catalog.split_catalogs`): a Planetary Computer URL is signed on
    the workers, an Earth Search URL read with its asset keys.

    A server started here is stopped by :func:`shutdown` (at interpreter exit at the latest);
    one that was already running is left alone.

    Examples
    --------
    >>> get_catalog("http://127.0.0.1:8081")
    'http://127.0.0.1:8081'
    """
    if catalog is not None:
        return catalog
    env = os.environ.get("GEOFLOW_STAC_URL")
    if env:
        return env
    check_not_reimported()
    from geoflow.archive import create_archive, default_archive_dir
    from geoflow.archive.server import ensure_server, running_server

    directory = Path(default_archive_dir())
    if not (directory / "archive.json").exists():
        create_archive(directory)
    was_running = running_server(directory)
    url = ensure_server(directory)
    if not was_running:
        with _LOCK:
            _STATE["servers"].append(directory)
    return url


# --------------------------------------------------------------------------- the end
def _close_local() -> None:
    from geoflow._cluster import close_local_cluster

    cl, cluster = _STATE["client"], _STATE["cluster"]
    _STATE.update(client=None, cluster=None, workers=None)
    if cluster is not None:
        close_local_cluster(cluster, cl)


def shutdown() -> None:
    """Close what this session started: its LocalCluster, its scheduler connections and the
    sample archive servers it started. Safe to call twice; called at interpreter exit.

    Examples
    --------
    >>> shutdown()
    """
    with _LOCK:
        _close_local()
        clients, _STATE["clients"] = dict(_STATE["clients"]), {}
        servers, _STATE["servers"] = list(_STATE["servers"]), []
    for cl in clients.values():
        with contextlib.suppress(Exception):
            cl.close()
    if not servers:  # most sessions never served the sample archive: do not import it at exit
        return
    from geoflow.archive.server import stop_server

    for directory in servers:
        with contextlib.suppress(Exception):
            stop_server(directory)


atexit.register(shutdown)

__all__ = ["check_not_reimported", "get_catalog", "get_client", "shutdown"]
