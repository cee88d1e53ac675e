"""Session JWT verification (security.md "Session JWT validation").

Design choice: the broker checks the signature itself with
``jwk.construct(public_jwk, alg).verify(signing_input, signature)`` and checks every
claim itself, instead of calling ``jose.jwt.decode``. ``decode`` re-parses the token
leniently (padding, any JSON), resolves keys from the header when given a JWKS or a
PEM, applies claim defaults we would have to switch off one option at a time, and
raises a dozen exception types whose messages may quote the input. Here, the bytes
that were validated by the strict tokenizer are exactly the bytes that are verified,
the key is chosen only from the issuer named by ``iss`` (exact string match), and
every rule of the spec is one visible line with its own error detail.

Order of checks: size → shape/JSON → header (alg, crit, kid) → issuer → algorithm
allow-list → key → signature → claim types, audience, iat/nbf → user mapping → expiry.
Expiry comes last, so ``session_expired`` is only ever said of a token that is
correctly signed and otherwise valid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from app.auth.jwks import JwksSource, JwksStore, KeySet
from app.auth.tokenizer import UnverifiedToken, parse_compact_jws
from app.config.models import ClaimsConfig, IssuerConfig, SessionConfig
from app.config.templates import lookup_path
from app.errors import AuthenticationError, InvalidSession, SessionExpired
from app.jose_keys import (
    HMAC_ALGORITHMS,
    MAX_KID_CHARS,
    SUPPORTED_ALGORITHMS,
    HmacKey,
    KeyProblem,
    VerificationKey,
    key_from_pem,
    pem_key_problem,
)
from app.observability.metrics import Metrics

log = logging.getLogger("token_broker.auth")

DEFAULT_SESSION_CACHE_ENTRIES: Final = 10_000
MAX_LOGGED_ISSUER_CHARS: Final = 256
_ABSENT: Final = object()


@dataclass(frozen=True, slots=True)
class SessionUser:
    """The user a verified session JWT speaks for."""

    id: str
    tenants: tuple[str, ...]
    roles: tuple[str, ...]
    email: str | None
    claims: Mapping[str, Any] = field(repr=False)
    """The verified payload (top level read-only; treat nested values as read-only too)."""
    issuer: str
    expires_at: float
    session: bytes | None = field(default=None, repr=False, compare=False)
    """SHA-256 of the token this user was verified from: a value that fixes every claim."""


class ClaimPath:
    """A claim location such as ``org_id`` or ``realm_access.roles``.

    A key that itself contains dots (``https://example.com/org``, as Auth0 namespaces
    claims) is matched literally first; otherwise the path walks nested objects.
    """

    __slots__ = ("segments", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.segments = tuple(text.split("."))

    def __repr__(self) -> str:
        return f"ClaimPath({self.text!r})"

    def find(self, payload: Mapping[str, Any]) -> Any:
        if self.text in payload:
            return payload[self.text]
        if len(self.segments) > 1:
            try:
                return lookup_path(payload, self.segments)
            except KeyError:
                return _ABSENT
        return _ABSENT

    def place(self, payload: dict[str, Any], value: Any) -> None:
        """Put ``value`` at this path, creating nested objects (used to mint tokens)."""
        node = payload
        for segment in self.segments[:-1]:
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                raise ValueError(f"claim path {self.text!r} collides with another claim")
            node = child
        if self.segments[-1] in node:
            raise ValueError(f"claim path {self.text!r} collides with another claim")
        node[self.segments[-1]] = value


@dataclass(frozen=True, slots=True)
class _ClaimMap:
    user_id: ClaimPath
    tenants: ClaimPath
    roles: ClaimPath | None
    email: ClaimPath | None

    @classmethod
    def of(cls, claims: ClaimsConfig) -> _ClaimMap:
        return cls(
            user_id=ClaimPath(claims.user_id),
            tenants=ClaimPath(claims.tenants),
            roles=ClaimPath(claims.roles) if claims.roles else None,
            email=ClaimPath(claims.email) if claims.email else None,
        )


def _is_text(value: Any) -> bool:
    """A non-empty string that is valid Unicode (JSON ``\\ud800`` escapes are not)."""
    if not isinstance(value, str) or not value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string_list(value: Any) -> tuple[str, ...] | None:
    """A string or a list of strings, de-duplicated in order; None when malformed."""
    if isinstance(value, str):
        return (value,) if _is_text(value) else None
    if isinstance(value, list) and all(_is_text(item) for item in value):
        return tuple(dict.fromkeys(value))
    return None


class _TrustedIssuer:
    """One configured issuer with its keys, prepared once per policy."""

    __slots__ = ("algorithms", "audiences", "hmac", "jwks", "name", "static_key")

    def __init__(self, config: IssuerConfig, jwks: JwksStore) -> None:
        self.name = config.issuer
        self.audiences = frozenset(config.audiences)
        self.algorithms = frozenset(config.algorithms)
        self.hmac: HmacKey | None = None
        self.static_key: VerificationKey | None = None
        self.jwks: JwksSource | None = None
        # The loader already rejects these configs; re-checked here because a mixed
        # HS/RS issuer is exactly how key confusion happens.
        hmac_algs = self.algorithms & HMAC_ALGORITHMS
        if hmac_algs and hmac_algs != self.algorithms:
            raise ValueError(f"issuer {self.name!r}: HS* and RS*/ES* cannot be mixed")
        try:
            if hmac_algs:
                if config.secret is None:
                    raise ValueError(f"issuer {self.name!r}: HS* algorithms need a secret")
                self.hmac = HmacKey(config.secret, config.algorithms)
            elif config.public_key is not None:
                problem = pem_key_problem(config.public_key, config.algorithms)
                if problem is not None:
                    raise ValueError(f"issuer {self.name!r}: public_key: {problem}")
                self.static_key = key_from_pem(config.public_key)
            elif config.jwks_url is not None:
                self.jwks = jwks.source(self.name, str(config.jwks_url))
            else:
                raise ValueError(f"issuer {self.name!r}: needs jwks_url or public_key")
        except KeyProblem as exc:
            raise ValueError(f"issuer {self.name!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"_TrustedIssuer({self.name!r}, algorithms={sorted(self.algorithms)!r})"


class SessionCache:
    """Verified sessions by SHA-256 of the token: bounded LRU, never past ``exp``."""

    def __init__(self, max_entries: int, wall_clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[bytes, SessionUser] = OrderedDict()
        self._max_entries = max_entries
        self._wall_clock = wall_clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> SessionUser | None:
        user = self._entries.get(key)
        if user is None:
            return None
        if self._wall_clock() >= user.expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return user

    def put(self, key: bytes, user: SessionUser) -> None:
        if self._wall_clock() >= user.expires_at:
            return
        self._entries[key] = user
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class SessionVerifier:
    """Verifies session JWTs against one policy's ``session`` section."""

    def __init__(
        self,
        config: SessionConfig,
        jwks: JwksStore,
        *,
        metrics: Metrics | None = None,
        wall_clock: Callable[[], float] = time.time,
        cache_entries: int = DEFAULT_SESSION_CACHE_ENTRIES,
    ) -> None:
        self._issuers = {issuer.issuer: _TrustedIssuer(issuer, jwks) for issuer in config.issuers}
        self._claims = _ClaimMap.of(config.claims)
        self._leeway = float(config.leeway_seconds)
        self._max_token_bytes = config.max_token_bytes
        self._metrics = metrics
        self._cache_counters: dict[str, Any] = {}
        self._wall_clock = wall_clock
        self._cache = SessionCache(cache_entries, wall_clock)

    def __repr__(self) -> str:
        return f"SessionVerifier(issuers={sorted(self._issuers)!r})"

    @property
    def jwks_sources(self) -> list[tuple[str, str]]:
        """(issuer, url) of every JWKS this policy uses (for ``JwksStore.prune``)."""
        return [(t.jwks.issuer, t.jwks.url) for t in self._issuers.values() if t.jwks]

    async def start(self) -> None:
        """Start JWKS fetches in the background; returns at once."""
        for trusted in self._issuers.values():
            if trusted.jwks is not None:
                trusted.jwks.start()

    def not_ready(self) -> list[str]:
        """Issuers whose JWKS has never been fetched successfully."""
        return [
            name
            for name, trusted in self._issuers.items()
            if trusted.jwks is not None and not trusted.jwks.has_keys
        ]

    async def verify(self, token: str) -> SessionUser:
        """The user of a valid session token; raises InvalidSession or SessionExpired."""
        if not isinstance(token, str):
            raise InvalidSession("session token is not text")
        if len(token) > self._max_token_bytes:
            raise InvalidSession("session token is too large", reason="too_large")
        if not token.isascii():
            raise InvalidSession("session token segments must be unpadded base64url")
        cache_key = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._cache.get(cache_key)
        self._count_cache("hit" if cached is not None else "miss")
        if cached is not None:
            return cached
        user = await self._verify_uncached(
            parse_compact_jws(token, max_bytes=self._max_token_bytes), cache_key
        )
        self._cache.put(cache_key, user)
        return user

    async def _verify_uncached(self, token: UnverifiedToken, digest: bytes) -> SessionUser:
        named = token.payload.get("iss")
        trusted = self._issuers.get(named) if isinstance(named, str) else None
        try:
            return await self._verify_for(token, digest, named, trusted)
        except AuthenticationError as exc:
            # For the session.rejected audit event: which issuer's tokens fail, and why.
            exc.issuer = trusted.name if trusted is not None else _printable_issuer(named)
            raise

    async def _verify_for(
        self, token: UnverifiedToken, digest: bytes, named: Any, trusted: _TrustedIssuer | None
    ) -> SessionUser:
        alg = _checked_header(token.header)
        if not isinstance(named, str):
            raise InvalidSession(
                "token issuer (iss) is missing or not a string", reason="unknown_issuer"
            )
        if trusted is None:
            raise InvalidSession("token issuer is not trusted", reason="unknown_issuer")
        if alg not in trusted.algorithms:
            raise InvalidSession(
                "token algorithm is not allowed for its issuer", reason="algorithm_not_allowed"
            )
        if not await self._signature_is_valid(trusted, alg, token):
            raise InvalidSession("token signature is not valid", reason="bad_signature")
        return self._user_from_claims(trusted, token.payload, digest)

    async def _signature_is_valid(
        self, trusted: _TrustedIssuer, alg: str, token: UnverifiedToken
    ) -> bool:
        if trusted.hmac is not None:
            return trusted.hmac.verify(alg, token.signing_input, token.signature)
        if trusted.jwks is not None:
            key = await _jwks_key(trusted.jwks, alg, token.header.get("kid"))
        elif trusted.static_key is not None:
            key = trusted.static_key  # the issuer's only key: a kid has nothing to select
        else:  # unreachable: _TrustedIssuer refuses an issuer without keys
            return False
        if not key.fits(alg):
            raise InvalidSession(
                "token algorithm does not fit the issuer's key", reason="algorithm_not_allowed"
            )
        try:
            return key.verify(alg, token.signing_input, token.signature)
        except Exception:  # a malformed signature value is just an invalid signature
            log.debug("session.signature_error", exc_info=True)
            return False

    def _user_from_claims(
        self, trusted: _TrustedIssuer, payload: Mapping[str, Any], digest: bytes
    ) -> SessionUser:
        now = self._wall_clock()
        expires_at = _required(_time_claim(payload, "exp", "expiry"), "exp", "expiry")
        issued_at = _required(_time_claim(payload, "iat", "issued-at"), "iat", "issued-at")
        not_before = _time_claim(payload, "nbf", "not-before")
        _check_audience(payload.get("aud", _ABSENT), trusted.audiences)
        if issued_at > now + self._leeway:
            raise InvalidSession("token issued-at (iat) is in the future", reason="not_yet_valid")
        if not_before is not None and not_before > now + self._leeway:
            raise InvalidSession("token is not valid yet (nbf)", reason="not_yet_valid")
        user = SessionUser(
            id=self._user_id(payload),
            tenants=self._tenants(payload),
            roles=self._roles(payload),
            email=self._email(payload),
            claims=MappingProxyType(dict(payload)),
            issuer=trusted.name,
            expires_at=expires_at,
            session=digest,
        )
        if expires_at + self._leeway <= now:
            raise SessionExpired()
        return user

    def _user_id(self, payload: Mapping[str, Any]) -> str:
        value = self._claims.user_id.find(payload)
        if value is _ABSENT or value is None:
            raise InvalidSession("token has no user id claim", reason="invalid_claims")
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # numeric ids from app backends
        if not _is_text(value):
            raise InvalidSession(
                "token user id claim is not a non-empty string", reason="invalid_claims"
            )
        return str(value)

    def _tenants(self, payload: Mapping[str, Any]) -> tuple[str, ...]:
        value = self._claims.tenants.find(payload)
        if value is _ABSENT or value is None:
            raise InvalidSession("token has no tenant claim", reason="invalid_claims")
        tenants = _string_list(value)
        if not tenants:
            raise InvalidSession(
                "token tenant claim is not a non-empty string or list of non-empty strings",
                reason="invalid_claims",
            )
        return tenants

    def _roles(self, payload: Mapping[str, Any]) -> tuple[str, ...]:
        if self._claims.roles is None:
            return ()
        value = self._claims.roles.find(payload)
        if value is _ABSENT or value is None:
            return ()
        roles = _string_list(value)
        if roles is None:
            raise InvalidSession(
                "token roles claim is not a string or list of strings", reason="invalid_claims"
            )
        return roles

    def _email(self, payload: Mapping[str, Any]) -> str | None:
        if self._claims.email is None:
            return None
        value = self._claims.email.find(payload)
        if value is _ABSENT or value is None:
            return None
        if not _is_text(value):
            raise InvalidSession("token email claim is not a string", reason="invalid_claims")
        return str(value)

    def _count_cache(self, result: str) -> None:
        counter = self._cache_counters.get(result)
        if counter is None and self._metrics is not None:
            counter = self._cache_counters[result] = self._metrics.session_cache_total.labels(
                result=result
            )
        if counter is not None:
            counter.inc()


def _printable_issuer(named: Any) -> str | None:
    """An untrusted ``iss`` worth showing an operator (a trailing slash is the classic
    misconfiguration), or None when it is not a short printable string."""
    if isinstance(named, str) and 0 < len(named) <= MAX_LOGGED_ISSUER_CHARS and named.isprintable():
        return named if named.isascii() else None
    return None


def _checked_header(header: Mapping[str, Any]) -> str:
    """The header's algorithm, after the header-level rules; raises InvalidSession."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
        # covers "none" in every spelling, and anything else we do not implement
        raise InvalidSession("unsupported algorithm", reason="algorithm_not_allowed")
    if "crit" in header:
        raise InvalidSession("token header has critical extensions (crit), which are not supported")
    kid = header.get("kid", _ABSENT)
    if kid is not _ABSENT and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS):
        raise InvalidSession("token key id (kid) is not valid")
    # jwk, jku, x5u, x5c, x5t: deliberately ignored; keys come only from the config.
    return alg


async def _jwks_key(source: JwksSource, alg: str, kid: Any) -> VerificationKey:
    kid_text = kid if isinstance(kid, str) else None
    key = _pick(source.keys, alg, kid_text)
    if key is None:
        key = _pick(await source.refetch(), alg, kid_text)
    if key is None:
        if source.keys is None:
            raise InvalidSession(
                "no signing keys are available for the token issuer", reason="keys_unavailable"
            )
        raise InvalidSession("token key id (kid) is unknown", reason="unknown_key")
    return key


def _pick(keys: KeySet | None, alg: str, kid: str | None) -> VerificationKey | None:
    """The key for this token, None when not (yet) published; raises when ambiguous."""
    if keys is None:
        return None
    if kid is None:
        if len(keys.keys) > 1:
            raise InvalidSession(
                "token has no key id (kid) and its issuer has several keys", reason="unknown_key"
            )
        return keys.keys[0]
    candidates = keys.with_kid(kid)
    if not candidates:
        return None
    for key in candidates:
        if key.fits(alg):
            return key
    raise InvalidSession(
        "token algorithm does not fit the issuer's key", reason="algorithm_not_allowed"
    )


def _time_claim(payload: Mapping[str, Any], name: str, label: str) -> float | None:
    """A NumericDate claim as a float, None when absent; raises when not a number."""
    value = payload.get(name, _ABSENT)
    if value is _ABSENT:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSession(f"token {label} ({name}) is not a number", reason="invalid_claims")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidSession(
            f"token {label} ({name}) is out of range", reason="invalid_claims"
        ) from None
    if not math.isfinite(number):
        raise InvalidSession(f"token {label} ({name}) is out of range", reason="invalid_claims")
    return number


def _required(value: float | None, name: str, label: str) -> float:
    if value is None:
        raise InvalidSession(f"token {label} ({name}) is missing", reason="invalid_claims")
    return value


def _check_audience(aud: Any, accepted: frozenset[str]) -> None:
    if aud is _ABSENT:
        raise InvalidSession("token audience (aud) is missing", reason="wrong_audience")
    if isinstance(aud, str):
        audiences: list[Any] = [aud]
    elif isinstance(aud, list) and aud:
        audiences = aud
    else:
        raise InvalidSession(
            "token audience (aud) is not a string or a non-empty list", reason="wrong_audience"
        )
    if not all(isinstance(item, str) for item in audiences):
        raise InvalidSession("token audience (aud) contains a non-string", reason="wrong_audience")
    if accepted.isdisjoint(audiences):
        raise InvalidSession("token audience is not accepted", reason="wrong_audience")


def _b64url_json(value: Mapping[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def mint_dev_token(
    config: SessionConfig,
    *,
    user: str,
    tenant: str | Sequence[str],
    roles: Sequence[str],
    ttl_seconds: int,
    now: float | None = None,
) -> str:
    """A session JWT for local testing (``token-broker dev-token``, the demo page).

    Signed with the first HS* issuer's secret; ``iss`` and ``aud`` from that issuer,
    the user, tenant (or a list of tenants) and roles at the configured claim paths.
    """
    issuer = next((i for i in config.issuers if i.is_hmac and i.secret is not None), None)
    if issuer is None or issuer.secret is None:
        raise ValueError("the config has no HS* issuer with a secret to sign a dev token with")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    try:
        key = HmacKey(issuer.secret, issuer.algorithms)
    except KeyProblem as exc:
        raise ValueError(f"issuer {issuer.issuer!r}: {exc}") from None
    alg = issuer.algorithms[0]
    issued_at = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "iss": issuer.issuer,
        "aud": issuer.audiences[0],
        "iat": issued_at,
        "exp": issued_at + ttl_seconds,
    }
    claims = _ClaimMap.of(config.claims)
    claims.user_id.place(payload, user)
    claims.tenants.place(payload, tenant if isinstance(tenant, str) else list(tenant))
    if claims.roles is not None:
        claims.roles.place(payload, list(roles))
    signing_input = f"{_b64url_json({'alg': alg, 'typ': 'JWT'})}.{_b64url_json(payload)}"
    signature = key.sign(alg, signing_input.encode("ascii"))
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode('ascii')}"
