"""A real STAC API for the bundled archive: stac-fastapi-pgstac on a private PostgreSQL.

:func:`serve_archive` keeps a PostgreSQL + PostGIS cluster next to the archive (``DIR/db``),
installs pgstac into it, loads the archive's collections and items with their asset hrefs
rewritten to ``http://127.0.0.1:PORT/assets/...``, and runs ONE uvicorn process that serves
both the STAC API and the COG files (with HTTP range requests) on 127.0.0.1. Everything it
starts is stopped by :meth:`ArchiveServer.stop`, on leaving the ``with`` block, on Ctrl-C and
on SIGTERM, also when starting fails half way; when the serving process is killed outright
(SIGKILL), a small watchdog process stops them within a couple of seconds. The HTTP server
connects as ``geoflow_api``, a login role with pgstac's read rights only; loading keeps the
superuser. The cluster stays on disk, so serving an archive that was served before takes
about a second.

:func:`ensure_server` returns the URL of a running server for an archive, starting a detached
one when there is none (``DIR/server.json`` records ``url`` and ``pid``); :func:`stop_server`
stops it. :func:`load_maps` (from :mod:`geoflow.archive._maps`) adds a maps catalog to a
running server's database as the ``geoflow-maps`` collection.

PostgreSQL refuses to run as root: as root, its programs run as the ``postgres`` user through
``runuser``. When ``postgres`` cannot reach ``DIR`` (say it is under ``/root``, mode 0700),
the cluster lives in ``/var/tmp/geoflow-pg/<hash of DIR>`` instead, and that is logged.

Examples
--------
>>> from geoflow.archive.server import serve_archive
>>> with serve_archive("~/.cache/geoflow/archive") as srv:  # doctest: +SKIP
...     print(srv.url)
http://127.0.0.1:41237
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import posixpath
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from geoflow.archive._maps import MapCatalogError, load_maps
from geoflow.errors import ArchiveError, ServerError

log = logging.getLogger(__name__)

#: Where Debian/Ubuntu install PostgreSQL's programs; the newest version found is used.
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: Environment variable naming a directory with ``initdb``, ``pg_ctl`` and ``postgres``.
PG_BIN_ENV = "GEOFLOW_PG_BIN"
#: Parent of the cluster directories used when ``postgres`` cannot reach the archive.
FALLBACK_ROOT = Path("/var/tmp/geoflow-pg")
#: The file in the archive directory that names the running server (``url``, ``pid``).
SERVER_FILE = "server.json"

_SETUP_HINT = "run deploy/local/setup.sh (it installs PostgreSQL and PostGIS)"
_HOST = "127.0.0.1"
_DATABASE = "geoflow"
_PG_USER = "postgres"
# The login role the HTTP server connects as: pgstac_read rights only (pgstac grants that role
# SELECT on its tables, EXECUTE on search and the INSERT/UPDATE that search needs on its
# searches/search_wheres/format_item_cache tables; search also makes TEMP tables). Loading
# (migrate, load) keeps the superuser, whose password the HTTP server never sees.
_API_ROLE = "geoflow_api"
_API_GRANT = "pgstac_read"
# Settings for a small private cluster on a shared machine. The database is a cache that is
# rebuilt from the archive, so commits need not wait for the disk.
_PG_CONF = """
# --- geoflow: a private cluster serving one archive on 127.0.0.1 only
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 30
shared_buffers = 32MB
synchronous_commit = off
log_min_messages = warning
# 1 MB WAL segments (initdb --wal-segsize=1): a cluster takes ~40 MB on disk, not ~72 MB.
min_wal_size = 2MB
max_wal_size = 16MB
"""


# --------------------------------------------------------------------------- small helpers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive: it only waits to be reaped.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` is a STAC API landing page."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and "stac_version" in body


def _scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of ``password`` (what ``\\password`` sends).

    ``CREATE/ALTER ROLE ... PASSWORD`` given a verifier stores it as is: the password itself
    never reaches the server, so it cannot show in its log (a failed statement is logged).
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return (f"SCRAM-SHA-256${iterations}:{b64(salt)}$"
            f"{b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _check_archive(archive: Path) -> None:
    if not archive.is_dir():
        raise ArchiveError(f"archive directory {archive} does not exist",
                           hint=f"create it with `geoflow archive create {archive}`")
    missing = [name for name in ("archive.json", "collections", "items", "assets")
               if not (archive / name).exists()]
    if missing:
        raise ArchiveError(f"{archive} is not a geoflow archive (missing {', '.join(missing)})",
                           hint=f"create it with `geoflow archive create {archive}`, or pass "
                                "the directory that holds archive.json")
    if not list((archive / "items").glob("*.ndjson")):
        raise ArchiveError(f"{archive}/items holds no *.ndjson item files",
                           hint=f"re-create the archive with `geoflow archive create {archive}`")


def _fingerprint(archive: Path) -> str:
    """Hash of what is loaded into the database (not the assets, which are served live)."""
    h = hashlib.sha256()
    files = [archive / "archive.json", *sorted((archive / "collections").glob("*.json")),
             *sorted((archive / "items").glob("*.ndjson"))]
    for f in files:
        h.update(f.relative_to(archive).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    try:
        from pypgstac import __version__ as pgstac_version
    except ImportError:  # pragma: no cover - checked before
        pgstac_version = "?"
    h.update(pgstac_version.encode())
    return h.hexdigest()


def _find_pg_bin() -> Path:
    env = os.environ.get(PG_BIN_ENV)
    if env:
        candidates = [Path(env)]
    else:
        import glob

        def version(p: str) -> tuple[int, ...]:
            part = Path(p).parent.name
            return tuple(int(x) for x in part.split(".") if x.isdigit()) or (0,)

        candidates = [Path(p) for p in sorted(glob.glob(PG_BIN_GLOB), key=version, reverse=True)]
    for cand in candidates:
        if all((cand / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return cand
    where = env or PG_BIN_GLOB
    raise ServerError(f"PostgreSQL is not installed (no initdb, pg_ctl and postgres in {where})",
                      hint=f"{_SETUP_HINT}, or set {PG_BIN_ENV} to the directory holding them")


def _check_postgis(pg_bin: Path) -> None:
    sharedir: Path | None = None
    if (pg_bin / "pg_config").is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([str(pg_bin / "pg_config"), "--sharedir"], check=True,
                                 capture_output=True, text=True, timeout=30).stdout.strip()
            sharedir = Path(out)
    if sharedir is None:
        sharedir = Path("/usr/share/postgresql") / pg_bin.parent.name
    if not (sharedir / "extension" / "postgis.control").is_file():
        raise ServerError(f"PostGIS is not installed for the PostgreSQL in {pg_bin} "
                          f"(no {sharedir}/extension/postgis.control)",
                          hint=f"{_SETUP_HINT}; on Debian: apt-get install "
                               f"postgresql-{pg_bin.parent.name}-postgis-3")


def _check_python_deps() -> None:
    missing = []
    for mod in ("stac_fastapi.pgstac", "pypgstac", "uvicorn", "psycopg"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ServerError(f"the STAC server's Python packages are missing ({', '.join(missing)})",
                          hint="pip install 'geoflow[server]' (deploy/local/setup.sh does)")


def _postgres_ids() -> tuple[int, int]:
    import pwd

    try:
        pw = pwd.getpwnam(_PG_USER)
    except KeyError:
        raise ServerError("running as root, but there is no 'postgres' user to run PostgreSQL",
                          hint=f"{_SETUP_HINT} (the postgresql package creates the user), "
                               "or run geoflow as an ordinary user") from None
    if shutil.which("runuser") is None:
        raise ServerError("running as root, but `runuser` (util-linux) is missing",
                          hint="install util-linux, or run geoflow as an ordinary user")
    return pw.pw_uid, pw.pw_gid


def _as_postgres() -> bool:
    return os.geteuid() == 0


def _postgres_can_use(archive: Path) -> bool:
    """Whether the postgres user can reach and write ``archive/db``."""
    if not _as_postgres():
        return os.access(archive, os.W_OK | os.X_OK)
    if not os.access(archive, os.W_OK):
        return False
    probe = subprocess.run(["runuser", "-u", _PG_USER, "--", "test", "-x", str(archive)],
                           check=False, capture_output=True, cwd="/", timeout=30)
    return probe.returncode == 0


def cluster_dir(archive: str | os.PathLike[str]) -> Path:
    """Where the PostgreSQL cluster for ``archive`` lives (``DIR/db`` or a fallback).

    Examples
    --------
    >>> cluster_dir("/srv/archive")  # doctest: +SKIP
    PosixPath('/srv/archive/db')
    """
    archive = Path(archive).expanduser().resolve()
    if _postgres_can_use(archive):
        return archive / "db"
    digest = hashlib.sha256(str(archive).encode()).hexdigest()[:16]
    base = FALLBACK_ROOT if os.geteuid() == 0 else Path(f"{FALLBACK_ROOT}-{os.geteuid()}")
    return base / digest


def _gc_fallback_clusters(keep: Path) -> None:
    """Remove fallback clusters whose archive is gone (tests make many short-lived ones)."""
    base = keep.parent
    if not base.is_dir():
        return
    for root in base.iterdir():
        if root == keep or not root.is_dir():
            continue
        try:
            state = json.loads((root / "state.json").read_text())
            owner = Path(state["archive"])
        except (OSError, ValueError, KeyError):
            continue
        if owner.exists():
            continue
        with open(root / "lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use right now
            pid_file = root / "pgdata" / "postmaster.pid"
            if pid_file.exists():
                with contextlib.suppress(OSError, ValueError):
                    if _pid_alive(int(pid_file.read_text().split()[0])):
                        continue
            log.info("removing the PostgreSQL cluster of deleted archive %s (%s)", owner, root)
            shutil.rmtree(root, ignore_errors=True)


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((_HOST, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ServerError(f"port {port} on {_HOST} is already in use",
                              hint="pass another port (--port), or 0 to pick a free one; "
                                   f"`ss -ltnp 'sport = :{port}'` shows who holds it") from None
        raise ServerError(f"cannot listen on {_HOST}:{port}: {err.strerror}",
                          hint="pass another port (--port), or 0 to pick a free one") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((_HOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ServerError("no free TCP port on 127.0.0.1", hint="free some ports and retry")


def _rewrite_href(href: str, archive: Path, base_url: str) -> str:
    if "://" in href or href.startswith("/"):
        return href
    rel = posixpath.normpath(href)
    if rel.startswith("assets/"):
        return f"{base_url}/{rel}"
    # Only DIR/assets is served over HTTP (never DIR itself: DIR/db holds the DB password).
    return (archive / rel).resolve().as_uri()


def _rewrite(obj: dict[str, Any], archive: Path, base_url: str) -> dict[str, Any]:
    for asset in (obj.get("assets") or {}).values():
        if isinstance(asset, dict) and isinstance(asset.get("href"), str):
            asset["href"] = _rewrite_href(asset["href"], archive, base_url)
    return obj


def _iter_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as err:
                    raise ArchiveError(f"{path} line {n} is not JSON: {err}",
                                       hint="re-create the archive") from None


# --------------------------------------------------------------------------- the server


class ArchiveServer:
    """A running STAC API + asset server for one archive (see :func:`serve_archive`).

    Attributes
    ----------
    url
        STAC API root, ``"http://127.0.0.1:PORT"`` (no trailing slash).
    archive
        The archive directory.
    cluster
        The PostgreSQL cluster directory (``archive/db`` or a fallback).
    timings
        Seconds spent per start-up step (``initdb``, ``postgres``, ``migrate``, ``load``,
        ``http``, ``total``); steps that were not needed are absent.

    Examples
    --------
    >>> srv = ArchiveServer("~/.cache/geoflow/archive").start()  # doctest: +SKIP
    >>> srv.url  # doctest: +SKIP
    'http://127.0.0.1:41237'
    >>> srv.stop()  # doctest: +SKIP
    """

    def __init__(self, archive: str | os.PathLike[str], port: int = 0, *,
                 startup_timeout: float = 60.0) -> None:
        self.archive = Path(archive).expanduser().resolve()
        self.port = int(port)
        if not 0 <= self.port <= 65535:
            raise ServerError(f"port {port} is not a TCP port",
                              hint="pass a port in 1..65535, or 0 to pick a free one")
        self.startup_timeout = startup_timeout
        self.url = ""
        self.cluster = Path()
        self.timings: dict[str, float] = {}
        self._pg_bin = Path()
        self._lock_fh: Any = None
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watch_fd: int | None = None
        self._pg_running = False
        self._stopped = False
        self._old_sigterm: Any = None
        self._state: dict[str, Any] = {}
        self._stop_lock = threading.Lock()

    # -- context manager
    def __enter__(self) -> ArchiveServer:
        if not self.url:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ArchiveServer({str(self.archive)!r}, url={self.url!r})"

    # -- paths
    @property
    def _pgdata(self) -> Path:
        return self.cluster / "pgdata"

    @property
    def _state_file(self) -> Path:
        return self.cluster / "state.json"

    def _save_state(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._state, fh, indent=1)
        os.replace(tmp, self._state_file)

    def _pg(self, exe: str, *args: str) -> list[str]:
        cmd = [str(self._pg_bin / exe), *args]
        return ["runuser", "-u", _PG_USER, "--", *cmd] if _as_postgres() else cmd

    def _run_pg(self, exe: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self._pg(exe, *args), check=False, capture_output=True, text=True,
                              cwd=self.cluster, timeout=timeout)

    def _chown(self, path: Path) -> None:
        if _as_postgres():
            uid, gid = _postgres_ids()
            os.chown(path, uid, gid)

    @property
    def _dsn_base(self) -> str:
        from urllib.parse import quote

        return (f"postgresql://{_PG_USER}:{quote(self._state['password'], safe='')}"
                f"@{_HOST}:{self._state['pg_port']}")

    # -- start
    def start(self) -> ArchiveServer:
        """Start PostgreSQL (creating and loading the cluster if needed) and the HTTP server.

        Returns
        -------
        ArchiveServer
            ``self``, with :attr:`url` set.

        Raises
        ------
        ArchiveError
            The directory is not an archive.
        ServerError
            PostgreSQL/PostGIS or the server packages are missing, the port is busy, the
            archive is already served by another process, or a step failed (its log is quoted).
        """
        if self.url or self._stopped:
            raise ServerError("this ArchiveServer was already started",
                              hint="create a new one with serve_archive()")
        t0 = time.perf_counter()
        _check_archive(self.archive)
        _check_python_deps()
        self._pg_bin = _find_pg_bin()
        _check_postgis(self._pg_bin)
        if _as_postgres():
            _postgres_ids()
        self._install_signal_handler()
        atexit.register(self.stop)
        try:
            self._start(t0)
        except BaseException:
            # Half started (an error, Ctrl-C or SIGTERM): stop what is running, then report.
            self.stop()
            raise
        return self

    def _start(self, t0: float) -> None:
        self.cluster = cluster_dir(self.archive)
        fallback = self.cluster != self.archive / "db"
        if fallback:
            log.warning("PostgreSQL cannot use %s/db (the postgres user cannot reach it); "
                        "keeping the cluster in %s", self.archive, self.cluster)
            with contextlib.suppress(OSError):
                _gc_fallback_clusters(self.cluster)
        self.cluster.mkdir(parents=True, exist_ok=True)
        self.cluster.chmod(0o700)
        self._chown(self.cluster)
        self._acquire_lock()
        self._kill_orphans()

        with contextlib.suppress(OSError, ValueError):
            self._state = json.loads(self._state_file.read_text())
        self._state["archive"] = str(self.archive)

        # Bind the HTTP port first: a busy port fails before anything is started.
        http_port = self.port or self._state.get("http_port") or 0
        try:
            self._sock = _bind(http_port)
        except ServerError:
            if self.port:
                raise
            self._sock = _bind(0)  # the port used last time is taken: any free one will do
        self._state["http_port"] = int(self._sock.getsockname()[1])
        self.url = f"http://{_HOST}:{self._state['http_port']}"

        if not (self._pgdata / "PG_VERSION").is_file() or not self._state.get("password"):
            self._initdb()
        self._start_watchdog()
        self._start_postgres()
        self._load()
        self._ensure_api_role()
        self._start_http()
        self._save_state()
        self._write_server_file()
        self.timings["total"] = time.perf_counter() - t0
        log.info("serving %s at %s (%s)", self.archive, self.url,
                 ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))

    def _acquire_lock(self) -> None:
        self._lock_fh = open(self.cluster / "lock", "a+")  # noqa: SIM115 (held while serving)
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            other = _read_server_file(self.archive) or {}
            where = f" at {other['url']} (pid {other.get('pid')})" if other.get("url") else ""
            raise ServerError(f"archive {self.archive} is already being served{where}",
                              hint="use that server (geoflow.archive.server.ensure_server "
                                   "returns its URL), or stop it first (Ctrl-C, or "
                                   "geoflow.archive.server.stop_server)") from None

    def _kill_orphans(self) -> None:
        """Stop what a killed (SIGKILL) earlier server left running; we hold the lock."""
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(self._state_file.read_text())
            pid = int(old.get("http_pid") or 0)
            if pid and _pid_alive(pid) and "geoflow.archive._serve_app" in _cmdline(pid):
                log.warning("stopping a leftover HTTP server (pid %d)", pid)
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if not _pid_alive(pid):
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
        if (self._pgdata / "postmaster.pid").exists():
            status = self._run_pg("pg_ctl", "status", "-D", str(self._pgdata))
            if status.returncode == 0:
                log.warning("stopping a leftover PostgreSQL on %s", self._pgdata)
                self._run_pg("pg_ctl", "stop", "-D", str(self._pgdata), "-m", "fast", "-w")

    def _start_watchdog(self) -> None:
        """Start the process that stops PostgreSQL and the HTTP server if we are killed.

        It reads a pipe whose only write end we hold (os.pipe fds are not inherited by the
        programs we start): our death, however it comes, is its end of file.
        """
        read_fd, self._watch_fd = os.pipe()
        try:
            with open(self.cluster / "watchdog.log", "ab") as out:
                # Its own session: Ctrl-C in a terminal must not stop it before we are done.
                self._watchdog = subprocess.Popen(
                    [sys.executable, "-m", "geoflow.archive._serve_app", "watchdog",
                     "--fd", str(read_fd), "--pgdata", str(self._pgdata)],
                    pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, cwd=self.cluster, start_new_session=True)
        finally:
            os.close(read_fd)

    def _tell_watchdog(self, line: str) -> None:
        if self._watch_fd is not None:
            with contextlib.suppress(OSError):  # it died: nothing to tell
                os.write(self._watch_fd, line.encode() + b"\n")

    def _stop_watchdog(self) -> None:
        """Everything is stopped: tell the watchdog so, and let it go."""
        self._tell_watchdog("done")
        if self._watch_fd is not None:
            os.close(self._watch_fd)
            self._watch_fd = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait(10)
            self._watchdog = None

    def _ensure_api_role(self) -> None:
        """Create (or re-key) the HTTP server's login role, with pgstac_read rights only."""
        import psycopg
        from psycopg import sql

        if not self._state.get("api_password"):
            self._state["api_password"] = secrets.token_urlsafe(24)
            self._save_state()
        role = sql.Identifier(_API_ROLE)
        try:
            with psycopg.connect(f"{self._dsn_base}/{_DATABASE}", autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                      (_API_ROLE,)).fetchone()
                conn.execute(sql.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    "NOBYPASSRLS INHERIT CONNECTION LIMIT 20 PASSWORD {}").format(
                        sql.SQL("ALTER" if exists else "CREATE"), role,
                        sql.Literal(_scram_verifier(self._state["api_password"]))))
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(_API_GRANT), role))
                # As pgstac sets for its own roles (a role's settings are not inherited).
                conn.execute(sql.SQL("ALTER ROLE {} SET search_path TO pgstac, public").format(
                    role))
                for other in ("pgstac_ingest", "pgstac_admin"):  # never more than reading
                    if conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')",
                                    (_API_ROLE, other)).fetchone() == (True,):
                        conn.execute(sql.SQL("REVOKE {} FROM {}").format(
                            sql.Identifier(other), role))
                # PostgreSQL < 15 lets every role create tables in schema public.
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        except psycopg.Error as err:
            raise ServerError(f"could not set up the API's database role: {err}",
                              hint=f"delete {self.cluster} to rebuild the database") from None

    def _initdb(self) -> None:
        t = time.perf_counter()
        if self._pgdata.exists():
            log.warning("re-creating the PostgreSQL cluster in %s", self._pgdata)
            shutil.rmtree(self._pgdata)
        # A new cluster: what was loaded is gone, only the HTTP port is worth keeping.
        for key in ("fingerprint", "pgstac", "base_url", "pg_port", "api_password"):
            self._state.pop(key, None)
        self._state.update(archive=str(self.archive), password=secrets.token_urlsafe(24))
        pwfile = self.cluster / "pwfile"
        pwfile.unlink(missing_ok=True)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._state["password"] + "\n")
        self._chown(pwfile)
        try:
            res = self._run_pg("initdb", "-D", str(self._pgdata), "-U", _PG_USER,
                               f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                               "--no-locale", "--no-sync", "--no-instructions",
                               "--wal-segsize=1")
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            shutil.rmtree(self._pgdata, ignore_errors=True)
            raise ServerError(f"initdb failed in {self._pgdata}: {res.stderr.strip()[-800:]}",
                              hint=f"check that the disk is writable and not full; {_SETUP_HINT}")
        with open(self._pgdata / "postgresql.conf", "a") as fh:
            fh.write(_PG_CONF)
        self._save_state()
        self.timings["initdb"] = time.perf_counter() - t

    def _start_postgres(self) -> None:
        t = time.perf_counter()
        logfile = self.cluster / "postgres.log"
        for attempt in (1, 2):
            self._state["pg_port"] = _free_port(self._state.get("pg_port"))
            logfile.touch()
            self._chown(logfile)
            self._pg_running = True  # from here on, stop() must try to stop it
            res = self._run_pg("pg_ctl", "start", "-D", str(self._pgdata), "-l", str(logfile),
                               "-w", "-t", "60", "-o", f"-p {self._state['pg_port']}")
            if res.returncode == 0:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pid = int((self._pgdata / "postmaster.pid").read_text().split()[0])
                    self._tell_watchdog(f"pg {pid}")
                break
            self._stop_postgres()
            if attempt == 1 and "initdb" not in self.timings:
                # A broken cache (killed mid-initdb, another PostgreSQL version): rebuild it.
                log.warning("PostgreSQL did not start on the existing cluster; rebuilding it")
                self._initdb()
                continue
            raise ServerError(f"PostgreSQL did not start: {res.stderr.strip()[-400:]}\n"
                              f"{_tail(logfile)}",
                              hint=f"see {logfile}; delete {self.cluster} to rebuild the cache")
        self._save_state()
        self.timings["postgres"] = time.perf_counter() - t

    def _load(self) -> None:
        import psycopg
        from pypgstac import __version__ as pgstac_version
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods
        from pypgstac.migrate import Migrate

        fingerprint = _fingerprint(self.archive)
        fresh = (self._state.get("fingerprint") != fingerprint
                 or self._state.get("pgstac") != pgstac_version)
        if not fresh and self._state.get("base_url") == self.url:
            return  # loaded with these hrefs before: nothing to do
        t = time.perf_counter()
        try:
            if fresh:
                with psycopg.connect(f"{self._dsn_base}/postgres", autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {_DATABASE} WITH (FORCE)")
                    conn.execute(f"CREATE DATABASE {_DATABASE}")
                self._state.pop("fingerprint", None)
                self._save_state()
            db = PgstacDB(dsn=f"{self._dsn_base}/{_DATABASE}")
            try:
                if fresh:
                    tm = time.perf_counter()
                    Migrate(db).run_migration()
                    self.timings["migrate"] = time.perf_counter() - tm
                    t = time.perf_counter()
                method = Methods.insert if fresh else Methods.upsert
                loader = Loader(db=db)
                collections = [
                    _rewrite(json.loads(p.read_text()), self.archive, self.url)
                    for p in sorted((self.archive / "collections").glob("*.json"))]
                loader.load_collections(iter(collections), method)
                for path in sorted((self.archive / "items").glob("*.ndjson")):
                    items = (_rewrite(i, self.archive, self.url) for i in _iter_ndjson(path))
                    loader.load_items(items, method)
            finally:
                db.close()
        except (psycopg.Error, ValueError, KeyError, TypeError) as err:
            if isinstance(err, psycopg.Error) and "postgis" in str(err).lower():
                raise ServerError(f"pgstac could not be installed: {err}",
                                  hint=_SETUP_HINT) from None
            raise ServerError(f"loading {self.archive} into pgstac failed: {err}",
                              hint="re-create the archive; if it persists, delete "
                                   f"{self.cluster} to rebuild the database") from None
        self._state.update(fingerprint=fingerprint, pgstac=pgstac_version, base_url=self.url)
        self._save_state()
        self.timings["load"] = time.perf_counter() - t

    def _start_http(self) -> None:
        t = time.perf_counter()
        assert self._sock is not None
        env = dict(os.environ)
        env.update(GEOFLOW_PG_USER=_API_ROLE, GEOFLOW_PG_PASSWORD=self._state["api_password"],
                   GEOFLOW_PG_PORT=str(self._state["pg_port"]), GEOFLOW_PG_DATABASE=_DATABASE,
                   # stac-fastapi warns about defaults it reads from the environment.
                   STAC_FASTAPI_TITLE="geoflow sample archive",
                   STAC_FASTAPI_DESCRIPTION="geoflow's bundled synthetic Sentinel-1/2 archive",
                   STAC_FASTAPI_LANDING_ID="geoflow-archive",
                   STAC_FASTAPI_VERSION=_geoflow_version())
        logfile = self.cluster / "http.log"
        fd = self._sock.fileno()
        with open(logfile, "wb") as out:
            # Its own session: Ctrl-C reaches only us, and we stop the children in order.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "geoflow.archive._serve_app", "http", "--fd", str(fd),
                 "--assets", str(self.archive / "assets"), "--parent", str(os.getpid())],
                pass_fds=(fd,), env=env, cwd=self.cluster, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._state["http_pid"] = self._proc.pid
        self._tell_watchdog(f"http {self._proc.pid}")
        self._save_state()
        deadline = time.monotonic() + self.startup_timeout
        while not _answers(self.url, timeout=5.0):
            if self._proc.poll() is not None:
                raise ServerError(f"the HTTP server exited at start (status "
                                  f"{self._proc.returncode}):\n{_tail(logfile)}",
                                  hint=f"see {logfile}")
            if time.monotonic() > deadline:
                raise ServerError(f"the HTTP server did not answer within "
                                  f"{self.startup_timeout:.0f} s:\n{_tail(logfile)}",
                                  hint=f"see {logfile}")
            time.sleep(0.05)
        # The child has the socket now; ours would keep the port open after it exits.
        self._sock.close()
        self._sock = None
        self.timings["http"] = time.perf_counter() - t

    def _write_server_file(self) -> None:
        try:
            path = self.archive / SERVER_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid(),
                                       "cluster": str(self.cluster)}) + "\n")
            os.replace(tmp, path)
        except OSError as err:  # a read-only archive can still be served
            log.info("could not write %s/%s: %s", self.archive, SERVER_FILE, err)

    def _install_signal_handler(self) -> None:
        # SIGTERM's default kills the process without cleanup: turn it into SystemExit so that
        # stop() runs. Only when nobody else handles SIGTERM, and only in the main thread.
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_system_exit)

    # -- running
    def alive(self) -> bool:
        """Whether the HTTP server process is still running.

        Examples
        --------
        >>> srv.alive()  # doctest: +SKIP
        True
        """
        return self._proc is not None and self._proc.poll() is None

    def wait(self, poll: float = 0.5) -> None:
        """Block until interrupted (Ctrl-C, SIGTERM); raise if the server dies meanwhile.

        Raises
        ------
        ServerError
            The HTTP server process exited on its own.

        Examples
        --------
        >>> with serve_archive(path) as srv:  # doctest: +SKIP
        ...     srv.wait()
        """
        while self.alive():
            time.sleep(poll)
        if not self._stopped:
            code = self._proc.returncode if self._proc is not None else None
            raise ServerError(f"the HTTP server stopped unexpectedly (status {code}):\n"
                              f"{_tail(self.cluster / 'http.log')}",
                              hint=f"see {self.cluster / 'http.log'}")

    # -- stop
    def stop(self) -> None:
        """Stop the HTTP server and PostgreSQL; safe to call more than once.

        Examples
        --------
        >>> srv.stop()  # doctest: +SKIP
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._pg_running:
                self._stop_postgres()
            self._stop_watchdog()
            if self.url:
                info = _read_server_file(self.archive)
                if info and info.get("pid") == os.getpid() and info.get("url") == self.url:
                    with contextlib.suppress(OSError):
                        (self.archive / SERVER_FILE).unlink()
            if self._lock_fh is not None:
                self._lock_fh.close()
                self._lock_fh = None
            if self._old_sigterm is not None:
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    def _stop_postgres(self) -> None:
        pid_file = self._pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self._pg_running = False
            return
        res = self._run_pg("pg_ctl", "stop", "-D", str(self._pgdata), "-m", "fast", "-w",
                           "-t", "30")
        if res.returncode != 0 and pid_file.exists():
            self._run_pg("pg_ctl", "stop", "-D", str(self._pgdata), "-m", "immediate", "-w")
        # pg_ctl returns once the pid file is gone, a moment before the postmaster exits.
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._pg_running = False


def _geoflow_version() -> str:
    from geoflow import __version__

    return str(__version__)


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def serve_archive(archive: str | os.PathLike[str], port: int = 0) -> ArchiveServer:
    """Serve an archive as a STAC API (stac-fastapi-pgstac) plus its assets, on 127.0.0.1.

    Parameters
    ----------
    archive
        The archive directory (``archive.json``, ``collections/``, ``items/``, ``assets/``).
    port
        TCP port on 127.0.0.1; 0 picks the port used last time for this archive if it is
        free (then nothing needs reloading), else any free one.

    Returns
    -------
    ArchiveServer
        Started; use it as a context manager or call :meth:`ArchiveServer.stop`.
        :attr:`ArchiveServer.url` is the STAC API root; assets are under ``url + "/assets/"``.

    Raises
    ------
    ArchiveError
        ``archive`` is not an archive directory.
    ServerError
        PostgreSQL/PostGIS missing (run ``deploy/local/setup.sh``), the port is busy, the
        archive is already served elsewhere, or a start-up step failed.

    Examples
    --------
    >>> import pystac_client
    >>> with serve_archive("/tmp/archive") as srv:  # doctest: +SKIP
    ...     client = pystac_client.Client.open(srv.url)
    ...     [c.id for c in client.get_collections()]
    ['sentinel-1-rtc', 'sentinel-2-l2a']
    """
    return ArchiveServer(archive, port).start()


# --------------------------------------------------------------------------- detached servers


def _read_server_file(archive: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((archive / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    # Checked here: a damaged file must read as "no server", not crash int() in the callers.
    ok = (isinstance(info, dict) and isinstance(info.get("url"), str)
          and isinstance(info.get("pid"), int) and not isinstance(info["pid"], bool)
          and info["pid"] > 0)
    return info if ok else None


def running_server(archive: str | os.PathLike[str]) -> str | None:
    """URL of a live server for ``archive`` (one that answers), or None.

    Examples
    --------
    >>> running_server("/tmp/archive") is None  # doctest: +SKIP
    True
    """
    info = _read_server_file(Path(archive).expanduser().resolve())
    if info and _pid_alive(int(info["pid"])) and _answers(str(info["url"])):
        return str(info["url"])
    return None


def ensure_server(archive: str | os.PathLike[str], *, timeout: float = 300.0) -> str:
    """URL of a running server for ``archive``, starting a detached one if there is none.

    The detached server outlives this process; stop it with :func:`stop_server`. Its log is
    ``server.log`` in the cluster directory.

    Parameters
    ----------
    archive
        The archive directory.
    timeout
        Seconds to wait for a new server (a first start creates and loads the database).

    Returns
    -------
    str
        The STAC API root, ``"http://127.0.0.1:PORT"``.

    Raises
    ------
    ArchiveError, ServerError
        As :func:`serve_archive`; the detached server's log is quoted.

    Examples
    --------
    >>> url = ensure_server("/tmp/archive")  # doctest: +SKIP
    >>> ensure_server("/tmp/archive") == url  # doctest: +SKIP
    True
    """
    path = Path(archive).expanduser().resolve()
    url = running_server(path)
    if url:
        return url
    _check_archive(path)
    cluster = cluster_dir(path)
    cluster.mkdir(parents=True, exist_ok=True)
    with open(cluster / "ensure.lock", "a+") as lock:
        # Two callers at once: the second waits, then finds the first one's server.
        fcntl.flock(lock, fcntl.LOCK_EX)
        url = running_server(path)
        if url:
            return url
        logfile = cluster / "server.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "geoflow.archive._serve_app", "supervise", str(path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd="/")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _read_server_file(path)
            if info and info.get("pid") == proc.pid and _answers(str(info["url"])):
                return str(info["url"])
            if proc.poll() is not None:
                raise ServerError(f"the archive server for {path} exited at start:\n"
                                  f"{_tail(logfile)}", hint=f"see {logfile}")
            time.sleep(0.1)
        proc.terminate()
        raise ServerError(f"the archive server for {path} did not start within {timeout:.0f} s",
                          hint=f"see {logfile}")


def stop_server(archive: str | os.PathLike[str], *, timeout: float = 60.0) -> bool:
    """Stop the server recorded in ``archive/server.json``; True if one was stopped.

    Examples
    --------
    >>> stop_server("/tmp/archive")  # doctest: +SKIP
    True
    """
    path = Path(archive).expanduser().resolve()
    info = _read_server_file(path)
    if not info:
        return False
    pid = int(info["pid"])
    if pid == os.getpid():
        raise ServerError("the server of this archive runs in this process",
                          hint="call .stop() on the ArchiveServer that serve_archive returned")
    # A stale file may name a pid that now belongs to another program: signal only ours.
    if not _pid_alive(pid) or "geoflow" not in _cmdline(pid):
        with contextlib.suppress(OSError):
            (path / SERVER_FILE).unlink()
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise ServerError(f"the archive server (pid {pid}) did not stop within "
                              f"{timeout:.0f} s", hint=f"kill {pid}")
        time.sleep(0.1)
    return True


__all__ = ["ArchiveServer", "MapCatalogError", "cluster_dir", "ensure_server", "load_maps",
           "running_server", "serve_archive", "stop_server"]
