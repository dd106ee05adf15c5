"""Signing asset URLs on the workers, just before a read, with tokens that last.

Some catalogs (Planetary Computer) hand out asset URLs that must be signed with a token that
expires (about an hour). Signing the items on the client at search time would fail the chunks
that run after the expiry, so geoflow keeps the items unsigned and signs each href where it
is opened (:func:`open_raster`, called by the cube's reader): tokens are cached per process
until shortly before they expire; a kept-open dataset whose token was renewed is reopened
(:func:`current`), and an open or read that is refused (HTTP 403 for an expired or revoked
signature, which GDAL does not always name) re-signs with a fresh token and retries once.

A signer is any picklable object with ``sign(href, refresh=False) -> str`` (the
:class:`HrefSigner` protocol); it returns hrefs it does not own unchanged, so several can be
active at once (Sentinel-2 from one catalog, Sentinel-1 from another). Two are built in:

- :class:`PlanetaryComputerSigner`: the ``planetary-computer`` package's tokens (extra
  ``geoflow[planetary-computer]``), for ``*.blob.core.windows.net`` hrefs;
- :class:`SasTokenSigner`: any endpoint that answers ``{"token": "...", "msft:expiry": ...}``
  (the Planetary Computer token API's form), for hrefs on the hosts you name.

Examples
--------
>>> signer = SasTokenSigner("http://127.0.0.1:9/token", hosts=("data.example.org",))
>>> signer.sign("https://other.example.org/a.tif")
'https://other.example.org/a.tif'
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from geoflow.errors import CatalogError, strip_secrets


@runtime_checkable
class HrefSigner(Protocol):
    """What a signer does: sign one href (``refresh=True``: with a new token).

    Implementations must pickle (they travel to Dask workers) and return hrefs they do not
    sign unchanged. Optionally a signer has ``peek(href) -> str | None`` (``href`` signed from
    its cache without a request, None when its token is stale, ``href`` itself when it does
    not own it): with it, a kept-open dataset is reopened as soon as its token is renewed;
    without it, a read refused for an expired signature is re-signed and retried.
    """

    def sign(self, href: str, refresh: bool = False) -> str:
        """The signed href."""
        ...  # pragma: no cover


#: Per process: token cache key -> (token, expiry as epoch seconds).
_TOKENS: dict[str, tuple[str, float]] = {}
_LOCK = threading.Lock()
#: Per process: token cache key -> the lock held while its token is fetched (single flight).
_GATES: dict[str, threading.Lock] = {}
#: Per process counters: tokens fetched, and re-signs forced by a refused open or read.
_STATS = {"tokens": 0, "resigned": 0}
#: Signers of the run this process is reading for (set on each worker per chunk).
_ACTIVE: list[tuple[HrefSigner, ...]] = [()]


def _expiry(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _with_token(href: str, token: str) -> str:
    base = href.split("?", 1)[0]
    return f"{base}?{token.lstrip('?')}"


class _CachedTokenSigner:
    """Shared part: a token per key, cached in the process until ``margin_s`` before expiry
    (subclasses are frozen dataclasses with a ``margin_s`` field)."""

    margin_s: float

    def _key(self, href: str) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fetch(self, key: str) -> tuple[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fresh(self, cached: tuple[str, float] | None) -> bool:
        return cached is not None and cached[1] - time.time() >= self.margin_s

    @staticmethod
    def _gate(key: str) -> threading.Lock:
        with _LOCK:
            return _GATES.setdefault(key, threading.Lock())

    def peek(self, href: str) -> str | None:
        """``href`` signed with the cached token if it is still fresh, else None (no request);
        ``href`` itself when this signer does not own it."""
        key = self._key(href)
        if key is None:
            return href
        with _LOCK:
            cached = _TOKENS.get(key)
        if cached is None or cached[1] - time.time() < self.margin_s:
            return None
        return _with_token(href, cached[0])

    def sign(self, href: str, refresh: bool = False, failed: str | None = None) -> str:
        """``href`` with a token for its container (unchanged if this signer does not own it).

        Parameters
        ----------
        href
            The asset URL (a signature it already carries is replaced).
        refresh
            A new token (after an HTTP 403): fetched unless another thread already replaced
            the one that failed. One fetch per key at a time, however many threads were
            refused together.
        failed
            With ``refresh``: the token (query string) that was refused; default the one
            cached now.
        """
        key = self._key(href)
        if key is None:
            return href
        with _LOCK:
            seen = _TOKENS.get(key)
        if not refresh and seen is not None and self._fresh(seen):
            return _with_token(href, seen[0])
        # The token that was refused: given by the reader, else the one cached now.
        if failed is None and seen is not None:
            failed = seen[0]
        # One request per key at a time: threads refused together (a 403 on N readers) wait
        # for the first one's token instead of each fetching their own.
        with self._gate(key):
            with _LOCK:
                cached = _TOKENS.get(key)
            if self._fresh(cached) and (not refresh or (cached is not None
                                                         and cached[0] != failed)):
                assert cached is not None
                return _with_token(href, cached[0])  # renewed while this thread waited
            try:
                cached = self._fetch(key)
            except CatalogError:
                raise
            except Exception as err:
                # Transient (a 503, a timeout): an OSError, retried by the read's policy on
                # either reader, like the read it stands in front of.
                raise TokenFetchError(f"getting a signing token for {strip_secrets(href)} "
                                      f"failed: {strip_secrets(str(err))[:300]}; check the "
                                      "token endpoint and the network") from None
            with _LOCK:
                _TOKENS[key] = cached
                _STATS["tokens"] += 1
        return _with_token(href, cached[0])


class TokenFetchError(OSError):
    """A signing token could not be fetched (endpoint down, timeout, HTTP error): transient, so
    not a :class:`~geoflow.errors.GeoflowError`: the read's retry policy tries again."""


def _get_token(url: str, headers: dict[str, str] | None, timeout_s: float
               ) -> tuple[str, float]:
    """One SAS token request: (token, expiry as a Unix time) from a ``{"token",
    "msft:expiry"}`` answer (Planetary Computer's token API and its stand-ins)."""
    import requests

    answer = requests.get(url, headers=headers, timeout=timeout_s)
    answer.raise_for_status()
    body = answer.json()
    return str(body["token"]), _expiry(body["msft:expiry"])


@dataclass(frozen=True)
class SasTokenSigner(_CachedTokenSigner):
    """Signs hrefs on ``hosts`` with tokens from ``endpoint`` (GET, JSON ``token`` and
    ``msft:expiry``, an ISO time or epoch seconds).

    Parameters
    ----------
    endpoint
        The token URL.
    hosts
        Host names (``host`` or ``host:port``) whose hrefs are signed.
    margin_s
        Renew a cached token when less than this is left of it.

    Examples
    --------
    >>> s = SasTokenSigner("http://127.0.0.1:9/token", hosts=("127.0.0.1:8",), margin_s=1)
    >>> s.sign("http://example.org/x.tif")
    'http://example.org/x.tif'
    """

    #: Out of the repr: a token URL may carry credentials (user:password@, ?code=).
    endpoint: str = field(repr=False)
    hosts: tuple[str, ...] = ()
    #: Renew a cached token when less than this many seconds of it are left.
    margin_s: float = 300.0
    #: Seconds one token request may take (a hung endpoint must not outlast the deadline).
    timeout_s: float = 30.0

    def _key(self, href: str) -> str | None:
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https"):
            return None
        return self.endpoint if (parts.netloc in self.hosts
                                 or (parts.hostname or "") in self.hosts) else None

    def _fetch(self, key: str) -> tuple[str, float]:
        return _get_token(key, None, self.timeout_s)


@dataclass(frozen=True)
class PlanetaryComputerSigner(_CachedTokenSigner):
    """Signs ``*.blob.core.windows.net`` hrefs with Planetary Computer SAS tokens, through the
    ``planetary-computer`` package (its token endpoint: ``PC_SDK_SAS_URL``; an API key:
    ``PC_SDK_SUBSCRIPTION_KEY``).

    Examples
    --------
    >>> PlanetaryComputerSigner().sign("s3://bucket/x.tif")
    's3://bucket/x.tif'
    """

    #: Renew a cached token when less than this many seconds of it are left.
    margin_s: float = 300.0
    #: Seconds one token request may take (a hung endpoint must not outlast the deadline).
    timeout_s: float = 30.0

    def _key(self, href: str) -> str | None:
        host = (urlsplit(href).hostname or "").lower()
        if not host.endswith(".blob.core.windows.net") or host.startswith(
                "ai4edatasetspublicassets."):
            return None
        parts = urlsplit(href)
        container = parts.path.lstrip("/").split("/", 1)[0]
        return f"{host.split('.', 1)[0]}/{container}"

    def _fetch(self, key: str) -> tuple[str, float]:
        # The package's get_token has no timeout (a dead connection would hang the read past
        # the run's deadline): ask its endpoint (PC_SDK_SAS_URL), with its key, ourselves.
        settings = _planetary_computer().sas.Settings.get()
        headers = ({"Ocp-Apim-Subscription-Key": settings.subscription_key}
                   if settings.subscription_key else None)
        return _get_token(f"{settings.sas_url}/{key}", headers, self.timeout_s)


def _planetary_computer() -> Any:
    import warnings

    try:
        with warnings.catch_warnings():
            # planetary-computer 1.0's pydantic models warn on import under pydantic 2.
            warnings.simplefilter("ignore", DeprecationWarning)
            import planetary_computer
            import planetary_computer.sas
    except ImportError:
        raise CatalogError("signing Planetary Computer asset URLs needs the planetary-computer "
                           "package, which is not installed",
                           hint="pip install 'geoflow[planetary-computer]'") from None
    return planetary_computer


def resolve_signer(signer: Any) -> HrefSigner | None:
    """A signer from None, ``"planetary-computer"``, or an :class:`HrefSigner`.

    Raises
    ------
    CatalogError
        An unknown name, an object without ``sign``, or ``"planetary-computer"`` without its
        package (the message names the extra).

    Examples
    --------
    >>> resolve_signer(None) is None
    True
    """
    if signer is None:
        return None
    if signer == "planetary-computer":
        _planetary_computer()
        return PlanetaryComputerSigner()
    if isinstance(signer, HrefSigner):
        return signer
    raise CatalogError(f"unknown signer {signer!r}",
                       hint="use None, 'planetary-computer', or an object with "
                            "sign(href, refresh=False) -> str (geoflow.signing.HrefSigner)")


#: How many running tasks activated each active signer (same order as ``_ACTIVE[0]``).
_ACTIVE_COUNTS: list[int] = []


@contextlib.contextmanager
def activated(signers: Sequence[HrefSigner]) -> Iterator[None]:
    """Make a run's signers active in this process while its task runs (each chunk task
    enters it).

    Merged, not replaced: tasks of two runs on one worker (two maps on one cluster) run side
    by side with both runs' signers active, which is safe because a signer returns hrefs it
    does not own unchanged. A signer stays active while some task that activated it runs
    (counted; equal signers are one), so one run's signer never outlives its tasks to stand
    in another's way.

    Examples
    --------
    >>> s = SasTokenSigner("http://127.0.0.1:9/token", hosts=("data.example.org",))
    >>> with activated([s]):
    ...     len(_ACTIVE[0])
    1
    >>> len(_ACTIVE[0])
    0
    """
    added: list[HrefSigner] = []
    with _LOCK:
        merged, counts = list(_ACTIVE[0]), list(_ACTIVE_COUNTS)
        for signer in signers:
            if signer in added:
                continue
            added.append(signer)
            if signer in merged:
                counts[merged.index(signer)] += 1
            else:
                merged.append(signer)
                counts.append(1)
        _ACTIVE[0], _ACTIVE_COUNTS[:] = tuple(merged), counts
    try:
        yield
    finally:
        with _LOCK:
            merged, counts = list(_ACTIVE[0]), list(_ACTIVE_COUNTS)
            for signer in added:
                if signer in merged:
                    i = merged.index(signer)
                    counts[i] -= 1
                    if counts[i] <= 0:
                        del merged[i], counts[i]
            _ACTIVE[0], _ACTIVE_COUNTS[:] = tuple(merged), counts


def sign(href: str, refresh: bool = False) -> str:
    """``href`` signed by the active signers (unchanged when none owns it)."""
    for signer in _ACTIVE[0]:
        signed = signer.sign(href, refresh=refresh)
        if signed != href:
            return signed
    return href


def current(src: Any, href: str) -> bool:
    """Whether a dataset opened by :func:`open_raster` still holds the current signature of
    ``href`` (no request is made): a kept-open dataset is reopened when its token was
    renewed, instead of waiting for its next read to be refused.

    Only signers with the optional ``peek(href) -> str | None`` can tell; with one that has
    none the dataset is taken as current (never a ``sign`` call, which may be a request, on
    each cached read): a read refused later is re-signed and retried (:func:`open_raster`).
    """
    signed = getattr(src, "geoflow_signed", None)
    if signed is None:
        return True
    unknown = False
    for signer in _ACTIVE[0]:
        peek = getattr(signer, "peek", None)
        if peek is None:
            unknown = True
            continue
        fresh = peek(href)
        if fresh != href:
            return bool(fresh == signed)
    return unknown


def sign_items(items: list[dict[str, Any]], assets: Sequence[str] | None = None
               ) -> list[dict[str, Any]]:
    """Copies of ``items`` with the hrefs of ``assets`` (None: every asset) signed, for readers
    geoflow cannot hook; the other assets are left as they are."""
    if not _ACTIVE[0]:
        return items
    return [{**it, "assets": {k: ({**a, "href": sign(str(a["href"]))}
                                  if assets is None or k in assets else a)
                              for k, a in (it.get("assets") or {}).items()}} for it in items]


def _rasterio_open(url: str) -> Any:
    import rasterio

    return rasterio.open(url)


def _resign(href: str, failed: str) -> str:
    """A new signature for ``href`` after ``failed`` (its signed URL) was refused, counted.
    GDAL's memory of the refused answers needs no clearing: it is kept per URL, and the new
    URL differs."""
    with _LOCK:
        _STATS["resigned"] += 1
    token = failed.partition("?")[2] or None
    for signer in _ACTIVE[0]:
        # geoflow's signers skip the fetch when another thread already replaced that token.
        signed = (signer.sign(href, refresh=True, failed=token)
                  if isinstance(signer, _CachedTokenSigner) else signer.sign(href, refresh=True))
        if signed != href:
            return signed
    return href


def open_raster(href: str, failed: str | None = None) -> Any:
    """``rasterio.open`` of ``href`` signed just now; the dataset carries the signed URL as
    ``geoflow_signed``. ``failed``: the signed URL of a dataset whose read was just refused,
    so the open takes a new token. An open that fails is tried once more with a new token
    (counted in :func:`stats`): GDAL often reports a refused signature (HTTP 403) as "not
    recognized" or "read failed", without the status, and a new token costs one small
    request. A fault that is not the signature's fails again, with its own message. A read
    that fails is retried by the reader (:func:`geoflow.cube._read_window`), through here.
    Without active signers, or for an href no signer owns, a plain open."""
    if not _ACTIVE[0]:
        return _rasterio_open(href)
    url = _resign(href, failed) if failed else sign(href)
    if url == href:
        return _rasterio_open(href)
    try:
        src = _rasterio_open(url)
    except Exception:
        url = _resign(href, url)
        src = _rasterio_open(url)
    src.geoflow_signed = url
    return src


def stats() -> dict[str, int]:
    """This process's counts: ``tokens`` fetched, hrefs ``resigned`` after a refused open or
    read."""
    with _LOCK:
        return dict(_STATS)


def reset() -> None:
    """Forget cached tokens, counts and active signers (tests)."""
    with _LOCK:
        _TOKENS.clear()
        _GATES.clear()
        _STATS.update(tokens=0, resigned=0)
        _ACTIVE[0] = ()
        _ACTIVE_COUNTS.clear()


__all__ = ["HrefSigner", "PlanetaryComputerSigner", "SasTokenSigner", "TokenFetchError",
           "activated", "current",
           "open_raster", "resolve_signer", "sign", "sign_items", "stats"]
