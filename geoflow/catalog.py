"""Search Sentinel-2 and Sentinel-1 scenes on any STAC API.

The bundled archive's server, Planetary Computer and Earth Search all work: the API URL and the
collections are settings (:class:`CatalogSettings`), and a catalog profile
(:mod:`geoflow.profiles`, guessed from the URL's host) says how the provider names its assets
and offsets its data. The cloud-cover limit is a cql2-json
filter (stac-fastapi rejects the cql2-text that pystac-client sends by default). Requests are
retried with exponential backoff on HTTP 429 and 5xx answers, on timeouts and on dropped
connections, as the run's :class:`~geoflow.retry.RetryPolicy` says. Items come back as plain
STAC item dicts in geoflow's canonical form (what stackstac reads: pystac's
objects would migrate ``proj:epsg`` away; asset keys ``B02`` .. ``SCL``, ``vv``, ``vh``; the DN
offset decided), sorted by datetime. Asset hrefs stay unsigned: the workers sign them just
before each read (:mod:`geoflow.signing`), so a run longer than a token's life goes on.
Sentinel-2 and Sentinel-1 may come from two catalogs (``{"s2": ..., "s1": ...}``), and items
searched elsewhere come in through :func:`scenes_from_items`.

Examples
--------
>>> from geoflow.catalog import CatalogSettings, search_scenes
>>> from geoflow.request import Request
>>> req = Request.from_user("11.0,45.0,11.1,45.1", "2024-06-01/2024-06-30", max_cloud=60)
>>> scenes = search_scenes(req, "http://127.0.0.1:8000")  # doctest: +SKIP
>>> scenes.summary()[0]  # doctest: +SKIP
{'id': 'S2A_...', 'sensor': 'S2', 'datetime': '2024-06-03T10:00:00Z', 'cloud_cover': 12.5}

Planetary Computer (profile and signer chosen from the host; signing needs
``pip install 'geoflow[planetary-computer]'``):

>>> pc = CatalogSettings("https://planetarycomputer.microsoft.com/api/stac/v1")
>>> pc.profile.name, pc.profile.signer
('planetary-computer', 'planetary-computer')
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
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
from geoflow.profiles import (
    Profile,
    get_profile,
    guess_profile,
    item_overlaps,
    missing_polarisations,
    normalize_item,
    sensor_of,
)
from geoflow.request import Request
from geoflow.retry import Clock, RetryPolicy
from geoflow.signing import HrefSigner, resolve_signer

log = logging.getLogger(__name__)

#: What ``signer=`` takes: None (the profile's), ``"planetary-computer"``, or an HrefSigner.
Signer = HrefSigner | str | None

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
        How the workers sign asset hrefs just before reading them: None (the profile's:
        Planetary Computer's for the ``planetary-computer`` profile, else none),
        ``"planetary-computer"``, or any :class:`geoflow.signing.HrefSigner` (picklable,
        ``sign(href, refresh=False) -> str``).
    headers
        Extra HTTP headers for every request (e.g. an API key; never logged).
    profile
        ``"planetary-computer"``, ``"earth-search"``, ``"generic"``, a
        :class:`geoflow.profiles.Profile`, or None: guessed from the URL's host.
    client
        A ``pystac_client.Client`` to search with instead of opening ``url`` (``url`` may
        then be omitted; the client's own HTTP settings apply, not the retry policy's).

    Retries, timeouts and the deadline are not settings of the catalog: they come from the
    run's :class:`geoflow.retry.RetryPolicy` (``search_scenes(..., retry=)``).

    Examples
    --------
    >>> CatalogSettings("https://earth-search.aws.element84.com/v1", s1_collection=None).url
    'https://earth-search.aws.element84.com/v1'
    """

    url: str = ""
    s2_collection: str | None = "sentinel-2-l2a"
    s1_collection: str | None = "sentinel-1-rtc"
    signer: Signer = None
    headers: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    profile: Any = field(default=None, hash=False, compare=False)
    client: Any = field(default=None, hash=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.client is not None and not self.url:
            href = self.client.get_self_href()
            if not re.match(r"^https?://", str(href or "")):
                raise CatalogError(f"the pystac_client.Client has no http(s) self link "
                                   f"({strip_secrets(str(href))})",
                                   hint="open it from the STAC API root: Client.open(URL)")
            object.__setattr__(self, "url", str(href))
        url = str(self.url).strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise CatalogError(f"catalog URL {strip_secrets(url)!r} is not an http(s) URL",
                               hint="pass the STAC API root, e.g. http://127.0.0.1:8000 or "
                                    "https://planetarycomputer.microsoft.com/api/stac/v1")
        object.__setattr__(self, "url", url)
        if not self.s2_collection and not self.s1_collection:
            raise CatalogError("both s2_collection and s1_collection are None",
                               hint="name at least one collection to search")
        if self.signer is not None and self.signer != "planetary-computer" and not isinstance(
                self.signer, HrefSigner):
            raise CatalogError(f"unknown signer {self.signer!r}",
                               hint="use None, 'planetary-computer', or an object with "
                                    "sign(href, refresh=False) -> str "
                                    "(geoflow.signing.HrefSigner)")
        prof = get_profile(self.profile, url)
        object.__setattr__(self, "profile", prof)
        if prof.s1_refusal and self.s1_collection:
            raise CatalogError(f"{prof.s1_refusal}; this catalog ({strip_secrets(url)}) cannot "
                               "give Sentinel-1",
                               hint="take Sentinel-1 RTC from Planetary Computer: catalog="
                                    "{'s2': URL, 's1': 'https://planetarycomputer.microsoft.com"
                                    "/api/stac/v1'} (CLI --s1-catalog URL), or pass "
                                    "s1_collection=None")

    def __repr__(self) -> str:
        # Without credentials (user:password@, tokens) or headers (API keys): reprs get logged.
        return (f"CatalogSettings({strip_secrets(self.url)!r}, profile={self.profile_name!r}, "
                f"s2_collection={self.s2_collection!r}, s1_collection={self.s1_collection!r}, "
                f"signer={_signer_name(self.signer)}"
                f"{', client=...' if self.client is not None else ''})")

    @property
    def profile_name(self) -> str:
        """The name of the profile in use."""
        return str(self.profile.name)

    def href_signer(self) -> HrefSigner | None:
        """The signer the workers use for this catalog's hrefs (resolved now, so a missing
        package is reported before anything runs)."""
        return resolve_signer(self.signer if self.signer is not None else self.profile.signer)

    @classmethod
    def coerce(cls, value: Any, profile: str | Profile | None = None, *,
               with_s1: bool = True) -> CatalogSettings:
        """Settings from a URL string, a ``pystac_client.Client``, or the settings themselves.

        A URL or client gets its profile's collections (``with_s1=False``: Sentinel-2 only).

        Examples
        --------
        >>> CatalogSettings.coerce("http://127.0.0.1:8000/").url
        'http://127.0.0.1:8000'
        """
        if isinstance(value, CatalogSettings):
            _check_profile_applies(value, profile)
            return value
        from pystac_client import Client

        if isinstance(value, str | Client):
            url = value if isinstance(value, str) else value.get_self_href()
            prof = get_profile(profile, url)
            if prof.s1_refusal and with_s1:
                # Said, not raised: a URL alone asks for "whatever this catalog has".
                log.warning("%s; mapping from Sentinel-2 only. For SAR pass catalog={'s2': URL, "
                            "'s1': 'https://planetarycomputer.microsoft.com/api/stac/v1'} "
                            "(CLI --s1-catalog)", prof.s1_refusal)
            kwargs: dict[str, Any] = {"s2_collection": prof.s2_collection, "profile": prof,
                                      "s1_collection": None if prof.s1_refusal or not with_s1
                                      else prof.s1_collection}
            if isinstance(value, str):
                return cls(value, **kwargs)
            return cls(client=value, **kwargs)
        raise CatalogError(f"catalog must be a URL, CatalogSettings or pystac_client.Client, got "
                           f"{type(value).__name__}",
                           hint="pass the STAC API URL, or {'s2': ..., 's1': ...} for one "
                                "catalog per sensor")


def _check_profile_applies(settings: CatalogSettings, profile: str | Profile | None) -> None:
    """``profile=`` beside ready-made settings would be ignored: refuse it unless it agrees."""
    if profile is None or get_profile(profile) == settings.profile:
        return
    name = profile if isinstance(profile, str) else profile.name
    raise CatalogError(f"profile={name!r} does not apply to a ready CatalogSettings (its "
                       f"profile is {settings.profile_name!r})",
                       hint=f"set it there: CatalogSettings(url, profile={name!r}), or pass "
                            "the URL with profile=")


def _check_s1_catalog(value: Any) -> None:
    """Refuse, before anything is said or searched, a Sentinel-1 catalog whose profile has no
    usable Sentinel-1 (Earth Search: GRD)."""
    url = value if isinstance(value, str) else getattr(value, "get_self_href", lambda: "")()
    prof = guess_profile(url)
    if prof.s1_refusal:
        raise CatalogError(f"{prof.s1_refusal}; {strip_secrets(str(url))} cannot be the "
                           "Sentinel-1 catalog",
                           hint="take Sentinel-1 RTC from Planetary Computer: catalog={'s2': "
                                "URL, 's1': 'https://planetarycomputer.microsoft.com/api/stac/"
                                "v1'} (CLI --s1-catalog URL), or leave 's1' out")


def _signer_name(signer: Any) -> str:
    """A signer for a repr: its name, or its type's (its fields may hold a token endpoint
    with credentials)."""
    if signer is None or isinstance(signer, str):
        return repr(signer)
    return type(signer).__name__


def split_catalogs(catalog: Any, profile: str | Profile | None = None
                   ) -> dict[str, CatalogSettings]:
    """Per sensor (``"s2"``, ``"s1"``), the settings to search it with.

    ``catalog`` is one catalog (URL, :class:`CatalogSettings`, ``pystac_client.Client``) for
    both sensors, or a mapping ``{"s2": ..., "s1": ...}`` (a missing or None entry skips that
    sensor). ``profile`` overrides the guess for URLs and clients.

    Examples
    --------
    >>> cats = split_catalogs({"s2": "https://earth-search.aws.element84.com/v1",
    ...                        "s1": "https://planetarycomputer.microsoft.com/api/stac/v1"})
    >>> cats["s2"].profile_name, cats["s1"].profile_name, cats["s2"].s1_collection
    ('earth-search', 'planetary-computer', None)
    """
    from dataclasses import replace

    if isinstance(catalog, Mapping):
        unknown = sorted(set(catalog) - {"s2", "s1"})
        if unknown:
            raise CatalogError(f"unknown catalog keys {unknown}",
                               hint="use {'s2': URL, 's1': URL}")
        out: dict[str, CatalogSettings] = {}
        for key in ("s2", "s1"):
            if catalog.get(key) is None:
                continue
            value = catalog[key]
            if isinstance(value, CatalogSettings) and key == "s2":
                _check_profile_applies(value, profile)
            if key == "s1" and not isinstance(value, CatalogSettings):
                _check_s1_catalog(value)
            out[key] = (value if isinstance(value, CatalogSettings)
                        else CatalogSettings.coerce(value, profile if key == "s2" else None,
                                                    with_s1=key == "s1" or "s1" not in catalog
                                                    or catalog["s1"] is None))
        if not out:
            raise CatalogError("the catalog mapping names no catalog",
                               hint="use {'s2': URL, 's1': URL}")
        if "s2" in out and "s1" in out:
            out["s2"] = replace(out["s2"], s1_collection=None)
        if "s1" in out:
            s1 = out["s1"]
            out["s1"] = replace(s1, s2_collection=None, s1_collection=s1.s1_collection
                                or s1.profile.s1_collection or "sentinel-1-rtc")
        return out
    return {"s2": CatalogSettings.coerce(catalog, profile)}


@dataclass
class SceneSet:
    """The scenes found for a request: raw STAC item dicts, sorted by datetime.

    Attributes
    ----------
    s2, s1
        Sentinel-2 and Sentinel-1 items, canonical; hrefs as the catalog gave them (the
        workers sign those a signer owns, just before each read).
    request
        What was searched.
    settings
        Where it was searched (Sentinel-2's catalog, or the only one).
    s1_settings
        Sentinel-1's catalog when it is another one.
    signers
        The signers the workers apply to the items' hrefs.

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
    s1_settings: CatalogSettings | None = None
    #: Out of the generated repr: a signer's fields may hold credentials (see __repr__).
    signers: tuple[HrefSigner, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        return (f"SceneSet(s2={len(self.s2)} items, s1={len(self.s1)} items, "
                f"settings={self.settings!r}, s1_settings={self.s1_settings!r}, "
                f"signers=({', '.join(_signer_name(s) for s in self.signers)}))")

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
    if settings.client is not None:  # the caller's own client: searched as it is
        return settings.client
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


def _normalize(items: list[dict[str, Any]], sensor: str, settings: CatalogSettings
               ) -> list[dict[str, Any]]:
    return [normalize_item(item, sensor, settings.profile) for item in items
            if sensor != "s1" or _dual_pol(item, settings.profile)]


def _dual_pol(item: Mapping[str, Any], profile: Profile) -> bool:
    """Whether a Sentinel-1 item holds both polarisations the model reads; one that does not
    (VV-only or HH/HV scenes) is left out with a log line instead of failing the search."""
    missing = missing_polarisations(item, profile)
    if missing:
        log.info("Sentinel-1 item %r left out: it has no %s asset (the model reads VV and VH)",
                 item.get("id"), " or ".join(missing))
    return not missing


def _signers(*settings: CatalogSettings | None) -> tuple[HrefSigner, ...]:
    out: list[HrefSigner] = []
    for s in settings:
        signer = s.href_signer() if s is not None else None
        if signer is not None and signer not in out:
            out.append(signer)
    return tuple(out)


def search_scenes(request: Request, settings: Any, *,
                  retry: RetryPolicy | None = None, clock: Clock | None = None,
                  profile: str | Profile | None = None) -> SceneSet:
    """Find the Sentinel-2 and Sentinel-1 scenes for a request.

    Parameters
    ----------
    request
        Bbox, dates and the Sentinel-2 cloud limit (``max_cloud``, percent; applied to S2
        only, on ``eo:cloud_cover``).
    settings
        A :class:`CatalogSettings`, the STAC API URL, a ``pystac_client.Client``, or
        ``{"s2": ..., "s1": ...}`` (one catalog per sensor).
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
        Canonical item dicts per sensor (:func:`geoflow.profiles.normalize_item`), sorted by
        datetime, unsigned; ``signers`` holds what the workers sign them with.
    profile
        Overrides the profile guessed from the URL (not for ready-made settings).

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
    if not isinstance(request, Request):
        raise CatalogError(f"request must be a geoflow.request.Request, got "
                           f"{type(request).__name__}",
                           hint="build it with Request.from_user(bbox, dates, max_cloud)")
    catalogs = split_catalogs(settings, profile)
    signers = _signers(*catalogs.values())  # a missing package is reported before searching
    policy = retry or RetryPolicy()
    clock = clock or policy.start()
    found: dict[str, list[dict[str, Any]]] = {"s2": [], "s1": []}
    for cat in catalogs.values():
        call = _Call(cat, policy, clock)
        client = _open_client(call)
        for key, collection, cloud in (("s2", cat.s2_collection, request.max_cloud),
                                       ("s1", cat.s1_collection, None)):
            if not collection:
                continue
            _check_collection(client, call, collection)
            items = _search(client, call, collection, request, cloud)
            if not items:
                limit = f" with cloud cover <= {cloud:g} %" if cloud is not None else ""
                raise NoScenesError(
                    f"no {collection} scenes{limit} at {strip_secrets(cat.url)} for bbox "
                    f"{list(request.bbox)} and dates {request.datetime}",
                    hint="widen the bbox or the dates" + (", or raise the cloud limit"
                                                          if cloud is not None else ""))
            found[key] = _normalize(items, key, cat)
            log.debug("%s: %d scenes", collection, len(items))
    return SceneSet(s2=found["s2"], s1=found["s1"], request=request,
                    settings=catalogs.get("s2"), s1_settings=catalogs.get("s1"),
                    signers=signers)


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


def fetch_scenes(settings: Any, s2_ids: list[str], s1_ids: list[str], *,
                 retry: RetryPolicy | None = None, clock: Clock | None = None) -> SceneSet:
    """Fetch exactly the Sentinel-2 and Sentinel-1 items named, by id (no search).

    Reprocessing reads the items a map recorded, so that what changes is the model alone;
    a catalog that gained scenes since does not change the inputs.

    Parameters
    ----------
    settings
        A :class:`CatalogSettings` (its ``s2_collection`` / ``s1_collection`` are where the
        ids are looked up), the STAC API URL, or ``{"s2": ..., "s1": ...}``.
    s2_ids, s1_ids
        Item ids per sensor (duplicates are fetched once).
    retry, clock
        As for :func:`search_scenes`.

    Returns
    -------
    SceneSet
        The canonical items, sorted by datetime, unsigned (see :func:`search_scenes`).

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
    catalogs = split_catalogs(settings)
    signers = _signers(*catalogs.values())
    policy = retry or RetryPolicy()
    clock = clock or policy.start()
    found: dict[str, list[dict[str, Any]]] = {"s2": [], "s1": []}
    missing: list[str] = []
    wanted_ids = {"s2": s2_ids, "s1": s1_ids}
    where = {key: cat for cat in catalogs.values() for key, coll in
             (("s2", cat.s2_collection), ("s1", cat.s1_collection)) if coll}
    clients: dict[int, Any] = {}  # one client per catalog, however many sensors it serves
    for key in ("s2", "s1"):
        wanted = list(dict.fromkeys(str(i) for i in wanted_ids[key]))
        if not wanted:
            continue
        cat = where.get(key)
        if cat is None:
            missing.extend(f"{i} (no {key.upper()} collection set)" for i in wanted)
            continue
        collection = str(cat.s2_collection if key == "s2" else cat.s1_collection)
        call = _Call(cat, policy, clock)
        if id(cat) not in clients:
            clients[id(cat)] = _open_client(call)
        items = _fetch(clients[id(cat)], call, collection, wanted)
        got = {i["id"] for i in items}
        missing.extend(f"{collection}/{i}" for i in wanted if i not in got)
        found[key] = sorted(_normalize(items, key, cat), key=lambda i: (
            str(i.get("properties", {}).get("datetime")), i["id"]))
    settings = catalogs.get("s2") or next(iter(catalogs.values()))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                           if len(missing) > 10 else "")
        raise CatalogError(f"{len(missing)} pinned item(s) are no longer in the catalog at "
                           f"{strip_secrets(settings.url)}: {shown}",
                           hint="pass the catalog that holds them (--catalog), or search "
                                "again with --research (research=True): the new map then "
                                "reflects the changed inputs as well as the model")
    return SceneSet(s2=found["s2"], s1=found["s1"], settings=catalogs.get("s2"),
                    s1_settings=catalogs.get("s1"), signers=signers)


def scenes_from_items(items: Any, profile: str | Profile | None = None,
                      signer: Any = None, request: Request | None = None) -> SceneSet:
    """A :class:`SceneSet` from items a user found: bring your own search.

    Parameters
    ----------
    items
        A pystac ``ItemCollection``, a list of pystac Items or item dicts, or a FeatureCollection
        dict. Sentinel-2 and Sentinel-1 are told apart by ``collection``, ``constellation`` or
        ``platform``; other items are an error.
    profile
        The items' catalog profile; None: guessed per item, in order, from the host of its
        ``self``, ``root`` or ``collection`` link; from its asset hosts
        (``*.blob.core.windows.net``: Planetary Computer); from an
        ``earthsearch:boa_offset_applied`` property (Earth Search); else ``generic``.
    signer
        As :class:`CatalogSettings`' ``signer``; None: the profiles' (Planetary Computer's
        signer for its items). Hrefs are kept as given: a signer that owns an href replaces
        the signature it carries on the workers; one no signer owns keeps its own.
    request
        If given, items outside its dates or bbox, and Sentinel-2 items cloudier
        (``eo:cloud_cover``) than its ``max_cloud``, are left out, as a search would (a
        Sentinel-2 scene must remain).

    Examples
    --------
    >>> scenes = scenes_from_items(search.item_collection())  # doctest: +SKIP
    >>> scenes.ids  # doctest: +SKIP
    {'S2': [...], 'S1': [...]}
    """
    if hasattr(items, "to_dict") and not hasattr(items, "assets"):
        items = items.to_dict()
    if isinstance(items, Mapping):
        items = items.get("features", [items] if "assets" in items else [])
    if isinstance(items, str | bytes) or not hasattr(items, "__iter__"):
        raise CatalogError(f"items must be an ItemCollection or a list of items, got "
                           f"{type(items).__name__}",
                           hint="pass search.item_collection() or a list of pystac Items")
    found: dict[str, list[dict[str, Any]]] = {"s2": [], "s1": []}
    origins: dict[str, set[tuple[str | None, str | None, str]]] = {"s2": set(), "s1": set()}
    profiles: list[Profile] = []
    for raw in items:
        item = raw.to_dict() if hasattr(raw, "to_dict") else raw
        if not isinstance(item, Mapping):
            raise CatalogError(f"{raw!r} is not a STAC item",
                               hint="pass pystac Items or STAC item dicts")
        sensor = sensor_of(item)
        if sensor is None:
            raise CatalogError(f"item {item.get('id')!r} is neither Sentinel-2 nor Sentinel-1 "
                               "(by collection, constellation or platform)",
                               hint="pass Sentinel-2 L2A and Sentinel-1 RTC items only")
        if request is not None and not _in_request(item, request, sensor):
            continue
        prof = get_profile(profile) if profile is not None else _item_profile(item)
        if sensor == "s1" and not _dual_pol(item, prof):
            continue
        if prof not in profiles:
            profiles.append(prof)
        origins[sensor].add((_root_href(item), item.get("collection"), prof.name))
        found[sensor].append(normalize_item(item, sensor, prof))
    if not found["s2"]:
        where = (f" in bbox {list(request.bbox)} and dates {request.datetime}"
                 + (f" with cloud cover <= {request.max_cloud:g} %"
                    if request.max_cloud is not None else "")
                 if request is not None else "")
        raise NoScenesError(f"the items hold no Sentinel-2 scene{where}",
                            hint="pass Sentinel-2 L2A items (and Sentinel-1 RTC items) of the "
                                 "region and period")
    out: list[HrefSigner] = []
    for prof in profiles:
        resolved = resolve_signer(signer if signer is not None else prof.signer)
        if resolved is not None and resolved not in out:
            out.append(resolved)
    key = lambda i: (str(i.get("properties", {}).get("datetime")), i["id"])  # noqa: E731
    settings, s1_settings = _items_catalogs(origins)
    return SceneSet(s2=sorted({i["id"]: i for i in found["s2"]}.values(), key=key),
                    s1=sorted({i["id"]: i for i in found["s1"]}.values(), key=key),
                    request=request, settings=settings, s1_settings=s1_settings,
                    signers=tuple(out))


def _root_href(item: Mapping[str, Any]) -> str | None:
    for link in item.get("links") or []:
        if isinstance(link, Mapping) and link.get("rel") == "root" and link.get("href"):
            return str(link["href"]).rstrip("/")
    return None


def _items_catalogs(origins: Mapping[str, set[tuple[str | None, str | None, str]]]
                    ) -> tuple[CatalogSettings | None, CatalogSettings | None]:
    """Where a user's items came from, by their ``root`` links: the map records it, so a
    reprocess fetches the same ids from the same catalog. None where some items do not say
    (no root link, several catalogs or collections for one sensor)."""
    one = {sensor: next(iter(o)) if len(o) == 1 and None not in next(iter(o))[:2] else None
           for sensor, o in origins.items()}
    s2, s1 = one["s2"], one["s1"]
    if s2 is None or (origins["s1"] and s1 is None):
        return None, None  # half a record would send a reprocess to the wrong place
    try:
        if s1 is not None and s1[0] == s2[0]:
            return CatalogSettings(s2[0] or "", s2_collection=s2[1], s1_collection=s1[1],
                                   profile=s2[2]), None
        settings = CatalogSettings(s2[0] or "", s2_collection=s2[1], s1_collection=None,
                                   profile=s2[2])
        return settings, (CatalogSettings(s1[0] or "", s2_collection=None,
                                          s1_collection=s1[1], profile=s1[2])
                          if s1 is not None else None)
    except CatalogError:  # a root that is no http(s) API (a static catalog's file)
        return None, None


def _in_request(item: Mapping[str, Any], request: Request, sensor: str) -> bool:
    """Whether an item's time falls in the request's dates, its bbox meets the region and (a
    Sentinel-2 item with ``eo:cloud_cover``) its cloud cover is within ``max_cloud``, as the
    search's filter would have it."""
    import pandas as pd

    props = item.get("properties") or {}
    cloud = props.get("eo:cloud_cover")
    if (sensor == "s2" and request.max_cloud is not None and cloud is not None
            and float(cloud) > float(request.max_cloud)):
        return False
    when = props.get("datetime") or props.get("start_datetime")
    if when:
        ts = pd.Timestamp(when)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        if not request.start <= ts <= request.end:  # a Request's ends are UTC already
            return False
    return item_overlaps(item, request.bbox)


def _item_profile(item: Mapping[str, Any]) -> Profile:
    for link in item.get("links") or []:
        if isinstance(link, Mapping) and link.get("rel") in ("self", "root", "collection"):
            prof = guess_profile(str(link.get("href", "")))
            if prof.name != "generic":
                return prof
    hosts = [str(a.get("href", "")) for a in (item.get("assets") or {}).values()
             if isinstance(a, Mapping)]
    if any(".blob.core.windows.net" in h for h in hosts):
        return get_profile("planetary-computer")
    if "earthsearch:boa_offset_applied" in (item.get("properties") or {}):
        return get_profile("earth-search")
    return get_profile("generic")


__all__ = ["CatalogSettings", "SceneSet", "Signer", "fetch_scenes", "scenes_from_items",
           "search_scenes", "split_catalogs"]
