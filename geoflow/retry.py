"""How long geoflow tries, and how often: one :class:`RetryPolicy`, built once at the edge.

A policy says how many attempts each unit of work gets (an HTTP request to the STAC API, a
GDAL read of a COG, a chunk's read or write), how long to back off between them, how long one
HTTP request may take, how many threads read remote assets, and the overall deadline of the
command. The CLI (``--retries``, ``--timeout``, ``--deadline``, ``--io-threads``), a workflow
spec's ``retry:`` section and the ``retry=`` keyword of :func:`geoflow.classify_region` build
it; everything below (catalog search, the cluster's GDAL settings, the chunk tasks) receives it
and never reads the environment itself.

With a deadline, a command ends by then, whatever it waits for: a catalog that accepts
connections and never answers, a cluster without workers, chunks still running. It raises
:class:`~geoflow.errors.DeadlineError`; chunks finished before it are kept, so rerunning the
command resumes. Without a deadline every wait is still bounded (attempts x timeout, and
``worker_wait_s`` for workers to join).

Examples
--------
>>> from geoflow.retry import RetryPolicy
>>> policy = RetryPolicy(attempts=3, timeout_s=10, deadline_s=600)
>>> policy.delay(1), policy.delay(2)
(1.0, 2.0)
>>> RetryPolicy(attempts=0)
Traceback (most recent call last):
...
geoflow.errors.RequestError: retry attempts must be a whole number >= 1 and <= 100, got 0. Fix: ...
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from geoflow._options import number
from geoflow.errors import DeadlineError, GeoflowError, RequestError, strip_secrets

T = TypeVar("T")

#: Threads a chunk task reads remote assets with (HTTP latency overlaps; GDAL releases the
#: GIL). Assets on this machine (loopback URLs, local files) have no latency to hide: they
#: are read with one thread, as extra threads only contend for the worker's core (about
#: 10 % slower end to end on the 2-core benchmark).
REMOTE_IO_THREADS = 4
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: The keys a workflow spec's ``retry:`` section may hold (the policy's fields).
SPEC_KEYS = ("attempts", "backoff_s", "timeout_s", "deadline_s", "io_threads", "worker_wait_s")


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, backoff, per-request timeout, overall deadline and I/O threads of a run.

    Parameters
    ----------
    attempts
        Tries per unit of work (an HTTP request, a chunk's read, a chunk's write) before it
        counts as failed; 1 means no retry.
    backoff_s
        Seconds before the second attempt, doubling for each further one (capped at 30 s).
    timeout_s
        Seconds one HTTP request (STAC API or COG range read) may take.
    deadline_s
        Seconds the whole command may take, or None for no overall limit.
    io_threads
        Threads a chunk reads remote assets with; None: 1 for local assets and loopback URLs,
        4 for remote ones.
    worker_wait_s
        Seconds to wait for the first worker of a cluster that has none yet.

    Raises
    ------
    RequestError
        A value out of range; the message names it and an example.

    Examples
    --------
    >>> RetryPolicy.from_options(retries="2", timeout="5").attempts
    3
    """

    attempts: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    deadline_s: float | None = None
    io_threads: int | None = None
    worker_wait_s: float = 120.0

    def __post_init__(self) -> None:
        checked = {
            "attempts": number(self.attempts, "retry attempts", integer=True, low=1, high=100,
                               example="--retries 3 (attempts: 4)"),
            "backoff_s": number(self.backoff_s, "retry backoff", low=0, high=600,
                                unit="seconds", example="--backoff 1.0"),
            "timeout_s": number(self.timeout_s, "request timeout", low=0, low_open=True,
                                high=3600, unit="seconds", example="--timeout 30"),
            "deadline_s": number(self.deadline_s, "deadline", low=0, low_open=True,
                                 allow_none=True, unit="seconds",
                                 example="--deadline 3600 (seconds)"),
            "io_threads": number(self.io_threads, "io threads", integer=True, low=1, high=64,
                                 allow_none=True, example="--io-threads 4"),
            "worker_wait_s": number(self.worker_wait_s, "worker wait", low=0, low_open=True,
                                    unit="seconds", example="worker_wait_s: 120"),
        }
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_options(cls, *, retries: Any = None, timeout: Any = None, deadline: Any = None,
                     io_threads: Any = None, backoff: Any = None,
                     base: RetryPolicy | None = None) -> RetryPolicy:
        """A policy from CLI-style options (strings or numbers); None keeps ``base``'s value.

        ``retries`` counts retries, not attempts: ``--retries 0`` tries once.

        Examples
        --------
        >>> RetryPolicy.from_options(deadline="90").deadline_s
        90.0
        """
        policy = base or cls()
        changes: dict[str, Any] = {}
        if retries is not None:
            changes["attempts"] = number(retries, "retries", integer=True, low=0, high=99,
                                         example="--retries 3") + 1
        if timeout is not None:
            changes["timeout_s"] = timeout
        if deadline is not None:
            changes["deadline_s"] = deadline
        if io_threads is not None:
            changes["io_threads"] = io_threads
        if backoff is not None:
            changes["backoff_s"] = backoff
        return replace(policy, **changes)

    @classmethod
    def from_spec(cls, section: Mapping[str, Any] | None, where: str = "retry") -> RetryPolicy:
        """A policy from a workflow spec's ``retry:`` mapping (keys: :data:`SPEC_KEYS`).

        Examples
        --------
        >>> RetryPolicy.from_spec({"attempts": 2, "deadline_s": 600}).deadline_s
        600.0
        """
        if not section:
            return cls()
        unknown = sorted(str(k) for k in section if k not in SPEC_KEYS)
        if unknown:
            raise RequestError(f"{where}: unknown key(s) {', '.join(unknown)}",
                               hint=f"known keys in retry: {', '.join(SPEC_KEYS)}")
        try:
            return cls(**dict(section))
        except RequestError as err:
            raise RequestError(f"{where}: {err.message}", hint=err.hint) from None

    @classmethod
    def coerce(cls, value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy:
        """A policy from a policy, a mapping of its fields, or None (the defaults).

        Examples
        --------
        >>> RetryPolicy.coerce({"attempts": 1}).attempts
        1
        """
        if value is None:
            return cls()
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, Mapping):
            return cls.from_spec(value, where="retry")
        raise RequestError(f"retry must be a RetryPolicy or a mapping, got "
                           f"{type(value).__name__}",
                           hint="pass geoflow.retry.RetryPolicy(attempts=..., deadline_s=...)")

    # ------------------------------------------------------------------ using
    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), at most 30.

        Examples
        --------
        >>> RetryPolicy(backoff_s=0.5).delay(3)
        2.0
        """
        return min(30.0, self.backoff_s * 2 ** (attempt - 1))

    def threads_for(self, assets_local: bool) -> int:
        """Reader threads for a run whose assets are (not) all on this machine.

        Examples
        --------
        >>> RetryPolicy().threads_for(True), RetryPolicy().threads_for(False)
        (1, 4)
        """
        if self.io_threads is not None:
            return int(self.io_threads)
        return 1 if assets_local else REMOTE_IO_THREADS

    def start(self) -> Clock:
        """Start the clock of a command under this policy.

        Examples
        --------
        >>> RetryPolicy(deadline_s=60).start().remaining() <= 60
        True
        """
        ends = None if self.deadline_s is None else time.time() + float(self.deadline_s)
        return Clock(ends_at=ends)

    def gdal_options(self) -> dict[str, str]:
        """GDAL's own HTTP retry and timeout options for this policy.

        Examples
        --------
        >>> RetryPolicy(attempts=3, timeout_s=20).gdal_options()["GDAL_HTTP_MAX_RETRY"]
        '2'
        """
        return {
            "GDAL_HTTP_MAX_RETRY": str(self.attempts - 1),
            "GDAL_HTTP_RETRY_DELAY": f"{self.backoff_s:g}",
            "GDAL_HTTP_TIMEOUT": str(max(1, math.ceil(self.timeout_s))),
            "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, math.ceil(min(self.timeout_s, 20.0)))),
        }

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain data (a workflow spec's ``retry:`` section)."""
        return asdict(self)


@dataclass(frozen=True)
class Clock:
    """The deadline of one command, as an absolute wall-clock time (so it travels to workers).

    Examples
    --------
    >>> Clock(ends_at=None).remaining()
    inf
    """

    ends_at: float | None = None

    def remaining(self) -> float:
        """Seconds left (``inf`` without a deadline, never below 0)."""
        if self.ends_at is None:
            return math.inf
        return max(0.0, self.ends_at - time.time())

    @property
    def expired(self) -> bool:
        return self.ends_at is not None and time.time() >= self.ends_at

    def check(self, what: str) -> None:
        """Raise :class:`~geoflow.errors.DeadlineError` if the deadline has passed.

        Examples
        --------
        >>> Clock(ends_at=0.0).check("searching the catalog")
        Traceback (most recent call last):
        ...
        geoflow.errors.DeadlineError: the deadline passed while searching the catalog. Fix: ...
        """
        if self.expired:
            raise DeadlineError(f"the deadline passed while {what}",
                                hint="rerun the same command to resume (finished chunks are "
                                     "kept), or give it more time with --deadline / "
                                     "retry.deadline_s")

    def cap(self, seconds: float) -> float:
        """``seconds``, or what is left of the deadline if that is less (at least 0.05 s)."""
        return max(0.05, min(float(seconds), self.remaining()))


# --------------------------------------------------------------------------- attempts
class ChunkFailure(Exception):
    """A chunk's read or write kept failing after every attempt (the chunk is recorded failed,
    the run goes on)."""


def clear_gdal_http_cache() -> None:
    """Forget GDAL's /vsicurl/ cache, which remembers a failed HTTP answer for the process.

    Without this a retry of an asset that answered 500 once fails again without a request.
    rasterio does not expose ``VSICurlClearCache``; the loaded libgdal does.
    """
    try:
        with open("/proc/self/maps") as fh:
            paths = {ln.split()[-1] for ln in fh if "libgdal" in ln and ln.split()[-1][0] == "/"}
        for path in paths:
            ctypes.CDLL(path).VSICurlClearCache()
    except (OSError, AttributeError, IndexError):  # not Linux, or another GDAL build
        pass


def short_error(err: BaseException, limit: int = 400) -> str:
    """One line naming an error and its innermost cause (which names the HTTP status), without
    secrets: what ledgers, reports and messages show (a GDAL message can quote a signed URL)."""
    text = f"{type(err).__name__}: {err}"
    cause = err.__cause__
    if cause is not None and str(cause) not in text:
        text += f" (cause: {type(cause).__name__}: {cause})"
    text = strip_secrets(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def attempt(fn: Callable[[], T], what: str, policy: RetryPolicy, clock: Clock | None = None,
            *, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn`` up to ``policy.attempts`` times with exponential backoff.

    geoflow's own errors (bad input, model, store mismatch) are not transient and are raised
    at once; anything else (HTTP errors surfacing from GDAL or stackstac, timeouts) is
    retried. No new attempt starts after the clock's deadline.

    Raises
    ------
    ChunkFailure
        Every attempt failed, or the deadline stopped the retries; the message names the
        last error.

    Examples
    --------
    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 2:
    ...         raise OSError("HTTP 503")
    ...     return "ok"
    >>> attempt(flaky, "reading", RetryPolicy(backoff_s=0)), len(calls)
    ('ok', 2)
    """
    clock = clock or Clock()
    last: BaseException | None = None
    tries = 0
    for n in range(1, policy.attempts + 1):
        tries = n
        try:
            return fn()
        except GeoflowError:
            raise
        except Exception as err:
            last = err
            clear_gdal_http_cache()
            if n == policy.attempts:
                break
            wait = policy.delay(n)
            if wait >= clock.remaining():
                break
            sleep(wait)
    assert last is not None
    stopped = " (the deadline stopped further attempts)" if tries < policy.attempts else ""
    raise ChunkFailure(f"{what} failed after {tries} attempt{'s' * (tries != 1)}{stopped}: "
                       f"{short_error(last)}") from last


def assets_are_local(items: list[dict[str, Any]]) -> bool:
    """Whether every asset of the STAC item dicts is a local file or on a loopback URL.

    Examples
    --------
    >>> assets_are_local([{"assets": {"B04": {"href": "http://127.0.0.1:8000/a.tif"}}}])
    True
    """
    for item in items:
        for asset in (item.get("assets") or {}).values():
            href = str(asset.get("href", ""))
            if "://" in href and not href.startswith("file://") and \
                    urlsplit(href).hostname not in LOCAL_HOSTS:
                return False
    return True


__all__ = ["LOCAL_HOSTS", "REMOTE_IO_THREADS", "ChunkFailure", "Clock", "RetryPolicy",
           "assets_are_local", "attempt", "clear_gdal_http_cache", "short_error"]
