"""Reading an HTTP response body with a bound on what is held in memory *after* decoding.

Every response body the broker reads from another server (vendor token answers, JWKS
documents) goes through :func:`read_bounded`. It exists because a size cap on the bytes
received is not a size cap on the bytes decoded: a 1,827-byte answer with
``Content-Encoding: gzip, gzip`` inflates to 1 GiB, and httpx's decoders inflate each
received chunk in one call, so the cap is checked only after the memory is gone (the
red team took the broker from 72 MiB to 2.1 GiB that way).

The rules:

- the broker asks for ``Accept-Encoding: identity`` (:data:`ACCEPT_ENCODING`);
- a server that sends one ``gzip`` or ``deflate`` layer anyway is decoded with zlib's
  ``max_length``, so at most ``limit + 1`` decoded bytes ever exist, however small the
  compressed input;
- stacked encodings (``gzip, gzip``), other codings (``br``, ``zstd``, ``compress``) and
  anything not decodable are refused, as are more than ``limit`` received bytes.

Nothing else is needed from the caller than the raw (undecoded) chunk stream and the
response headers, so the same function serves httpx's transport interface and
``AsyncClient.stream`` (``response.aiter_raw()``).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Final, Literal

ACCEPT_ENCODING: Final = "identity"
"""What every outbound request sends as ``Accept-Encoding``."""

_ZLIB_WBITS: Final = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,  # RFC 9110: the zlib format
}

RefusalReason = Literal["too_large", "unsupported_encoding", "undecodable"]


class BodyRefused(Exception):
    """The body was not read: too large (before or after decoding) or not decodable."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(reason)
        self.reason: RefusalReason = reason


def declared_too_large(content_length: str | None, limit: int) -> bool:
    """True when a ``Content-Length`` header already says more than ``limit``."""
    value = (content_length or "").strip()
    return value.isdigit() and int(value) > limit


async def read_bounded(
    raw_chunks: AsyncIterable[bytes],
    *,
    content_encoding: str | None,
    limit: int,
) -> bytes:
    """The decoded body, at most ``limit`` bytes; :class:`BodyRefused` otherwise.

    ``raw_chunks`` are the bytes as received (after transfer decoding, before content
    decoding). Stops reading as soon as a bound is crossed; the caller closes the
    response.
    """
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        read = _read_identity
    elif coding in _ZLIB_WBITS:
        read = functools.partial(_read_inflated, wbits=_ZLIB_WBITS[coding])
    else:  # includes "gzip, gzip": one layer at most
        raise BodyRefused("unsupported_encoding")
    iterator = aiter(raw_chunks)
    try:
        return await read(iterator, limit)
    finally:
        if isinstance(iterator, AsyncGenerator):
            await iterator.aclose()  # stopped early: finish the generator now, not at GC


async def _read_identity(raw_chunks: AsyncIterator[bytes], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in raw_chunks:
        size += len(chunk)
        if size > limit:
            raise BodyRefused("too_large")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_inflated(raw_chunks: AsyncIterator[bytes], limit: int, *, wbits: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    decoded = bytearray()
    received = 0
    async for chunk in raw_chunks:
        received += len(chunk)
        if received > limit:
            raise BodyRefused("too_large")
        if decoder.eof:
            if chunk:
                raise BodyRefused("undecodable")  # bytes after the end of the stream
            continue
        try:
            # max_length >= 1 here (0 would mean "unbounded"): at most one byte past
            # the limit is ever produced, whatever the compression ratio.
            decoded += decoder.decompress(chunk, limit + 1 - len(decoded))
        except zlib.error:
            raise BodyRefused("undecodable") from None
        if len(decoded) > limit:
            raise BodyRefused("too_large")
        if decoder.unused_data:
            raise BodyRefused("undecodable")
    if not decoder.eof:
        raise BodyRefused("undecodable")  # truncated stream
    return bytes(decoded)
