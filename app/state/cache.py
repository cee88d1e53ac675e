"""The token cache (operations.md "Token cache and single-flight").

- :func:`token_cache_key` hashes (provider, region, ttl, rendered vendor body): two
  requests share a token only when the vendor would have been asked the same thing, so
  users, tenants and security contexts never share tokens.
- :class:`MemoryTokenCache`: the default, an LRU bounded by ``cache.max_entries``.
- :class:`RedisTokenCache`: shared between replicas. Key names are keyed hashes of the
  cache key (no user data, and no way to test a guessed user without the secret), values are AES-GCM encrypted with a key derived (HKDF-SHA256) from
  ``BROKER_CACHE_ENCRYPTION_KEY`` and bound to their key name, entries expire with the
  token. It never raises: on a Redis error it serves from its in-process cache. Key
  names end in a hash tag (``tok:{<hash>}``) that the fleet lock shares
  (``lock:{<hash>}``, app.state.fleet), so on a Redis Cluster both live in one slot.

Whether a cached token is still fresh *enough* (``cache.min_remaining_ratio``) is the
caller's decision: the cache only forgets tokens that have expired.

The LRU is written here rather than taken from a library (``cachetools``,
``async-lru``) because it must hold 100,000 tokens in little memory (S5) and know about
token expiry; an ``OrderedDict`` of slotted records is both, in 40 lines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

if TYPE_CHECKING:
    from app.state.redis import RedisHealth

log = logging.getLogger("token_broker.cache")

MIN_ENCRYPTION_SECRET_BYTES = 32
_KEY_VERSION = b"token-broker/cache-key/v1"
_HKDF_INFO = b"token-broker/redis-token-cache/aes-256-gcm/v1"
_NAME_HKDF_INFO = b"token-broker/redis-token-cache/key-names/v1"
_NONCE_BYTES = 12
_VALUE_HEADER = struct.Struct(">Bdd")  # format version, issued_at, expires_at
_VALUE_FORMAT = 1


class CachedToken(NamedTuple):
    """A vendor token as the cache holds it (a tuple: see :class:`MemoryTokenCache`)."""

    token: str
    issued_at: float
    """UNIX seconds, when the vendor issued it (when the broker received it)."""
    expires_at: float
    """UNIX seconds."""

    def __repr__(self) -> str:
        return f"CachedToken(token=[redacted], issued_at={self.issued_at!r}, expires_at={self.expires_at!r})"

    def remaining_ratio(self, now: float) -> float:
        """The share of the token's lifetime still left at ``now``, between 0 and 1."""
        lifetime = self.expires_at - self.issued_at
        if lifetime <= 0:
            return 0.0
        return min(1.0, max(0.0, (self.expires_at - now) / lifetime))


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a cache key")


def token_cache_key(
    provider: str,
    region: str | None,
    body: Mapping[str, Any],
    *,
    ttl_seconds: int | None = None,
    issuer: str | None = None,
) -> str:
    """SHA-256 (hex) of a canonical encoding of what the vendor would be asked.

    ``issuer`` is who vouched for the user: the same ``sub`` at two issuers is two
    users, so their tokens are never shared even when their bodies are identical
    (a body that does not mention ``{user.issuer}`` looks the same for both).

    Canonical: JSON with sorted keys and no whitespace. ``ttl_seconds`` belongs in the
    key whenever the provider adds the expiry field to the body itself (it does:
    ``BROKER_OWNED_FIELDS``), so two embeds that differ only in lifetime don't share.
    """
    encoded = orjson.dumps(
        [provider, region, ttl_seconds, issuer, body],
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
        default=_json_default,
    )
    return hashlib.sha256(_KEY_VERSION + b"\x00" + encoded).hexdigest()


class TokenCache(Protocol):
    async def get(self, key: str) -> CachedToken | None:
        """The cached token, or None when absent or expired."""
        ...

    async def put(self, key: str, token: CachedToken) -> None:
        """Store ``token``; it is forgotten when it expires."""
        ...


class MemoryTokenCache:
    """In-process LRU bounded by ``max_entries``; expired entries are dropped on access.

    Each entry is one ``OrderedDict`` slot holding a plain tuple.
    """

    __slots__ = ("_clock", "_entries", "_max_entries")

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        # Plain tuples, not CachedToken objects: the collector stops tracking a tuple
        # of a str and two floats (it never untracks a tuple subclass), so a full cache
        # adds nothing to the stop-the-world full collections.
        self._entries: OrderedDict[str, tuple[str, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def resize(self, max_entries: int) -> None:
        """Apply a new ``cache.max_entries`` (policy reload) without losing what fits."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        while len(self._entries) > max_entries:
            self._entries.popitem(last=False)

    def get_now(self, key: str) -> CachedToken | None:
        """Synchronous :meth:`get` (no I/O), for callers already off the await path."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            return None
        if entry[2] <= self._clock():
            del entries[key]
            return None
        entries.move_to_end(key)
        return tuple.__new__(CachedToken, entry)

    def put_now(self, key: str, token: CachedToken) -> None:
        """Synchronous :meth:`put`."""
        now = self._clock()
        if token.expires_at <= now:
            return
        entries = self._entries
        entries[key] = (token.token, token.issued_at, token.expires_at)
        entries.move_to_end(key)
        # The least recently used entry is usually also the first to expire: dropping
        # it while it's dead keeps memory near the live set, not near max_entries.
        oldest_key, oldest = next(iter(entries.items()))
        if oldest[2] <= now and oldest_key != key:
            del entries[oldest_key]
        while len(entries) > self._max_entries:
            entries.popitem(last=False)

    async def get(self, key: str) -> CachedToken | None:
        return self.get_now(key)

    async def put(self, key: str, token: CachedToken) -> None:
        self.put_now(key, token)


def _secret_bytes(secret: SecretStr | str | bytes | None) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    if isinstance(secret, str):
        secret = secret.encode()
    if secret is None or len(secret) < MIN_ENCRYPTION_SECRET_BYTES:
        raise ValueError(
            "BROKER_CACHE_ENCRYPTION_KEY must be set to a secret of at least "
            f"{MIN_ENCRYPTION_SECRET_BYTES} bytes when BROKER_REDIS_URL is set "
            "(it encrypts the tokens cached in Redis)"
        )
    return secret


def derive_cache_key(secret: SecretStr | str | bytes | None) -> bytes:
    """The AES-256-GCM key for Redis cache values, from the configured secret."""
    raw = _secret_bytes(secret)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(raw)


def derive_name_key(secret: SecretStr | str | bytes | None) -> bytes:
    """The key that turns cache keys into Redis key names (:meth:`RedisTokenCache.redis_key`):
    another HKDF output of the same secret."""
    raw = _secret_bytes(secret)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_NAME_HKDF_INFO).derive(raw)


class RedisTokenCache:
    """Tokens shared between replicas through Redis, encrypted, with an in-process tier.

    The in-process cache (``local``) is both the fallback while Redis is unavailable and
    a near cache in front of Redis: a token found or stored here is served without a
    Redis round trip (tokens are immutable, so there is nothing to invalidate), and a
    token stored during an outage is still found after Redis comes back.

    Redis value: ``nonce(12) || AES-GCM(header || token)`` with the full Redis key name
    as associated data, so a value copied to another key does not decrypt. A value that
    does not decrypt (tampered, other secret) is a miss.
    """

    def __init__(
        self,
        health: RedisHealth,
        *,
        encryption_secret: SecretStr | str | bytes | None,
        local: MemoryTokenCache,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._aead = AESGCM(derive_cache_key(encryption_secret))
        self._name_key = derive_name_key(encryption_secret)
        self._health = health
        self._redis = health.client
        self._key_prefix = health.prefix + "tok:"
        self._local = local
        self._clock = clock
        self._last_invalid_log: float | None = None

    def _name(self, key: str) -> str:
        # Keyed: ``key`` is a plain SHA-256 of the vendor body (user, tenant, embed), so
        # anyone reading Redis could test a guessed user against the names; without the
        # secret a name matches nothing (as the rate limiter's names, app.state.ratelimit).
        return hashlib.blake2b(key.encode(), key=self._name_key, digest_size=32).hexdigest()

    def redis_key(self, key: str) -> str:
        """``<prefix>tok:{<name>}``, the name a keyed hash of ``key``: the braces are the
        Cluster hash tag (see the module)."""
        return f"{self._key_prefix}{{{self._name(key)}}}"

    def related_key(self, kind: str, key: str) -> str:
        """Another key name in the same hash slot as ``key``'s token (``lock``, ``err``)."""
        return f"{self._health.prefix}{kind}:{{{self._name(key)}}}"

    async def get(self, key: str) -> CachedToken | None:
        token = self._local.get_now(key)
        if token is not None or not self._health.available:
            return token
        try:
            raw = await self._redis.get(self.redis_key(key))
        except self._health.errors as exc:
            self._health.report_failure("cache_get", exc)
            return None
        return self.from_redis(key, raw)

    def from_redis(self, key: str, raw: object) -> CachedToken | None:
        """The token in a value read from ``redis_key(key)`` (None: a miss, expired or
        undecryptable), remembered in the in-process tier."""
        if not isinstance(raw, bytes):  # None: a miss (the client never decodes responses)
            return None
        token = self._decode(self.redis_key(key), raw)
        if token is None or token.expires_at <= self._clock():
            return None
        self._local.put_now(key, token)
        return token

    def seal(self, redis_key: str, plain: bytes) -> bytes:
        """``plain`` encrypted for the value of ``redis_key`` (and no other key)."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, redis_key.encode())

    def unseal(self, redis_key: str, raw: bytes) -> bytes:
        """The inverse of :meth:`seal`; raises ``InvalidTag`` on a foreign or tampered value."""
        return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], redis_key.encode())

    async def put(self, key: str, token: CachedToken) -> None:
        self._local.put_now(key, token)
        ttl_ms = int((token.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0 or not self._health.available:
            return
        redis_key = self.redis_key(key)
        try:
            await self._redis.set(redis_key, self._encode(redis_key, token), px=ttl_ms)
        except self._health.errors as exc:
            self._health.report_failure("cache_put", exc)

    def _encode(self, redis_key: str, token: CachedToken) -> bytes:
        plain = (
            _VALUE_HEADER.pack(_VALUE_FORMAT, token.issued_at, token.expires_at)
            + token.token.encode()
        )
        return self.seal(redis_key, plain)

    def _decode(self, redis_key: str, raw: bytes) -> CachedToken | None:
        try:
            plain = self.unseal(redis_key, raw)
            version, issued_at, expires_at = _VALUE_HEADER.unpack_from(plain)
            if version != _VALUE_FORMAT:
                raise ValueError("unknown value format")
            return CachedToken(
                token=plain[_VALUE_HEADER.size :].decode(),
                issued_at=issued_at,
                expires_at=expires_at,
            )
        except (InvalidTag, ValueError, struct.error) as exc:
            self._log_invalid(exc)
            return None

    def _log_invalid(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._last_invalid_log is None or now - self._last_invalid_log >= 60:
            self._last_invalid_log = now
            log.warning(
                "token_cache.undecryptable",
                extra={
                    "error": type(exc).__name__,
                    "hint": "tampered value, or replicas with different encryption secrets",
                },
            )
