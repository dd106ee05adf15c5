"""Bad inputs and faults, one table: every case must end in a clear error, in bounded time,
without changing any existing output.

Each case names its class (``request``, ``option``, ``catalog``, ``checkpoint``, ``spec``,
``store``, ``export``, ``disk``, ``server``), prepares what it needs in a fresh folder, then
runs one call, either the Python API or the ``geoflow`` command in-process. The harness
checks, for every case:

- the error: the expected :class:`geoflow.GeoflowError` subclass (Python), or the documented
  exit status with a one-line ``error: ... Fix: ...`` and no traceback (CLI);
- that the message names the problem (a regular expression per case) and carries a fix;
- that the call ended within the case's time limit (its deadline, where it sets one);
- that no file under the case's folder changed (sha256 of every file before and after).

Cases that need the bundled STAC API or a Dask scheduler run in the second test function.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _tmpfs import mount_tmpfs, unmount

from geoflow.cli import main as cli_main
from geoflow.errors import (
    CatalogError,
    CheckpointError,
    DeadlineError,
    GeoflowError,
    NoScenesError,
    RequestError,
    StoreDamagedError,
    StoreError,
    StoreMismatchError,
)
from geoflow.grid import GridSpec
from geoflow.retry import RetryPolicy
from geoflow.store import MapStore
from geoflow.tiles import plan_chunks

BBOX = "10.49,54.03,10.52,54.04"  # inside the small sample archive
DATES = "2025-06-01/2025-06-30"
TIMES = pd.to_datetime(["2025-06-03", "2025-06-08"])
GRID = GridSpec(32632, 10.0, 500000.0, 5000000.0, 32 * 4, 32 * 4)


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """One bad input or fault.

    ``run(tmp, world)`` does the call; ``setup(tmp, world)`` (optional) prepares files first,
    outside the timing and before the checksums are taken. ``error`` is an exception class
    for Python calls or an exit status for CLI calls.
    """

    id: str
    kind: str
    run: Callable[[Path, World], Any]
    error: type[BaseException] | int
    match: str
    limit_s: float = 15.0
    setup: Callable[[Path, World], None] | None = None


@dataclass
class World:
    """What the cases share, made once: a finished map store, a COG export of it, a copy of
    the shipped checkpoint, and (for service cases) the STAC API URL."""

    root: Path
    store: Path
    cog: Path
    model: Path
    stac_url: str = ""


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the geoflow command in-process; its exit status, stderr and stdout."""
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            cli_main(argv)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, err.getvalue(), out.getvalue()


def _tree(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def _classify(*args: str) -> tuple[int, str, str]:
    return _cli(["classify", "--bbox", BBOX, "--dates", DATES, "--out", "unused.zarr", *args])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- servers
@contextlib.contextmanager
def _http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Always500(_Quiet):
    def do_GET(self) -> None:
        self._send(500, b'{"detail": "boom"}')

    do_POST = do_GET


class _Garbage(_Quiet):
    def do_GET(self) -> None:
        self._send(200, b"<html>not a STAC API</html>", "text/html")

    do_POST = do_GET


class _Static(_Quiet):
    def do_GET(self) -> None:
        self._send(200, json.dumps({"type": "Catalog", "stac_version": "1.0.0", "id": "static",
                                    "description": "files", "links": []}).encode())


@contextlib.contextmanager
def _silent_server() -> Iterator[str]:
    """Accepts connections (the kernel's backlog) and never answers: a hung API."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _search(url: str, **retry: Any) -> Any:
    from geoflow.catalog import search_scenes
    from geoflow.request import Request

    request = Request.from_user(BBOX, DATES)
    return search_scenes(request, url, retry=RetryPolicy(**{"backoff_s": 0.05, **retry}))


def _with(server: Callable[[], contextlib.AbstractContextManager[str]],
          call: Callable[[str], Any]) -> Callable[[Path, World], Any]:
    def run(tmp: Path, world: World) -> Any:
        with server() as url:
            return call(url)
    return run


def _killed_server(tmp: Path, world: World) -> Any:
    """A real STAC-like server process, killed with SIGKILL before the search."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return _search(f"http://127.0.0.1:{port}", attempts=2)


# --------------------------------------------------------------------------- files
def _write_spec(tmp: Path, text: str) -> Path:
    path = tmp / "spec.yaml"
    path.write_text(text)
    return path


def _spec_case(id_: str, text: str, match: str) -> Case:
    def setup(tmp: Path, world: World) -> None:
        _write_spec(tmp, text)

    def run(tmp: Path, world: World) -> Any:
        from geoflow.workflow import load_workflow

        return load_workflow(tmp / "spec.yaml")
    return Case(id_, "spec", run, RequestError, match, setup=setup)


def _copy_store(tmp: Path, world: World) -> Path:
    dst = tmp / "map.zarr"
    shutil.copytree(world.store, dst)
    return dst


def _damaged(damage: Callable[[Path], None]) -> Callable[[Path, World], None]:
    def setup(tmp: Path, world: World) -> None:
        damage(_copy_store(tmp, world))
    return setup


def _copy_model(tmp: Path, world: World) -> Path:
    for suffix in (".safetensors", ".json"):
        shutil.copy(world.model.with_suffix(suffix), tmp / f"model{suffix}")
    return tmp / "model.safetensors"


def _load_model(tmp: Path, world: World) -> Any:
    from geoflow.model import load

    return load(tmp / "model.safetensors", device="cpu")


def _model_damage(change: Callable[[Path], None]) -> Callable[[Path, World], None]:
    def setup(tmp: Path, world: World) -> None:
        change(_copy_model(tmp, world))
    return setup


class _Exploit:
    """Creates a file if it is ever unpickled: loading must never get that far."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {Path(os.environ.get('TMPDIR', '/tmp')) / 'PWNED'}",))


def _flip(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _full_disk_export(tmp: Path, world: World) -> Any:
    from geoflow.export import export_cog

    return export_cog(world.store, tmp / "disk" / "map.tif")


def _mount_full_disk(tmp: Path, world: World) -> None:
    mount_tmpfs(tmp / "disk", 64, fill=True)


def _other_job(tmp: Path, world: World) -> Any:
    plan = plan_chunks(GRID, 32, 32, 2)
    return MapStore.open_or_create(tmp / "map.zarr", map_grid=plan.map_grid, times=TIMES,
                                   chunk_shape=plan.chunk_shape,
                                   attrs={"request": {"bbox": [1, 2, 3, 4]},
                                          "model_version": "v9"})


def _foreign_dir(tmp: Path, world: World) -> None:
    (tmp / "map.zarr").mkdir()
    (tmp / "map.zarr" / "thesis.tex").write_text("years of work")


def _open_store(tmp: Path, world: World) -> Any:
    return MapStore.open(tmp / "map.zarr")


def _export_to(target: str, *extra: str) -> Callable[[Path, World], Any]:
    def run(tmp: Path, world: World) -> Any:
        return _cli(["export", str(world.store), "--cog", str(tmp / target), *extra])
    return run


def _classify_py(**kw: Any) -> Callable[[Path, World], Any]:
    def run(tmp: Path, world: World) -> Any:
        from geoflow.regional import classify_region

        args = {"bbox": BBOX, "dates": DATES, "out": str(tmp / "out.zarr"), **kw}
        return classify_region(args.pop("bbox"), args.pop("dates"), **args)
    return run


CASES: list[Case] = [
    # ---- requests: before anything is searched, started or written
    Case("bbox-three-values", "request", lambda t, w: _cli(
        ["classify", "--bbox", "1,2,3", "--dates", DATES, "--out", "x.zarr"]), 2,
        "bbox needs 4 values"),
    Case("bbox-west-after-east", "request", _classify_py(bbox="11,45,10,46"), RequestError,
         r"west \(11\.0\) is not less than east"),
    Case("bbox-latitude-95", "request", _classify_py(bbox="10,80,11,95"), RequestError,
         "latitude 95.0 is outside -90..90"),
    Case("bbox-words", "request", _classify_py(bbox="a,b,c,d"), RequestError,
         "bbox west value 'a' is not a number"),
    Case("bbox-nan", "request", _classify_py(bbox=[10, 54, float("nan"), 55]), RequestError,
         "not a finite number"),
    Case("dates-far-future", "request", lambda t, w: _cli(
        ["classify", "--bbox", BBOX, "--dates", "2300-01-01/2300-02-01", "--out", "x.zarr"]), 2,
        "outside the supported range"),
    Case("dates-year-9999", "request", _classify_py(dates="9999-12-31"), RequestError,
         "outside the supported range"),
    Case("dates-reversed", "request", _classify_py(dates="2025-06-30/2025-06-01"), RequestError,
         "is after end"),
    Case("dates-word", "request", _classify_py(dates="June"), RequestError, "not a date"),
    Case("dates-feb-30", "request", _classify_py(dates="2024-02-30"), RequestError,
         "day that does not exist|not a date"),
    Case("area-too-large", "request", _classify_py(bbox="0,40,10,50"), RequestError,
         "more than the limit"),
    Case("max-cloud-word-cli", "request", lambda t, w: _classify("--max-cloud", "abc"), 2,
         "max_cloud 'abc' is not a number"),
    Case("max-cloud-150", "request", _classify_py(max_cloud=150), RequestError,
         "outside 0..100"),
    # ---- options: the same message from the CLI and from Python
    Case("workers-minus-one-cli", "option", lambda t, w: _classify("--workers", "-1"), 2,
         "workers must be a whole number >= 1 and <= 1024, got '-1'"),
    Case("workers-minus-one-python", "option", _classify_py(n_workers=-1), RequestError,
         "workers must be a whole number >= 1 and <= 1024, got -1"),
    Case("workers-zero-cli", "option", lambda t, w: _classify("--workers", "0"), 2,
         "workers must be a whole number >= 1"),
    Case("workers-word-cli", "option", lambda t, w: _classify("--workers", "two"), 2,
         "workers must be a whole number"),
    Case("stride-zero", "option", lambda t, w: _classify("--stride", "0"), 2,
         "stride must be a whole number >= 1"),
    Case("stride-fraction", "option", _classify_py(stride=1.5), RequestError,
         "stride must be a whole number"),
    Case("stride-above-patch", "option", _classify_py(stride=64), RequestError,
         "larger than the model's patch size"),
    Case("chunk-patches-zero", "option", lambda t, w: _classify("--chunk-patches", "0"), 2,
         "chunk patches must be a whole number >= 1"),
    Case("chunk-patches-huge", "option", _classify_py(chunk_patches=10**6), RequestError,
         "chunk patches must be a whole number >= 1 and <= 256"),
    Case("device-tpu", "option", lambda t, w: _classify("--device", "tpu"), 2,
         "device must be one of auto, cpu, cuda"),
    Case("retries-negative", "option", lambda t, w: _classify("--retries", "-1"), 2,
         "retries must be a whole number >= 0"),
    Case("timeout-zero", "option", lambda t, w: _classify("--timeout", "0"), 2,
         "request timeout must be a number of seconds > 0"),
    Case("deadline-negative", "option", lambda t, w: _classify("--deadline", "-5"), 2,
         "deadline must be a number of seconds > 0"),
    Case("deadline-word", "option", lambda t, w: _classify("--deadline", "soon"), 2,
         "deadline must be a number of seconds"),
    Case("io-threads-zero", "option", lambda t, w: _classify("--io-threads", "0"), 2,
         "io threads must be a whole number >= 1"),
    Case("resolution-zero", "option", _classify_py(resolution=0), RequestError,
         "resolution must be a number > 0"),
    Case("crs-geographic", "option", _classify_py(crs=4326), RequestError,
         "4326"),
    Case("retry-mapping-typo", "option", _classify_py(retry={"atempts": 2}), RequestError,
         r"unknown key\(s\) atempts"),
    Case("unknown-cli-option", "option", lambda t, w: _classify("--wrokers", "2"), 2,
         "No such option"),
    Case("export-nothing", "option", lambda t, w: _cli(["export", str(w.store)]), 2,
         "nothing to export"),
    # ---- catalogs that misbehave
    Case("catalog-refused", "catalog", lambda t, w: _search(
        f"http://127.0.0.1:{_free_port()}", attempts=2), CatalogError, "connection refused"),
    Case("catalog-never-answers", "catalog", _with(_silent_server, lambda u: _search(
        u, attempts=2, timeout_s=1)), CatalogError, "timed out|no answer"),
    Case("catalog-never-answers-deadline", "catalog", _with(_silent_server, lambda u: _search(
        u, attempts=5, timeout_s=30, deadline_s=2)), DeadlineError,
        "deadline passed while opening the catalog", limit_s=4),
    Case("catalog-always-500", "catalog", _with(lambda: _http(_Always500), lambda u: _search(
        u, attempts=3)), CatalogError, "HTTP 500 after 2 retries"),
    Case("catalog-not-json", "catalog", _with(lambda: _http(_Garbage), lambda u: _search(
        u, attempts=1)), CatalogError, "opening the catalog"),
    Case("catalog-static", "catalog", _with(lambda: _http(_Static), lambda u: _search(u)),
         CatalogError, "without item search"),
    Case("catalog-password-not-shown", "catalog", lambda t, w: _search(
        f"http://ann:hunter2@127.0.0.1:{_free_port()}", attempts=1), CatalogError,
        r"^(?!.*hunter2).*cannot reach the STAC API at http://127\.0\.0\.1"),
    Case("catalog-password-cli", "catalog", lambda t, w: _cli(
        ["search", "--catalog", f"http://ann:hunter2@127.0.0.1:{_free_port()}", "--bbox", BBOX,
         "--dates", DATES, "--retries", "0"]), 2, r"^(?!.*hunter2).*connection refused"),
    Case("catalog-not-http", "catalog", lambda t, w: _search("ftp://example.org/stac"),
         CatalogError, "is not an http"),
    Case("catalog-server-killed", "server", _killed_server, CatalogError, "connection refused"),
    # ---- checkpoints
    Case("model-missing", "checkpoint", lambda t, w: _cli(
        ["classify", "--bbox", BBOX, "--dates", DATES, "--out", "x.zarr", "--model",
         str(t / "nope.safetensors")]), 2, "nope"),
    Case("model-unknown-registry-name", "checkpoint", lambda t, w: _classify(
        "--model", "nosuchmodel@v9"), 2, "nosuchmodel.*demo"),
    Case("model-truncated", "checkpoint", _load_model, CheckpointError, "truncated|corrupt|read",
         setup=_model_damage(lambda p: p.write_bytes(p.read_bytes()[:1000]))),
    Case("model-tampered", "checkpoint", _load_model, CheckpointError, "checksum",
         setup=_model_damage(lambda p: _flip(p))),
    Case("model-pickle", "checkpoint", _load_model, CheckpointError, "",
         setup=_model_damage(lambda p: p.write_bytes(pickle.dumps(_Exploit())))),
    Case("model-metadata-garbage", "checkpoint", _load_model, CheckpointError, "metadata|JSON",
         setup=_model_damage(lambda p: p.with_suffix(".json").write_text("{not json"))),
    Case("model-other-bands", "checkpoint", _load_model, CheckpointError, "band",
         setup=_model_damage(lambda p: _edit_json(p.with_suffix(".json"), lambda d: d.update(
             bands=["B99"])))),
    # ---- workflow specs
    Case("spec-missing", "spec", lambda t, w: _cli(["run", str(t / "none.yaml")]), 2,
         "does not exist"),
    _spec_case("spec-not-yaml", "bbox: [1, 2\ndates: x", "not valid YAML"),
    _spec_case("spec-python-tag", "bbox: !!python/object/apply:os.system ['touch PWNED']\n"
               "dates: 2025-06-01\n", "not valid YAML"),
    _spec_case("spec-typo", "bbox: [10.49, 54.03, 10.52, 54.04]\ndates: 2025-06-01\n"
               "max_clod: 20\n", "unknown key 'max_clod'"),
    _spec_case("spec-retry-bad", "bbox: [10.49, 54.03, 10.52, 54.04]\ndates: 2025-06-01\n"
               "retry: {deadline_s: -1}\n", "retry: deadline must be a number of seconds > 0"),
    _spec_case("spec-retry-unknown", "bbox: [10.49, 54.03, 10.52, 54.04]\ndates: 2025-06-01\n"
               "retry: {tries: 3}\n", r"retry: unknown key 'retry.tries'|unknown key"),
    _spec_case("spec-unset-variable", "bbox: [10.49, 54.03, 10.52, 54.04]\n"
               "dates: 2025-06-01\nout: ${GEOFLOW_TEST_UNSET_BUCKET}/m.zarr\n",
               "GEOFLOW_TEST_UNSET_BUCKET is not set"),
    _spec_case("spec-workers-zero", "bbox: [10.49, 54.03, 10.52, 54.04]\ndates: 2025-06-01\n"
               "cluster: {workers: 0}\n", "'workers' is 0"),
    _spec_case("spec-relative-date-overflow", "bbox: [10.49, 54.03, 10.52, 54.04]\n"
               "dates: today-99999999999d/today\n", "too far back"),
    # ---- stores damaged in different ways
    Case("verify-chunk-deleted", "store", lambda t, w: _cli(["verify", str(t / "map.zarr")]),
         1, "DAMAGED.*damaged r0_c0: object class/c/0/0/0 is missing",
         setup=_damaged(lambda s: (s / "class/c/0/0/0").unlink())),
    Case("verify-garbage-marker", "store", lambda t, w: _cli(["verify", str(t / "map.zarr")]),
         1, "damaged r0_c0: its done entry is unreadable",
         setup=_damaged(lambda s: (s / "_geoflow_ledger/done/r0_c0.json").write_bytes(
             b"\x00\xffgarbage"))),
    Case("verify-root-json-corrupt", "store", lambda t, w: _cli(
        ["verify", str(t / "map.zarr")]), 1, "metadata: .*zarr.json is not valid JSON",
         setup=_damaged(lambda s: (s / "zarr.json").write_text("{truncated"))),
    Case("open-root-json-corrupt", "store", _open_store, StoreDamagedError,
         "zarr.json is not valid JSON",
         setup=_damaged(lambda s: (s / "zarr.json").write_text("{truncated"))),
    Case("export-root-json-corrupt", "store", lambda t, w: _cli(
        ["export", str(t / "map.zarr"), "--cog", str(t / "out" / "m.tif")]), 2,
        "cannot open the map store",
        setup=_damaged(lambda s: (s / "zarr.json").write_text("{truncated"))),
    Case("open-ledger-corrupt", "store", _open_store, StoreDamagedError, "ledger",
         setup=_damaged(lambda s: (s / "_geoflow_ledger/store.json").write_text("[]"))),
    Case("verify-not-a-store", "store", lambda t, w: _cli(["verify", str(t)]), 2,
         "is not a geoflow map store"),
    Case("store-other-job", "store", _other_job, StoreMismatchError,
         "made for another job",
         setup=lambda t, w: MapStore.open_or_create(
             t / "map.zarr", map_grid=plan_chunks(GRID, 32, 32, 2).map_grid, times=TIMES,
             chunk_shape=(2, 2), attrs={"request": {"bbox": [0, 0, 1, 1]},
                                        "model_version": "v1"})),
    Case("store-foreign-directory", "store", _other_job, StoreError,
         "is not a geoflow map store", setup=_foreign_dir),
    # ---- exports
    Case("export-onto-directory", "export", _export_to("adir"), 2, "is a directory",
         setup=lambda t, w: (t / "adir").mkdir()),
    Case("export-existing-no-overwrite", "export", _export_to("old.tif"), 2,
         "already exists", setup=lambda t, w: shutil.copy(w.cog, t / "old.tif")),
    Case("export-foreign-file-overwrite", "export", _export_to("notes.tif", "--overwrite"), 2,
         "is not a geoflow export",
         setup=lambda t, w: (t / "notes.tif").write_text("not geoflow's")),
    # ---- disk full (a real tmpfs)
    Case("export-disk-full", "disk", _full_disk_export, StoreError,
         "No space left|failed", setup=_mount_full_disk),
]

SERVICE_CASES: list[Case] = [
    Case("unknown-collection", "catalog", lambda t, w: _cli(
        ["search", "--catalog", w.stac_url, "--bbox", BBOX, "--dates", DATES,
         "--s2-collection", "sentinel-2-l3"]), 2, "'sentinel-2-l3' does not exist"),
    Case("no-scenes", "catalog", lambda t, w: _search_dates(w.stac_url, "2024-01-01/2024-01-31"),
         NoScenesError, "no sentinel-2-l2a"),
    Case("scheduler-unreachable", "server", lambda t, w: _cli(
        ["classify", "--bbox", BBOX, "--dates", DATES, "--out", str(t / "m.zarr"),
         "--catalog", w.stac_url, "--scheduler", f"tcp://127.0.0.1:{_free_port()}",
         "--timeout", "2"]), 2, "cannot connect to the Dask scheduler"),
    Case("scheduler-without-workers", "server", lambda t, w: _no_workers(t, w), GeoflowError,
         "no Dask worker joined the scheduler within 2 s", limit_s=30),
]


def _search_dates(url: str, dates: str) -> Any:
    from geoflow.catalog import search_scenes
    from geoflow.request import Request

    return search_scenes(Request.from_user(BBOX, dates), url)


def _no_workers(tmp: Path, world: World) -> Any:
    """A real ``dask scheduler`` process that no worker ever joins."""
    from geoflow.regional import classify_region

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                             "127.0.0.1", "--port", str(port), "--no-dashboard"],
                            cwd=tmp.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        return classify_region(BBOX, DATES, out=str(tmp / "m.zarr"), catalog=world.stac_url,
                               client=f"tcp://127.0.0.1:{port}",
                               retry=RetryPolicy(worker_wait_s=2))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- harness
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from geoflow.export import export_cog
    from geoflow.model import DEFAULT_CHECKPOINT

    root = tmp_path_factory.mktemp("world")
    plan = plan_chunks(GRID, 32, 32, 2)
    store = MapStore.open_or_create(
        root / "map.zarr", map_grid=plan.map_grid, times=TIMES, chunk_shape=plan.chunk_shape,
        attrs={"request": {"bbox": [10.49, 54.03, 10.52, 54.04]}, "model_version": "demo",
               "classes": ["Barren", "Water"], "class_colors": ["#aa9977", "#2255cc"]})
    rng = np.random.default_rng(0)
    for chunk in plan.chunks:
        ys, xs = chunk.out_slices
        cy, cx = ys.stop - ys.start, xs.stop - xs.start
        store.write_chunk(chunk, xr.Dataset({
            name: (("time", "y", "x"), rng.integers(0, 2, (2, cy, cx)).astype("uint8"))
            for name in ("class", "confidence", "sar_weight", "cloud_fraction")} | {
            "summary_class": (("y", "x"), rng.integers(0, 2, (cy, cx)).astype("uint8")),
            "summary_confidence": (("y", "x"), rng.integers(0, 255, (cy, cx)).astype("uint8"))}))
    cog = export_cog(root / "map.zarr", root / "map.tif")
    return World(root=root, store=root / "map.zarr", cog=cog, model=DEFAULT_CHECKPOINT)


def _check(case: Case, tmp: Path, world: World) -> None:
    if case.setup is not None:
        case.setup(tmp, world)
    before, store_before = _tree(tmp), _tree(world.store)
    pwned = Path(os.environ.get("TMPDIR", "/tmp")) / "PWNED"
    pwned.unlink(missing_ok=True)
    t0 = time.monotonic()
    if isinstance(case.error, int):
        code, stderr, stdout = case.run(tmp, world)
        elapsed = time.monotonic() - t0
        assert code == case.error, stderr
        assert "Traceback" not in stderr, stderr
        if case.error == 1 and not stderr:  # a report (verify) on stdout, not an error
            assert _search_re(case.match, stdout), stdout
        else:
            line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
            assert line.startswith("error: ") and "Fix:" in line, stderr
            assert _search_re(case.match, line), line
    else:
        with pytest.raises(case.error) as err:
            case.run(tmp, world)
        elapsed = time.monotonic() - t0
        assert isinstance(err.value, GeoflowError) and err.value.hint, err.value
        assert _search_re(case.match, str(err.value)), str(err.value)
    assert elapsed < case.limit_s, f"took {elapsed:.1f} s, limit {case.limit_s} s"
    assert _tree(tmp) == before, "an existing file changed"
    assert _tree(world.store) == store_before
    assert not pwned.exists(), "code from a file was executed"


def _search_re(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text, re.S) is not None


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}-{c.id}" for c in CASES])
def test_fault(case: Case, tmp_path: Path, world: World) -> None:
    try:
        _check(case, tmp_path, world)
    finally:
        unmount(tmp_path / "disk")


@pytest.mark.parametrize("case", SERVICE_CASES, ids=[f"{c.kind}-{c.id}" for c in SERVICE_CASES])
def test_fault_with_services(case: Case, tmp_path: Path, world: World, stac_url: str) -> None:
    world.stac_url = stac_url
    _check(case, tmp_path, world)
    assert not (tmp_path / "m.zarr").exists(), "a run that got no workers left a store"


def test_verify_reports_what_is_damaged_and_exits_1(tmp_path: Path, world: World) -> None:
    store = _copy_store(tmp_path, world)
    assert _cli(["verify", str(store)])[0] == 0
    (store / "class/c/0/0/0").unlink()
    code, _, out = _cli(["verify", str(store), "--json"])
    assert code == 1
    report = json.loads(out)
    assert not report["ok"] and list(report["damaged"]) == ["r0_c0"]
    assert "class/c/0/0/0 is missing" in report["damaged"]["r0_c0"]
    assert report["verified"] == report["chunks_total"] - 1 == 3


def test_the_table_covers_every_class_with_at_least_60_cases() -> None:
    kinds = {c.kind for c in CASES + SERVICE_CASES}
    assert kinds >= {"request", "option", "catalog", "checkpoint", "spec", "store", "export",
                     "disk", "server"}
    assert len(CASES) + len(SERVICE_CASES) >= 60
