"""Signing asset URLs on the workers, just before a read, with tokens that last.

Some catalogs (Planetary Computer) hand out asset URLs that must be signed with a token that
expires (about an hour). Signing the items on the client at search time would fail the chunks
that run after the expiry, so geoflow keeps the items unsigned and signs each href where it
is opened (:func:`open_raster`, called by the cube's reader): tokens are cached per process
until shortly before they expire, and an HTTP 403 (an expired or revoked signature) re-signs
with a fresh token and retries once.

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

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from geoflow.errors import CatalogError, strip_secrets


@runtime_checkable
class HrefSigner(Protocol):
    """What a signer does: sign one href (``refresh=True``: with a new token).

    Implementations must pickle (they travel to Dask workers) and return hrefs they do not
    sign unchanged.
    """

    def sign(self, href: str, refresh: bool = False) -> str:
        """The signed href."""
        ...  # pragma: no cover


#: Per process: token cache key -> (token, expiry as epoch seconds).
_TOKENS: dict[str, tuple[str, float]] = {}
_LOCK = threading.Lock()
#: Per process counters: tokens fetched, and re-signs forced by an HTTP 403.
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

    def sign(self, href: str, refresh: bool = False) -> str:
        """``href`` with a token for its container (unchanged if this signer does not own it).

        Parameters
        ----------
        href
            The asset URL (a signature it already carries is replaced).
        refresh
            Fetch a new token even if the cached one looks valid (after an HTTP 403).
        """
        key = self._key(href)
        if key is None:
            return href
        with _LOCK:
            cached = _TOKENS.get(key)
        if refresh or cached is None or cached[1] - time.time() < self.margin_s:
            try:
                cached = self._fetch(key)
            except CatalogError:
                raise
            except Exception as err:
                raise CatalogError(f"getting a signing token for {strip_secrets(href)} failed: "
                                   f"{strip_secrets(str(err))[:300]}",
                                   hint="check the token endpoint and the network") from None
            with _LOCK:
                _TOKENS[key] = cached
                _STATS["tokens"] += 1
        return _with_token(href, cached[0])


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

    endpoint: str
    hosts: tuple[str, ...] = ()
    #: Renew a cached token when less than this many seconds of it are left.
    margin_s: float = 300.0

    def _key(self, href: str) -> str | None:
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https"):
            return None
        return self.endpoint if (parts.netloc in self.hosts
                                 or (parts.hostname or "") in self.hosts) else None

    def _fetch(self, key: str) -> tuple[str, float]:
        import requests

        answer = requests.get(key, timeout=30)
        answer.raise_for_status()
        body = answer.json()
        return str(body["token"]), _expiry(body["msft:expiry"])


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

    def _key(self, href: str) -> str | None:
        host = (urlsplit(href).hostname or "").lower()
        if not host.endswith(".blob.core.windows.net") or host.startswith(
                "ai4edatasetspublicassets."):
            return None
        parts = urlsplit(href)
        container = parts.path.lstrip("/").split("/", 1)[0]
        return f"{host.split('.', 1)[0]}/{container}"

    def _fetch(self, key: str) -> tuple[str, float]:
        sas = _planetary_computer().sas
        account, container = key.split("/", 1)
        # The package caches too, renewing only under 60 s: drop its entry so a refresh (or
        # our larger margin) really gets a new token.
        url = f"{sas.Settings.get().sas_url}/{account}/{container}"
        sas.TOKEN_CACHE.pop(url, None)
        token = sas.get_token(account, container)
        return str(token.token), token.expiry.timestamp()


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


def activate(signers: Sequence[HrefSigner]) -> None:
    """Set the signers of the run this process reads for (each chunk task calls it)."""
    _ACTIVE[0] = tuple(signers)


def sign(href: str, refresh: bool = False) -> str:
    """``href`` signed by the active signers (unchanged when none owns it)."""
    for signer in _ACTIVE[0]:
        signed = signer.sign(href, refresh=refresh)
        if signed != href:
            return signed
    return href


def sign_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``items`` with every asset href signed (for readers geoflow cannot hook)."""
    if not _ACTIVE[0]:
        return items
    return [{**it, "assets": {k: {**a, "href": sign(str(a["href"]))}
                              for k, a in (it.get("assets") or {}).items()}} for it in items]


_FORBIDDEN = re.compile(r"(?i)\b403\b|forbidden|authenticationfailed|accessdenied")


def _forbidden(err: BaseException, *urls: str) -> bool:
    """Whether ``err`` is an HTTP 403 (the URLs themselves, which may hold "403", left out)."""
    text = str(err)
    for url in urls:
        text = text.replace(url, "")
    return bool(_FORBIDDEN.search(text))


def open_raster(href: str) -> Any:
    """``rasterio.open`` of ``href`` signed just now; on HTTP 403, re-signed with a new token
    and opened once more (counted in :func:`stats`)."""
    import rasterio

    if not _ACTIVE[0]:
        return rasterio.open(href)
    url = sign(href)
    try:
        return rasterio.open(url)
    except Exception as err:
        if url == href or not _forbidden(err, url, href):
            raise
    from geoflow.retry import clear_gdal_http_cache

    clear_gdal_http_cache()  # GDAL keeps a failed answer for the process
    with _LOCK:
        _STATS["resigned"] += 1
    return rasterio.open(sign(href, refresh=True))


def stats() -> dict[str, int]:
    """This process's counts: ``tokens`` fetched, hrefs ``resigned`` after an HTTP 403."""
    with _LOCK:
        return dict(_STATS)


def reset() -> None:
    """Forget cached tokens and counts (tests)."""
    with _LOCK:
        _TOKENS.clear()
        _STATS.update(tokens=0, resigned=0)


__all__ = ["HrefSigner", "PlanetaryComputerSigner", "SasTokenSigner", "activate",
           "open_raster", "resolve_signer", "sign", "sign_items", "stats"]
