"""JWKS caches, one per (issuer, jwks_url), owned by a process-wide :class:`JwksStore`.

- Fetched with the process's outbound ``httpx.AsyncClient`` (app.outbound: proxies, CA
  bundle, client certificate); the body is capped and validated
  (a JSON object with a ``keys`` list; malformed or unusable keys are skipped).
- Cached for the server's ``Cache-Control: max-age`` bounded to 5 min … 24 h (10 min
  when absent) and refreshed by a background task at 80 % of that lifetime.
- Stale-if-error: a failed refresh (including a document without one usable key)
  keeps the last good key set, logs and counts.
- An unknown ``kid`` may refetch, but every fetch of a source (scheduled or not) opens
  a 30 s window in which no other refetch starts, and concurrent callers share the
  one fetch in flight (single-flight). A burst of random ``kid``s costs one fetch.

The store outlives policy reloads: a new :class:`~app.auth.session.SessionVerifier`
asks for the same (issuer, url) and gets the same warm cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

import httpx

from app.bodies import ACCEPT_ENCODING, BodyRefused, declared_too_large, read_bounded
from app.jose_keys import KeyProblem, VerificationKey, key_from_jwk
from app.masking import mask_url
from app.observability.metrics import Metrics
from app.strict_json import StrictJsonError, loads_strict_json

log = logging.getLogger("token_broker.auth.jwks")

MIN_MAX_AGE_SECONDS: Final = 5 * 60
MAX_MAX_AGE_SECONDS: Final = 24 * 60 * 60
DEFAULT_MAX_AGE_SECONDS: Final = 10 * 60
REFRESH_AT_FRACTION: Final = 0.8
REFETCH_INTERVAL_SECONDS: Final = 30.0
RETRY_MIN_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 60.0
MAX_JWKS_BYTES: Final = 1024 * 1024
MAX_JWKS_KEYS: Final = 100
FETCH_TIMEOUT: Final = httpx.Timeout(5.0)
_MAX_AGE: Final = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)


class JwksFetchError(Exception):
    """A JWKS fetch failed; ``outcome`` is the bounded metric label."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable signing keys of one JWKS document."""

    keys: tuple[VerificationKey, ...]
    skipped: int = 0

    def with_kid(self, kid: str) -> list[VerificationKey]:
        return [key for key in self.keys if key.kid == kid]


def parse_jwks(body: bytes) -> KeySet:
    """Validate a JWKS document; unusable keys are skipped, a bad document raises."""
    try:
        document = loads_strict_json(body.decode("utf-8"), max_depth=8)
    except (UnicodeDecodeError, StrictJsonError):
        raise JwksFetchError("invalid") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError("invalid")
    entries = document["keys"]
    if len(entries) > MAX_JWKS_KEYS:
        raise JwksFetchError("too_large")
    keys: list[VerificationKey] = []
    for entry in entries:
        try:
            keys.append(key_from_jwk(entry))
        except KeyProblem:
            continue  # e.g. an encryption key, an OKP key, a malformed entry
    if not keys:
        # Treated as a failed refresh: an IdP mid-incident must not wipe good keys.
        raise JwksFetchError("no_usable_keys")
    return KeySet(keys=tuple(keys), skipped=len(entries) - len(keys))


def max_age_of(headers: httpx.Headers) -> float:
    """The cache lifetime the server asked for, bounded to [5 min, 24 h]."""
    match = _MAX_AGE.search(",".join(headers.get_list("cache-control")))
    if match is None:
        return DEFAULT_MAX_AGE_SECONDS
    return float(min(MAX_MAX_AGE_SECONDS, max(MIN_MAX_AGE_SECONDS, int(match.group(1)))))


class JwksSource:
    """The key cache of one issuer's JWKS URL."""

    def __init__(
        self,
        issuer: str,
        url: str,
        client: httpx.AsyncClient,
        metrics: Metrics | None,
        clock: Callable[[], float],
    ) -> None:
        self.issuer = issuer
        self.url = url
        self._client = client
        self._metrics = metrics
        self._clock = clock
        self._keys: KeySet | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._last_fetch_started: float | None = None
        self._next_refresh: float = 0.0  # clock time of the next scheduled fetch
        self._retry_delay = RETRY_MIN_SECONDS

    def __repr__(self) -> str:
        return (
            f"JwksSource(issuer={self.issuer!r}, url={mask_url(self.url)!r}, "
            f"has_keys={self.has_keys})"
        )

    @property
    def has_keys(self) -> bool:
        return self._keys is not None

    @property
    def keys(self) -> KeySet | None:
        """The last good key set, or None if no fetch has ever succeeded."""
        return self._keys

    @property
    def next_refresh_at(self) -> float:
        """Clock time of the next background fetch (before the cache lifetime ends)."""
        return self._next_refresh

    def start(self) -> None:
        """Start the background refresher (idempotent); the first fetch begins at once."""
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(
                self._refresh_forever(), name=f"jwks-refresh:{self.issuer}"
            )

    async def refetch(self) -> KeySet | None:
        """Fetch again because a key was not found, unless one fetched < 30 s ago.

        Joins the fetch in flight, if any; never starts more than one.
        """
        task = self._inflight
        if task is None:
            if (
                self._last_fetch_started is not None
                and self._clock() - self._last_fetch_started < REFETCH_INTERVAL_SECONDS
            ):
                return self._keys
            task = self._begin_fetch()
        # shield: a cancelled waiter must not cancel the fetch the others share
        await asyncio.shield(task)
        return self._keys

    def _begin_fetch(self) -> asyncio.Task[None]:
        self._last_fetch_started = self._clock()
        task = asyncio.create_task(self._fetch_and_store(), name=f"jwks-fetch:{self.issuer}")
        self._inflight = task
        return task

    async def _refresh_forever(self) -> None:
        while True:
            delay = self._next_refresh - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            task = self._inflight or self._begin_fetch()
            await asyncio.shield(task)

    async def _fetch_and_store(self) -> None:
        try:
            key_set, max_age = await self._fetch()
        except JwksFetchError as exc:
            self._record_failure(exc.outcome)
        except httpx.ProxyError as exc:
            self._record_failure("proxy_error", str(exc))  # names the proxy, not the IdP
        except httpx.HTTPError as exc:
            self._record_failure("unreachable", type(exc).__name__)
        except Exception as exc:  # never let a refresher die on a surprise
            log.exception("jwks.refresh_error", extra={"issuer": self.issuer})
            self._record_failure("error", type(exc).__name__)
        else:
            self._keys = key_set
            self._retry_delay = RETRY_MIN_SECONDS
            self._next_refresh = self._clock() + max_age * REFRESH_AT_FRACTION
            self._count("ok")
            log.info(
                "jwks.refreshed",
                extra={
                    "issuer": self.issuer,
                    "keys": len(key_set.keys),
                    "skipped_keys": key_set.skipped,
                    "max_age_seconds": max_age,
                },
            )
        finally:
            self._inflight = None

    async def _fetch(self) -> tuple[KeySet, float]:
        async with self._client.stream(
            "GET",
            self.url,
            headers={"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING},
            timeout=FETCH_TIMEOUT,
            follow_redirects=False,
        ) as response:
            if response.status_code != 200:
                raise JwksFetchError("http_error")
            if declared_too_large(response.headers.get("content-length"), MAX_JWKS_BYTES):
                raise JwksFetchError("too_large")
            try:
                body = await read_bounded(
                    response.aiter_raw(),  # undecoded: read_bounded bounds the decoding
                    content_encoding=response.headers.get("content-encoding"),
                    limit=MAX_JWKS_BYTES,
                )
            except BodyRefused as exc:
                raise JwksFetchError(
                    "too_large" if exc.reason == "too_large" else "invalid"
                ) from None
            return parse_jwks(body), max_age_of(response.headers)

    def _record_failure(self, outcome: str, reason: str | None = None) -> None:
        self._count(outcome)
        self._next_refresh = self._clock() + self._retry_delay
        self._retry_delay = min(RETRY_MAX_SECONDS, self._retry_delay * 2)
        log.warning(
            "jwks.refresh_failed",
            extra={
                "issuer": self.issuer,
                "outcome": outcome,
                "reason": reason or outcome,
                "keeps_stale_keys": self._keys is not None,
            },
        )

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.jwks_refresh_total.labels(issuer=self.issuer, outcome=outcome).inc()

    async def aclose(self) -> None:
        tasks = [task for task in (self._refresher, self._inflight) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._refresher = self._inflight = None


class JwksStore:
    """Owns JWKS caches for all issuers; lives for the whole process and survives
    policy reloads (keyed by issuer+jwks_url)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._clock = clock
        self._sources: dict[tuple[str, str], JwksSource] = {}

    def __repr__(self) -> str:
        return f"JwksStore(sources={len(self._sources)})"

    def source(self, issuer: str, url: str) -> JwksSource:
        """The cache for this issuer's URL, created on first use."""
        key = (issuer, url)
        found = self._sources.get(key)
        if found is None:
            found = self._sources[key] = JwksSource(
                issuer, url, self._client, self._metrics, self._clock
            )
        return found

    @property
    def sources(self) -> Mapping[tuple[str, str], JwksSource]:
        return self._sources

    async def prune(self, keep: Collection[tuple[str, str]]) -> None:
        """Stop and forget the caches of issuers a reload removed."""
        for key in [key for key in self._sources if key not in keep]:
            await self._sources.pop(key).aclose()

    async def aclose(self) -> None:
        """Stop every background refresh (the client is the caller's to close)."""
        for source in self._sources.values():
            await source.aclose()
