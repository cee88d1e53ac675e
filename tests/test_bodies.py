"""``read_bounded``: the decoded size is bounded however small the compressed input.

Bytes are counted two ways: what the function pulled from the stream, and what Python
allocated while it ran (``tracemalloc`` sees every ``bytes`` zlib returns).
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterable

import pytest

from app.bodies import BodyRefused, declared_too_large, read_bounded
from tests.support.rogue import gzip_bomb

pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024
GIB = 1 << 30


class CountingStream:
    """Chunks as a transport yields them, counting what was pulled and whether it closed."""

    def __init__(self, data: bytes | Iterable[bytes], chunk_size: int = 4096) -> None:
        if isinstance(data, bytes):
            data = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
        self.chunks = list(data)
        self.pulled = 0
        self.closed = False

    async def _generate(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self.chunks:
                self.pulled += len(chunk)
                yield chunk
        finally:
            self.closed = True

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._generate()


async def refused(data: bytes, encoding: str | None, limit: int = LIMIT) -> str:
    with pytest.raises(BodyRefused) as caught:
        await read_bounded(CountingStream(data), content_encoding=encoding, limit=limit)
    return caught.value.reason


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity "])
async def test_identity_body_is_returned_as_is(encoding: str | None) -> None:
    body = b'{"token":"abc"}' * 100
    assert await read_bounded(CountingStream(body), content_encoding=encoding, limit=LIMIT) == body


async def test_identity_body_over_the_limit_is_refused_before_reading_it_all() -> None:
    stream = CountingStream(bytes(10 * LIMIT))
    with pytest.raises(BodyRefused, match="too_large"):
        await read_bounded(stream, content_encoding=None, limit=LIMIT)
    assert stream.pulled <= LIMIT + 4096
    assert stream.closed


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("GZIP", gzip.compress),
    ],
)
async def test_one_compression_layer_is_decoded(encoding: str, encode: type[bytes]) -> None:
    body = b'{"keys":[]}' * 1000
    decoded = await read_bounded(
        CountingStream(encode(body), chunk_size=7), content_encoding=encoding, limit=LIMIT
    )
    assert decoded == body


async def test_decoded_exactly_at_the_limit_is_accepted() -> None:
    body = bytes(LIMIT)
    assert (
        await read_bounded(
            CountingStream(gzip.compress(body)), content_encoding="gzip", limit=LIMIT
        )
        == body
    )
    assert await refused(gzip.compress(bytes(LIMIT + 1)), "gzip") == "too_large"


async def test_one_gib_gzip_bomb_never_holds_more_than_the_limit() -> None:
    bomb = gzip_bomb(GIB)  # ~1 MiB compressed: more than the limit received, too
    small_bomb = gzip_bomb(60 * 1024 * 1024)  # 60 MiB in < 64 KiB: within the received cap
    assert len(small_bomb) <= LIMIT
    for data in (bomb, small_bomb):
        stream = CountingStream(data, chunk_size=16 * 1024)
        tracemalloc.start()
        try:
            with pytest.raises(BodyRefused, match="too_large"):
                await read_bounded(stream, content_encoding="gzip", limit=LIMIT)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The limit, one received chunk, and bookkeeping; not megabytes.
        assert peak < 4 * LIMIT, peak
        assert stream.pulled <= 16 * 1024 * 2
        assert stream.closed


@pytest.mark.parametrize("encoding", ["gzip, gzip", "gzip,identity", "br", "zstd", "compress"])
async def test_stacked_and_unknown_encodings_are_refused(encoding: str) -> None:
    assert await refused(gzip_bomb(GIB, layers=2), encoding) == "unsupported_encoding"


async def test_the_red_team_bomb_is_refused_without_decoding() -> None:
    # 1 GiB behind two gzip layers in ~2.5 KB: the body of the finding.
    stream = CountingStream(gzip_bomb(GIB, layers=2))
    tracemalloc.start()
    try:
        with pytest.raises(BodyRefused, match="unsupported_encoding"):
            await read_bounded(stream, content_encoding="gzip, gzip", limit=LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stream.pulled == 0
    assert peak < LIMIT


@pytest.mark.parametrize(
    "data",
    [
        gzip.compress(b"hello")[:-5],  # truncated
        gzip.compress(b"hello") + b"junk",  # bytes after the end
        gzip.compress(b"a") + gzip.compress(b"b"),  # a second member
        b"not gzip at all",
    ],
)
async def test_undecodable_bodies_are_refused(data: bytes) -> None:
    assert await refused(data, "gzip") == "undecodable"


def test_declared_length() -> None:
    assert declared_too_large(str(LIMIT + 1), LIMIT)
    assert not declared_too_large(str(LIMIT), LIMIT)
    assert not declared_too_large(None, LIMIT)
    assert not declared_too_large("-1", LIMIT)
    assert not declared_too_large(" 12 ", LIMIT)
