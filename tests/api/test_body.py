"""read_body straight from the ASGI receive channel: chunks, limits, disconnects."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from app.api.body import MAX_BODY_BYTES, read_body
from app.errors import RequestTooLarge

pytestmark = pytest.mark.anyio


def request_of(
    messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]] | None = None
) -> Request:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return Request({"type": "http", "method": "POST", "headers": headers or []}, receive)


def part(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_one_message() -> None:
    assert await read_body(request_of([part(b'{"embed":"x"}', False)])) == b'{"embed":"x"}'


async def test_chunks_are_joined_in_order() -> None:
    messages = [part(b"ab", True), part(b"", True), part(b"cd", False)]
    assert await read_body(request_of(messages)) == b"abcd"


async def test_a_missing_body_key_is_empty() -> None:
    assert await read_body(request_of([{"type": "http.request"}])) == b""


async def test_more_than_the_limit_without_a_content_length() -> None:
    messages = [part(b"x" * 10_000, True), part(b"x" * (MAX_BODY_BYTES - 10_000 + 1), False)]
    with pytest.raises(RequestTooLarge):
        await read_body(request_of(messages))


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    headers = [(b"content-length", str(MAX_BODY_BYTES + 1).encode())]
    with pytest.raises(RequestTooLarge):
        await read_body(request_of([], headers))  # receive() is never called


async def test_the_client_going_away() -> None:
    with pytest.raises(ClientDisconnect):
        await read_body(request_of([part(b"ab", True), {"type": "http.disconnect"}]))
