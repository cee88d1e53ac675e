"""One vendor token call over the shared client, mapped onto :mod:`app.providers.errors`.

Shared by every vendor module: the bounded POST, the status → exception mapping, the
``Retry-After`` parser and the scrubbing of vendor messages. Vendor modules supply only
what differs: the URL, the body, where their error code and message live, and how to
read a token's expiry.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import re
import time
import unicodedata
import urllib.parse
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, cast

import httpx
import orjson
from pydantic import SecretStr

from app.bodies import ACCEPT_ENCODING, BodyRefused, declared_too_large, read_bounded
from app.providers.errors import (
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderConnectError,
    ProviderError,
    ProviderProxyError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
)

log = logging.getLogger("token_broker.providers")

CONNECT_TIMEOUT_SECONDS = 2.0
MAX_RESPONSE_BYTES = 64 * 1024
"""A token answer is a few hundred bytes; anything past this is not read at all."""
MAX_TOKEN_CHARS = 16 * 1024
MAX_MESSAGE_CHARS = 200

# A token goes into an HTML attribute and a JSON body, so only the vendors' own token
# alphabets pass: a compact JWS (three base64url segments: Embeddable, Superset,
# Preset) or a UUID (Databrain). Anything else (quotes, <, >, spaces) is a vendor or a
# middlebox misbehaving: upstream_bad_response.
_TOKEN_RE = re.compile(
    r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
)
_VENDOR_CODE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?")
_BEARER_RE = re.compile(r"(?i)\bbearer\s+\S+")
# Opaque runs this long are keys or tokens far more often than words a person needs;
# UUIDs are kept: they name dashboards and embeddables in vendor messages.
_OPAQUE_RE = re.compile(r"[A-Za-z0-9_\-+/=]{32,}")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_CONTROL_OR_SPACE_RE = re.compile(r"[\s\x00-\x1f\x7f]+")
_SECONDS_RE = re.compile(r"\d{1,10}(?:\.\d{1,6})?")
REDACTED = "[redacted]"

ErrorExtractor = Callable[[Any], tuple[str | None, str | None]]
"""Parsed JSON error body → (vendor code, vendor message); either may be None."""
CredentialCheck = Callable[[int, str | None], bool]
"""(4xx status, vendor code) → whether the vendor refused the broker's own credential."""


def refused_credential(status: int, code: str | None) -> bool:
    """HTTP's meaning: 401 is about credentials; 403 and the rest are about the request."""
    return status == 401


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling: names every exception raised and scrubs every message."""

    provider: str
    region: str | None
    secrets: tuple[SecretStr, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        return scrub_message(text, (s.get_secret_value() for s in self.secrets))

    def bad_response(self, reason: str) -> ProviderBadResponse:
        log.warning(
            "provider.bad_response",
            extra={"provider": self.provider, "region": self.region, "reason": reason},
        )
        return ProviderBadResponse(
            f"the vendor answered without a usable token ({reason})",
            provider=self.provider,
            region=self.region,
        )


@dataclass(frozen=True, slots=True)
class VendorResponse:
    status: int
    headers: httpx.Headers
    body: bytes = field(repr=False)
    complete: bool
    """False when the body was larger than MAX_RESPONSE_BYTES or could not be decoded."""

    def json(self) -> Any:
        """The parsed body, or None when it is absent, truncated or not JSON."""
        if not self.complete or not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


USER_AGENT = "token-broker"


@dataclass(frozen=True, slots=True)
class VendorEndpoint:
    """A vendor's token URL with everything a call to it needs, prepared once.

    Built once per provider and region (from the policy; rebuilt on reload): the parsed
    URL, the request headers, httpx's timeout extension, and the :class:`CallContext`
    that names and scrubs the call's errors. A call then only serializes its body.
    """

    url: httpx.URL
    headers: httpx.Headers = field(repr=False)
    timeout_seconds: float
    timeouts: Mapping[str, float | None]
    context: CallContext

    @classmethod
    def prepare(
        cls, url: str, *, api_key: SecretStr, timeout_seconds: float, context: CallContext
    ) -> VendorEndpoint:
        headers = httpx.Headers(
            {
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                # Identity: the size cap on bodies then bounds what is held in memory
                # (a small gzip body can inflate a thousandfold; app.bodies).
                "Accept-Encoding": ACCEPT_ENCODING,
                "Content-Type": "application/json",
                "Authorization": f"Bearer {api_key.get_secret_value()}",
            }
        )
        timeouts = httpx.Timeout(
            timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds)
        )
        return cls(httpx.URL(url), headers, timeout_seconds, timeouts.as_dict(), context)


async def post_json(
    client: httpx.AsyncClient, endpoint: VendorEndpoint, body: Mapping[str, Any]
) -> VendorResponse:
    """POST ``body`` as JSON once over the process's outbound client; read at most
    MAX_RESPONSE_BYTES of the answer.

    Through the client, so its proxy routes, TLS settings and pool apply; it keeps no
    cookies and follows no redirects (app.outbound). Transport failures become
    ProviderConnectError (ProviderProxyError when the proxy failed) / ProviderTimeout;
    any status is returned as is. The httpx exception is not chained: its request
    carries the key.
    """
    request = httpx.Request(
        "POST",
        endpoint.url,
        headers=endpoint.headers,
        content=orjson.dumps(body),
        extensions={"timeout": endpoint.timeouts},
    )
    return await send(client, request, endpoint)


async def send(
    client: httpx.AsyncClient, request: httpx.Request, endpoint: VendorEndpoint
) -> VendorResponse:
    """Send a prepared request once, with :func:`post_json`'s bounds and error mapping
    (for vendors whose token takes calls of other shapes: Superset's login, CSRF and
    guest-token calls)."""
    context = endpoint.context
    failure: ProviderError
    try:
        # httpx's timeouts bound each read; this bounds the whole call (slow-drip bodies).
        async with asyncio.timeout(endpoint.timeout_seconds):
            return await _exchange(client, request)
    except (httpx.TimeoutException, TimeoutError):
        failure = ProviderTimeout(
            f"no answer within {endpoint.timeout_seconds:g} s",
            provider=context.provider,
            region=context.region,
        )
    except httpx.ProxyError as exc:
        failure = ProviderProxyError(str(exc), provider=context.provider, region=context.region)
    except httpx.TransportError as exc:
        failure = ProviderConnectError(
            f"connection failed before an answer ({type(exc).__name__})",
            provider=context.provider,
            region=context.region,
        )
    raise failure


async def _exchange(client: httpx.AsyncClient, request: httpx.Request) -> VendorResponse:
    response = await client.send(request, stream=True)
    try:
        body, complete = await _read_bounded(response)
    finally:
        await response.aclose()
        # httpx's client binds the stream to its response (a reference cycle): cut it,
        # so the call is freed by reference counting, not by a pausing full collection.
        response.stream = _DONE
    return VendorResponse(response.status_code, response.headers, body, complete)


_DONE = httpx.ByteStream(b"")


async def _read_bounded(response: httpx.Response) -> tuple[bytes, bool]:
    """The body as :func:`app.bodies.read_bounded` reads it, or (b"", False)."""
    if declared_too_large(response.headers.get("content-length"), MAX_RESPONSE_BYTES):
        return b"", False
    try:
        body = await read_bounded(
            # The transport's raw chunks: no httpx decoder, read_bounded decodes.
            cast(AsyncIterable[bytes], response.stream),
            content_encoding=response.headers.get("content-encoding"),
            limit=MAX_RESPONSE_BYTES,
        )
    except BodyRefused:
        return b"", False
    return body, True


def raise_for_failure(
    response: VendorResponse,
    context: CallContext,
    extract_error: ErrorExtractor,
    is_credential_error: CredentialCheck = refused_credential,
) -> None:
    """Raise the ProviderError for any non-2xx answer; return for 2xx.

    Only what ``is_credential_error`` (the vendor's own rule) calls a credential error
    is ProviderAuthFailed: operators rotate keys on it, so a body problem must not
    look like one.
    """
    status = response.status
    if 200 <= status < 300:
        return
    code, message = _vendor_error(response, context, extract_error)
    described = describe_status(status, code, message)
    provider, region = context.provider, context.region
    if status == 429:
        raise ProviderRateLimited(
            described,
            provider=provider,
            region=region,
            retry_after_seconds=parse_retry_after(response.headers.get("retry-after")),
        )
    if 400 <= status < 500 and is_credential_error(status, code):
        raise ProviderAuthFailed(
            described, provider=provider, region=region, status=status, vendor_code=code
        )
    if 400 <= status < 500:
        raise ProviderRejected(
            described, provider=provider, region=region, status=status, vendor_code=code
        )
    if 500 <= status < 600:
        raise ProviderServerError(
            described, provider=provider, region=region, status=status, vendor_code=code
        )
    raise context.bad_response(f"unexpected status {status}")


def _vendor_error(
    response: VendorResponse, context: CallContext, extract_error: ErrorExtractor
) -> tuple[str | None, str | None]:
    payload = response.json()
    if payload is None:
        return None, None
    try:
        code, message = extract_error(payload)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None, None
    # A code is shown verbatim, so one that scrubbing would change (a vendor echoing
    # the API key or a token in it) is dropped rather than partly redacted.
    if code is not None and (not _VENDOR_CODE_RE.fullmatch(code) or context.scrub(code) != code):
        code = None
    if message is not None:
        message = context.scrub(message) or None
    return code, message


def describe_status(status: int, code: str | None, message: str | None) -> str:
    """``HTTP 400 INVALID_REQUEST_BODY: dataAppName ...``: what a person needs, nothing raw."""
    text = f"HTTP {status}"
    if code:
        text += f" {code}"
    if message:
        text += f": {message}"
    return text


def token_from_body(response: VendorResponse, context: CallContext) -> str:
    """The ``token`` of a 2xx ``{"token": "..."}`` body, or ProviderBadResponse."""
    if not response.complete:
        raise context.bad_response("body too large or undecodable")
    payload = response.json()
    if payload is None and response.body.strip() not in (b"", b"null"):
        raise context.bad_response("body is not JSON")
    if not isinstance(payload, dict):
        raise context.bad_response("body is not a JSON object")
    token = payload.get("token")
    if not isinstance(token, str) or not token:
        raise context.bad_response("no token field")
    if len(token) > MAX_TOKEN_CHARS:
        raise context.bad_response("token too long")
    if not _TOKEN_RE.fullmatch(token):
        raise context.bad_response("token has characters a token cannot have")
    return token


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP-date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS_RE.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC without a claim about local time
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def scrub_message(text: str, secrets: Iterable[str] = ()) -> str:
    """A vendor message made safe to log and show: no keys, tokens, control characters.

    A message that quotes a *variant* of a secret (lowercased, truncated, reversed,
    %-encoded, letter-spaced, full-width) is withheld whole: see :func:`quotes_a_secret`.
    """
    text = text[:MAX_SCANNED_MESSAGE_CHARS]
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, REDACTED)
            if quotes_a_secret(text, secret):
                return WITHHELD
    text = _BEARER_RE.sub(f"Bearer {REDACTED}", text)
    text = _JWT_RE.sub(REDACTED, text)
    text = _OPAQUE_RE.sub(_redact_opaque, text)
    text = _CONTROL_OR_SPACE_RE.sub(" ", text).strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


SECRET_RUN_CHARS = 12
"""A message sharing this many letters and digits in a row with a secret is withheld."""
MAX_SCANNED_MESSAGE_CHARS = 4 * 1024
WITHHELD = "[message withheld: it quoted a secret]"


def _fold(text: str) -> str:
    """Letters and digits only, case-folded, after %-decoding and NFKC (full-width → ASCII)."""
    for _ in range(3):  # double-encoded, too
        decoded = urllib.parse.unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(char for char in text if char.isalnum())


def quotes_a_secret(message: str, secret: str) -> bool:
    """True when ``message`` shares a run of SECRET_RUN_CHARS letters and digits (or all of
    a shorter secret) with ``secret``, read forwards or backwards, ignoring case,
    separators and %-encoding. Random keys share no such run with words by chance."""
    folded_secret = _fold(secret)
    run = min(SECRET_RUN_CHARS, len(folded_secret))
    if run < 4:
        return False
    folded = _fold(message)
    if len(folded) < run:
        return False
    backwards = folded[::-1]
    return any(
        folded_secret[start : start + run] in folded
        or folded_secret[start : start + run] in backwards
        for start in range(len(folded_secret) - run + 1)
    )


def _redact_opaque(match: re.Match[str]) -> str:
    return match.group() if _UUID_RE.fullmatch(match.group()) else REDACTED


def short_string(value: Any) -> str | None:
    """``value`` when it is a non-empty string (vendor error fields are loosely typed)."""
    return value if isinstance(value, str) and value.strip() else None


def require_positive_ttl(ttl_seconds: int) -> None:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be a positive integer")
