"""Search Sentinel-2 and Sentinel-1 scenes on any STAC API.

The bundled archive's server, Planetary Computer and Earth Search all work: the API URL and the
collection names are settings (:class:`CatalogSettings`). The cloud-cover limit is a cql2-json
filter (stac-fastapi rejects the cql2-text that pystac-client sends by default). Requests are
retried with exponential backoff on HTTP 429 and 5xx answers, on timeouts and on dropped
connections, as the run's :class:`~geoflow.retry.RetryPolicy` says. Items come back as plain
STAC item dicts (what stackstac reads: pystac's
objects would migrate ``proj:epsg`` away), sorted by datetime, with asset hrefs signed when a
signer is set.

Examples
--------
>>> from geoflow.catalog import CatalogSettings, search_scenes
>>> from geoflow.request import Request
>>> req = Request.from_user("11.0,45.0,11.1,45.1", "2024-06-01/2024-06-30", max_cloud=60)
>>> scenes = search_scenes(req, "http://127.0.0.1:8000")  # doctest: +SKIP
>>> scenes.summary()[0]  # doctest: +SKIP
{'id': 'S2A_...', 'sensor': 'S2', 'datetime': '2024-06-03T10:00:00Z', 'cloud_cover': 12.5}

Planetary Computer, with signed asset URLs (needs ``pip install planetary-computer``):

>>> pc = CatalogSettings("https://planetarycomputer.microsoft.com/api/stac/v1",
...                      signer="planetary-computer")
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from geoflow.errors import (
    CatalogError,
    DeadlineError,
    GeoflowError,
    NoScenesError,
    UnknownCollectionError,
    strip_secrets,
)
from geoflow.request import Request
from geoflow.retry import Clock, RetryPolicy

log = logging.getLogger(__name__)

#: A signer takes one STAC item dict and signs its asset hrefs in place (or returns a new one).
Signer = Callable[[dict[str, Any]], "dict[str, Any] | None"]

_RETRY_STATUS = (429, 500, 502, 503, 504)
_PAGE_SIZE = 100


@dataclass(frozen=True)
class CatalogSettings:
    """Where and how to search.

    Parameters
    ----------
    url
        STAC API root, e.g. ``"http://127.0.0.1:8000"`` (the bundled server),
        ``"https://planetarycomputer.microsoft.com/api/stac/v1"`` or
        ``"https://earth-search.aws.element84.com/v1"``.
    s2_collection, s1_collection
        Collection ids of Sentinel-2 L2A and Sentinel-1 RTC; None skips that sensor.
    signer
        None; a callable applied to each item dict to sign its asset hrefs (it may modify the
        dict in place or return a new one); or ``"planetary-computer"`` for
        ``planetary_computer.sign_inplace`` (optional package ``planetary-computer``).
    headers
        Extra HTTP headers for every request (e.g. an API key; never logged).

    Retries, timeouts and the deadline are not settings of the catalog: they come from the
    run's :class:`geoflow.retry.RetryPolicy` (``search_scenes(..., retry=)``).

    Examples
    --------
    >>> CatalogSettings("https://earth-search.aws.element84.com/v1", s1_collection=None).url
    'https://earth-search.aws.element84.com/v1'
    """

    url: str
    s2_collection: str | None = "sentinel-2-l2a"
    s1_collection: str | None = "sentinel-1-rtc"
    signer: Signer | str | None = None
    headers: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        url = str(self.url).strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise CatalogError(f"catalog URL {strip_secrets(url)!r} is not an http(s) URL",
                               hint="pass the STAC API root, e.g. http://127.0.0.1:8000 or "
                                    "https://planetarycomputer.microsoft.com/api/stac/v1")
        object.__setattr__(self, "url", url)
        if not self.s2_collection and not self.s1_collection:
            raise CatalogError("both s2_collection and s1_collection are None",
                               hint="name at least one collection to search")
        if isinstance(self.signer, str) and self.signer != "planetary-computer":
            raise CatalogError(f"unknown signer {self.signer!r}",
                               hint="use None, a callable, or 'planetary-computer'")

    @classmethod
    def coerce(cls, value: CatalogSettings | str) -> CatalogSettings:
        """Settings from a URL string, or the settings themselves.

        Examples
        --------
        >>> CatalogSettings.coerce("http://127.0.0.1:8000/").url
        'http://127.0.0.1:8000'
        """
        if isinstance(value, CatalogSettings):
            return value
        if isinstance(value, str):
            return cls(value)
        raise CatalogError(f"catalog must be a URL or CatalogSettings, got {type(value).__name__}",
                           hint="pass the STAC API URL")


@dataclass
class SceneSet:
    """The scenes found for a request: raw STAC item dicts, sorted by datetime.

    Attributes
    ----------
    s2, s1
        Sentinel-2 and Sentinel-1 items (signed if the settings have a signer).
    request
        What was searched.
    settings
        Where it was searched.

    Examples
    --------
    >>> scenes = SceneSet(s2=[], s1=[])
    >>> scenes.summary()
    []
    """

    s2: list[dict[str, Any]]
    s1: list[dict[str, Any]]
    request: Request | None = None
    settings: CatalogSettings | None = None

    def __len__(self) -> int:
        return len(self.s2) + len(self.s1)

    def summary(self) -> list[dict[str, Any]]:
        """One row per scene: ``id``, ``sensor`` ("S2"/"S1"), ``datetime``, ``cloud_cover``.

        Rows are sorted by datetime; ``cloud_cover`` is None for Sentinel-1.

        Examples
        --------
        >>> item = {"id": "a", "properties": {"datetime": "2024-06-01T10:00:00Z",
        ...                                   "eo:cloud_cover": 12.5}}
        >>> SceneSet(s2=[item], s1=[]).summary()
        [{'id': 'a', 'sensor': 'S2', 'datetime': '2024-06-01T10:00:00Z', 'cloud_cover': 12.5}]
        """
        rows = [{"id": item["id"], "sensor": sensor,
                 "datetime": item.get("properties", {}).get("datetime"),
                 "cloud_cover": (item.get("properties", {}).get("eo:cloud_cover")
                                 if sensor == "S2" else None)}
                for sensor, items in (("S2", self.s2), ("S1", self.s1)) for item in items]
        return sorted(rows, key=lambda r: (str(r["datetime"]), r["sensor"], r["id"]))

    @property
    def ids(self) -> dict[str, list[str]]:
        """Item ids per sensor.

        Examples
        --------
        >>> SceneSet(s2=[{"id": "a"}], s1=[]).ids
        {'S2': ['a'], 'S1': []}
        """
        return {"S2": [i["id"] for i in self.s2], "S1": [i["id"] for i in self.s1]}


def _resolve_signer(signer: Signer | str | None) -> Signer | None:
    if signer is None or callable(signer):
        return signer
    if signer == "planetary-computer":
        try:
            import planetary_computer
        except ImportError:
            raise CatalogError("signer='planetary-computer' needs the planetary-computer "
                               "package, which is not installed",
                               hint="pip install 'geoflow[planetary-computer]', or pass "
                                    "signer=None for a catalog whose assets need no "
                                    "signing") from None
        return planetary_computer.sign_inplace
    raise CatalogError(f"unknown signer {signer!r}",
                       hint="use None, a callable, or 'planetary-computer'")


def _stac_io(settings: CatalogSettings, policy: RetryPolicy, clock: Clock) -> Any:
    """pystac-client's HTTP layer under ``policy``: retries on 429/5xx, timeouts and dropped
    connections, each request's timeout capped by what is left of the deadline, and no retry
    begun after it."""
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.exceptions import MaxRetryError, ResponseError
    from urllib3.util.retry import Retry

    class _DeadlineRetry(Retry):
        def increment(self, method: str | None = None, url: str | None = None,
                      response: Any = None, error: Exception | None = None,
                      _pool: Any = None, _stacktrace: Any = None) -> Self:
            if clock.expired:  # out of time: give up now, as when retries are exhausted
                raise MaxRetryError(_pool, url or "", error or ResponseError("deadline passed"))
            return super().increment(method, url, response, error, _pool, _stacktrace)

        def get_backoff_time(self) -> float:
            return min(super().get_backoff_time(), clock.remaining())

    class _DeadlineStacApiIO(StacApiIO):
        # StacApiIO reads self.timeout for each request: cap it by the deadline then.
        @property
        def timeout(self) -> Any:
            return clock.cap(self._base_timeout)

        @timeout.setter
        def timeout(self, value: Any) -> None:
            self._base_timeout = policy.timeout_s if value is None else value

    retries = policy.attempts - 1
    retry = _DeadlineRetry(
        # A refused connection is seldom transient (wrong URL, server not started): two
        # retries, not a minute of backoff, before saying so.
        total=retries, connect=min(retries, 2), read=retries, status=retries,
        backoff_factor=policy.backoff_s, backoff_max=30.0,
        status_forcelist=_RETRY_STATUS,
        # Search is a POST, which urllib3 does not retry by default; STAC searches are safe
        # to repeat.
        allowed_methods=None,
        respect_retry_after_header=True,
        # After the last retry, hand back the error answer so its status is reported.
        raise_on_status=False,
    )
    return _DeadlineStacApiIO(headers=settings.headers or None, max_retries=retry,
                              timeout=policy.timeout_s)


@dataclass(frozen=True)
class _Call:
    """One search's settings, retry policy and clock, passed down together."""

    settings: CatalogSettings
    policy: RetryPolicy
    clock: Clock


def _open_client(call: _Call) -> Any:
    from pystac_client import Client, ConformanceClasses
    from pystac_client.exceptions import APIError
    from pystac_client.warnings import NoConformsTo

    settings = call.settings
    stac_io = _stac_io(settings, call.policy, call.clock)
    try:
        with warnings.catch_warnings():
            # A catalog without conformance classes is reported below, as a CatalogError.
            warnings.simplefilter("ignore", NoConformsTo)
            client = Client.open(settings.url, stac_io=stac_io)
    except APIError as err:
        raise _api_error(call, err, "opening the catalog") from None
    except Exception as err:  # requests' and pystac's errors for unreachable/garbled URLs
        raise _api_error(call, err, "opening the catalog") from None
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise CatalogError(f"{strip_secrets(settings.url)} is a STAC catalog without item search "
                           "(a static catalog?)",
                           hint="pass the root of a STAC API (one with /search); to search a "
                                "geoflow archive directory, serve it with "
                                "`geoflow archive serve DIR`")
    return client


def _short(err: BaseException) -> str:
    text = strip_secrets(str(err)).strip().splitlines()
    first = text[0] if text else type(err).__name__
    return first[:300]


def _connection_reason(detail: str) -> str | None:
    text = detail.lower()
    for needle, reason in (("refused", "connection refused"),
                           ("name or service not known", "host not found"),
                           ("failed to resolve", "host not found"),
                           ("nodename nor servname", "host not found"),
                           ("timed out", "timed out"), ("timeout", "timed out"),
                           ("remotedisconnected", "connection dropped"),
                           ("connection aborted", "connection dropped"),
                           ("max retries exceeded", "no answer")):
        if needle in text:
            return reason
    return None


def _api_error(call: _Call, err: Exception, what: str) -> GeoflowError:
    settings = call.settings
    status = getattr(err, "status_code", None)
    detail = _short(err)
    if call.clock.expired:
        return DeadlineError(f"the deadline passed while {what} at {settings.url} "
                             f"(last answer: {detail})",
                             hint="check that the STAC API answers, or give the run more time "
                                  "with --deadline / retry.deadline_s")
    if status is None:
        reason = _connection_reason(detail)
        if reason:
            return CatalogError(f"cannot reach the STAC API at {strip_secrets(settings.url)} "
                                f"({reason})",
                                hint="check the URL and the network; for the bundled archive "
                                     "start `geoflow archive serve DIR` and pass the URL it "
                                     "prints")
        return CatalogError(f"{what} at {strip_secrets(settings.url)} failed: {detail}",
                            hint="check that the STAC API is running and reachable")
    retried = f" after {call.policy.attempts - 1} retries" if status in _RETRY_STATUS else ""
    return CatalogError(f"{what} at {strip_secrets(settings.url)} failed with HTTP {status}"
                        f"{retried}: {detail}",
                        hint="retry later, or allow more attempts (--retries, retry.attempts)"
                        if retried else "check the request and the catalog URL")


def _available_collections(client: Any) -> list[str]:
    try:
        return sorted(c.id for c in client.get_collections())
    except Exception:  # best effort, only for the error message
        return []


def _check_collection(client: Any, call: _Call, name: str) -> None:
    from pystac_client.exceptions import APIError

    settings = call.settings
    try:
        found = client.get_collection(name)
        # None on 404; without /collections, pystac-client may hand back another collection.
        if found is not None and getattr(found, "id", None) == name:
            return
    except APIError as err:
        if getattr(err, "status_code", None) not in (404, None):
            raise _api_error(call, err, f"reading collection {name!r}") from None
    except Exception as err:
        # pystac-client raises its own errors (not APIError) for some "not found" answers.
        if "not found" not in str(err).lower() and "404" not in str(err):
            raise CatalogError(f"reading collection {name!r} at {strip_secrets(settings.url)} "
                               f"failed: {_short(err)}",
                               hint="check that the STAC API is running") from None
    available = _available_collections(client)
    listed = ", ".join(available) if available else "(none listed)"
    raise UnknownCollectionError(
        f"collection {name!r} does not exist at {strip_secrets(settings.url)}; "
        f"available: {listed}",
        hint="name one of the available collections (CatalogSettings s2_collection / "
             "s1_collection; CLI --s2-collection / --s1-collection)")


def _search(client: Any, call: _Call, collection: str, request: Request,
            max_cloud: float | None) -> list[dict[str, Any]]:
    from pystac_client.exceptions import APIError

    settings = call.settings
    kwargs: dict[str, Any] = {
        "collections": [collection], "bbox": list(request.bbox), "datetime": request.datetime,
        "limit": _PAGE_SIZE,
    }
    if max_cloud is not None:
        kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]}
        kwargs["filter_lang"] = "cql2-json"
    try:
        search = client.search(**kwargs)
        items = list(search.item_collection_as_dict()["features"])
    except APIError as err:
        raise _api_error(call, err, f"searching {collection!r}") from None
    except Exception as err:
        raise CatalogError(f"searching {collection!r} at {strip_secrets(settings.url)} failed: "
                           f"{_short(err)}", hint="check that the STAC API is running") from None
    # Pages can overlap when the catalog changes under us: keep one copy of each id.
    unique = {item["id"]: item for item in items}
    return sorted(unique.values(),
                  key=lambda i: (str(i.get("properties", {}).get("datetime")), i["id"]))


def _sign(items: list[dict[str, Any]], signer: Signer | None) -> list[dict[str, Any]]:
    if signer is None:
        return items
    out = []
    for item in items:
        try:
            signed = signer(item)
        except Exception as err:
            raise CatalogError(f"signing the asset URLs of item {item.get('id')!r} failed: "
                               f"{_short(err)}",
                               hint="check the signer (and its network access)") from None
        out.append(signed if isinstance(signed, dict) else item)
    return out


def search_scenes(request: Request, settings: CatalogSettings | str, *,
                  retry: RetryPolicy | None = None, clock: Clock | None = None) -> SceneSet:
    """Find the Sentinel-2 and Sentinel-1 scenes for a request.

    Parameters
    ----------
    request
        Bbox, dates and the Sentinel-2 cloud limit (``max_cloud``, percent; applied to S2
        only, on ``eo:cloud_cover``).
    settings
        A :class:`CatalogSettings` or just the STAC API URL.
    retry
        Attempts, backoff and per-request timeout of each HTTP request (429, 5xx, timeouts
        and dropped connections are retried; ``Retry-After`` is honoured). Default
        :class:`~geoflow.retry.RetryPolicy()`.
    clock
        The command's deadline (default: ``retry.start()``): requests are cut short and no
        retry begins after it.

    Returns
    -------
    SceneSet
        Raw item dicts per sensor, sorted by datetime, signed if a signer is set.

    Raises
    ------
    CatalogError
        The API is unreachable or keeps failing (after retries); URLs in the message carry no
        credentials or query strings (tokens).
    DeadlineError
        The deadline passed before the search finished.
    UnknownCollectionError
        A configured collection does not exist; the message lists the available ones.
    NoScenesError
        A collection has no scene for the bbox and dates (and cloud limit).

    Examples
    --------
    >>> req = Request.from_user("11.0,45.0,11.1,45.1", "2024-06-01/2024-06-30")
    >>> scenes = search_scenes(req, "http://127.0.0.1:8000")  # doctest: +SKIP
    >>> sorted(scenes.ids)  # doctest: +SKIP
    ['S1', 'S2']
    """
    settings = CatalogSettings.coerce(settings)
    if not isinstance(request, Request):
        raise CatalogError(f"request must be a geoflow.request.Request, got "
                           f"{type(request).__name__}",
                           hint="build it with Request.from_user(bbox, dates, max_cloud)")
    signer = _resolve_signer(settings.signer)
    policy = retry or RetryPolicy()
    call = _Call(settings, policy, clock or policy.start())
    client = _open_client(call)
    found: dict[str, list[dict[str, Any]]] = {"s2": [], "s1": []}
    for key, collection, cloud in (("s2", settings.s2_collection, request.max_cloud),
                                   ("s1", settings.s1_collection, None)):
        if not collection:
            continue
        _check_collection(client, call, collection)
        items = _search(client, call, collection, request, cloud)
        if not items:
            limit = f" with cloud cover <= {cloud:g} %" if cloud is not None else ""
            raise NoScenesError(
                f"no {collection} scenes{limit} at {strip_secrets(settings.url)} for bbox "
                f"{list(request.bbox)} and dates {request.datetime}",
                hint="widen the bbox or the dates" + (", or raise the cloud limit"
                                                      if cloud is not None else ""))
        found[key] = _sign(items, signer)
        log.debug("%s: %d scenes", collection, len(items))
    return SceneSet(s2=found["s2"], s1=found["s1"], request=request, settings=settings)


def _fetch(client: Any, call: _Call, collection: str, ids: list[str]) -> list[dict[str, Any]]:
    from pystac_client.exceptions import APIError

    settings = call.settings
    found: dict[str, dict[str, Any]] = {}
    # Pages of ids: a long archive's ids do not fit one request.
    for start in range(0, len(ids), _PAGE_SIZE):
        batch = ids[start:start + _PAGE_SIZE]
        try:
            search = client.search(ids=batch, collections=[collection], limit=_PAGE_SIZE)
            items = list(search.item_collection_as_dict()["features"])
        except APIError as err:
            raise _api_error(call, err, f"fetching items of {collection!r} by id") from None
        except Exception as err:
            raise CatalogError(f"fetching items of {collection!r} by id at "
                               f"{strip_secrets(settings.url)} failed: {_short(err)}",
                               hint="check that the STAC API is running") from None
        # An API that ignores `ids` would hand back other items: keep only those asked for.
        found.update((i["id"], i) for i in items if i.get("id") in batch)
    return [found[i] for i in ids if i in found]


def fetch_scenes(settings: CatalogSettings | str, s2_ids: list[str], s1_ids: list[str], *,
                 retry: RetryPolicy | None = None, clock: Clock | None = None) -> SceneSet:
    """Fetch exactly the Sentinel-2 and Sentinel-1 items named, by id (no search).

    Reprocessing reads the items a map recorded, so that what changes is the model alone;
    a catalog that gained scenes since does not change the inputs.

    Parameters
    ----------
    settings
        A :class:`CatalogSettings` (its ``s2_collection`` / ``s1_collection`` are where the
        ids are looked up) or just the STAC API URL.
    s2_ids, s1_ids
        Item ids per sensor (duplicates are fetched once).
    retry, clock
        As for :func:`search_scenes`.

    Returns
    -------
    SceneSet
        The items, sorted by datetime, signed if a signer is set.

    Raises
    ------
    CatalogError
        An item is no longer in the catalog (the message names it), or the API fails.
    DeadlineError
        The deadline passed first.

    Examples
    --------
    >>> scenes = fetch_scenes("http://127.0.0.1:8000", ["S2A_x"], [])  # doctest: +SKIP
    >>> scenes.ids  # doctest: +SKIP
    {'S2': ['S2A_x'], 'S1': []}
    """
    settings = CatalogSettings.coerce(settings)
    signer = _resolve_signer(settings.signer)
    policy = retry or RetryPolicy()
    call = _Call(settings, policy, clock or policy.start())
    client = _open_client(call)
    found: dict[str, list[dict[str, Any]]] = {"s2": [], "s1": []}
    missing: list[str] = []
    for key, collection, ids in (("s2", settings.s2_collection, s2_ids),
                                 ("s1", settings.s1_collection, s1_ids)):
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if not wanted:
            continue
        if not collection:
            missing.extend(f"{i} (no {key.upper()} collection set)" for i in wanted)
            continue
        items = _fetch(client, call, collection, wanted)
        got = {i["id"] for i in items}
        missing.extend(f"{collection}/{i}" for i in wanted if i not in got)
        found[key] = sorted(_sign(items, signer), key=lambda i: (
            str(i.get("properties", {}).get("datetime")), i["id"]))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                           if len(missing) > 10 else "")
        raise CatalogError(f"{len(missing)} pinned item(s) are no longer in the catalog at "
                           f"{strip_secrets(settings.url)}: {shown}",
                           hint="pass the catalog that holds them (--catalog), or search "
                                "again with --research (research=True): the new map then "
                                "reflects the changed inputs as well as the model")
    return SceneSet(s2=found["s2"], s1=found["s1"], settings=settings)


__all__ = ["CatalogSettings", "SceneSet", "Signer", "fetch_scenes", "search_scenes"]
