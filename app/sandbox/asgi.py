"""The few ASGI primitives the sandbox needs, without a framework on the hot path."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

JSON = b"application/json"
HTML = b"text/html; charset=utf-8"


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class BodyTooLarge(Exception):
    pass


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope["headers"] if key.lower() == name]


async def read_body(receive: Receive, scope: Scope, limit: int) -> bytes:
    declared = header_values(scope, b"content-length")
    if declared and declared[0].isdigit() and int(declared[0]) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_json(
    send: Send, status: int, payload: Any, *, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await respond(send, status, orjson.dumps(payload), headers=headers)


async def drop_connection(receive: Receive, send: Send) -> None:
    """Close the client's connection without any HTTP answer.

    ASGI has no event for this, and raising before ``http.response.start`` makes the
    server answer 500. So it reaches the transport through the ``send`` callable that
    uvicorn's HTTP protocols (h11 and httptools) pass in, which is a bound method of the
    request cycle holding the transport. The sandbox app must therefore be the
    outermost ASGI app (no wrapping middleware).
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        raise RuntimeError("drop_connection needs the sandbox served directly by uvicorn")
    transport.abort()
    # Wait until uvicorn has seen the disconnect, so it does not try to send a 500.
    while (await receive())["type"] != "http.disconnect":
        pass
