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


class GeoflowError(Exception):
    """Base of every error geoflow raises on purpose.

    Parameters
    ----------
    message
        What went wrong, in the user's terms.
    hint
        How to fix it; appended to ``str(err)`` after ``"Fix: "``.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}. Fix: {hint}")


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


class StoreError(GeoflowError):
    """A Zarr map store cannot be created, opened or written."""


class StoreMismatchError(StoreError):
    """An existing store was written for another grid, request or model version."""


class RunFailedError(GeoflowError):
    """A regional run finished with failed chunks; ``failures`` lists them with reasons."""

    def __init__(
        self, message: str, *, failures: dict[str, str] | None = None, hint: str | None = None
    ) -> None:
        self.failures = dict(failures or {})
        super().__init__(message, hint=hint)


__all__ = [
    "ArchiveError",
    "CatalogError",
    "CheckpointError",
    "CubeError",
    "GeoflowError",
    "ModelError",
    "NoScenesError",
    "RequestError",
    "RunFailedError",
    "ServerError",
    "StoreError",
    "StoreMismatchError",
    "UnknownCollectionError",
]
