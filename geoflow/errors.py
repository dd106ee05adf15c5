"""One exception hierarchy for geoflow, rooted at :class:`GeoflowError`.

Catch ``GeoflowError`` to handle anything geoflow raises on purpose. Every error names
what was wrong and, through ``hint``, how to fix it; ``str(err)`` carries both.

Examples
--------
>>> from geoflow.errors import GeoflowError, RequestError
>>> try:
...     raise RequestError("bbox west (12.0) is not less than east (11.0)",
...                        hint="pass the bbox as W,S,E,N")
... except GeoflowError as err:
...     print(err.hint)
pass the bbox as W,S,E,N
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
# key=value pairs outside URLs (a DSN, a GDAL option, an environment dump).
_SECRET_PAIR = re.compile(r"(?i)\b((?:[a-z0-9_]*_)?(?:password|passwd|token|secret|api[_-]?key|"
                          r"access[_-]?key(?:[_-]?id)?|signature|sig|credential)s?)"
                          r"(\s*[=:]\s*)(['\"]?)[^\s'\"&;,]+")


def _strip_url(url: str) -> str:
    """Drop user info, query string and fragment: where URLs carry passwords and tokens."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def strip_secrets(text: str) -> str:
    """``text`` without credentials: URLs lose user info (``user:password@``), query strings
    and fragments (signed URLs keep their tokens there); ``password=...``-like pairs lose
    their values.

    Every :class:`GeoflowError` message and hint passes through it, so an error can quote a
    URL without leaking what it was signed with.

    Examples
    --------
    >>> strip_secrets("GET https://x.blob.core.windows.net/a/b.tif?st=1&sig=abc failed")
    'GET https://x.blob.core.windows.net/a/b.tif failed'
    >>> strip_secrets("cannot reach http://ann:s3cret@stac.example.com/api")
    'cannot reach http://stac.example.com/api'
    >>> strip_secrets("dsn host=db password=hunter2 user=geoflow")
    'dsn host=db password=*** user=geoflow'
    """
    text = _URL.sub(lambda m: _strip_url(m.group(0)), str(text))
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}***", text)


class GeoflowError(Exception):
    """Base of every error geoflow raises on purpose.

    Parameters
    ----------
    message
        What went wrong, in the user's terms (credentials in it are removed).
    hint
        How to fix it; appended to ``str(err)`` after ``"Fix: "``.

    Attributes
    ----------
    exit_code
        The status the ``geoflow`` command exits with for this error (see the README's
        "Errors and exit codes").
    """

    #: Bad input or configuration, or a service geoflow depends on failed.
    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = strip_secrets(message)
        self.hint = None if hint is None else strip_secrets(hint)
        super().__init__(self.message if self.hint is None
                         else f"{self.message}. Fix: {self.hint}")


class RequestError(GeoflowError, ValueError):
    """A request (bbox, dates, grid, options) is invalid."""


class CatalogError(GeoflowError):
    """The STAC API could not be reached or answered with an error."""


class UnknownCollectionError(CatalogError):
    """A collection named in the settings does not exist in the catalog."""


class NoScenesError(CatalogError):
    """A search found no scenes for a collection, bbox and date range."""


class ArchiveError(GeoflowError):
    """The bundled sample archive is missing, incomplete or inconsistent."""


class ServerError(GeoflowError):
    """The local STAC API (PostgreSQL, pgstac, uvicorn) failed to start or stopped."""


class CubeError(GeoflowError):
    """Scenes could not be turned into a cube (grids, bands or assets do not fit)."""


class ModelError(GeoflowError):
    """A model could not be built, trained or run."""


class CheckpointError(ModelError):
    """A checkpoint is missing, truncated, tampered with or incompatible."""


class ModelNotFoundError(CheckpointError):
    """A model name (or ``NAME@VERSION``) is not in the local model registry."""


class StoreError(GeoflowError):
    """A Zarr map store cannot be created, opened or written."""


class StoreMismatchError(StoreError):
    """An existing store was written for another grid, request or model version."""


class StoreDamagedError(StoreError):
    """A map store's metadata or ledger is unreadable, or its chunks fail verification."""


class DeadlineError(GeoflowError):
    """A command ran past its deadline (:attr:`geoflow.retry.RetryPolicy.deadline_s`)."""

    exit_code = 3


class RunFailedError(GeoflowError):
    """A regional run finished with failed chunks; ``failures`` lists them with reasons."""

    exit_code = 1

    def __init__(
        self, message: str, *, failures: dict[str, str] | None = None, hint: str | None = None
    ) -> None:
        self.failures = {k: strip_secrets(v) for k, v in (failures or {}).items()}
        super().__init__(message, hint=hint)


__all__ = [
    "ArchiveError",
    "CatalogError",
    "CheckpointError",
    "CubeError",
    "DeadlineError",
    "GeoflowError",
    "ModelError",
    "ModelNotFoundError",
    "NoScenesError",
    "RequestError",
    "RunFailedError",
    "ServerError",
    "StoreDamagedError",
    "StoreError",
    "StoreMismatchError",
    "UnknownCollectionError",
    "strip_secrets",
]
