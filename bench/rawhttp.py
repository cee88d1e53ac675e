"""A minimal HTTP/1.1 client on asyncio streams, for the harness's own bursts (S2, S4).

Why not httpx: its connection pool scans every connection on every request, so a client
holding 500 connections spends seconds of CPU on a 500-request burst, on the same two
cores as the systems under test, and the "simultaneous" burst trickles out. Here each
connection is a plain stream: S4 opens all 500 first, then writes 500 requests in one
pass of the event loop.

Only what the broker answers is supported: a status line, headers, a Content-Length body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.procs import HarnessError


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


def build_post(host: str, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HarnessError(f"not an HTTP answer: {status_line[:80]!r}")
    length = 0
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return Answer(int(parts[1]), body)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> Answer:
        self.writer.write(request)
        return await read_answer(self.reader)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def burst_to(targets: Sequence[tuple[str, int, bytes]]) -> list[Answer]:
    """One connection per ``(host, port, request)``, all opened first; then every request
    written in one pass (S4 sends one burst to one server, S8 spreads it over several)."""
    connections = await asyncio.gather(*(Connection.open(host, port) for host, port, _ in targets))
    try:
        for connection, (_, _, request) in zip(connections, targets, strict=True):
            connection.writer.write(request)
        return list(await asyncio.gather(*(read_answer(c.reader) for c in connections)))
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def post_all(
    host: str, port: int, requests: Sequence[bytes], concurrency: int
) -> list[Answer]:
    """Every request once, over ``concurrency`` keep-alive connections."""
    answers: list[Answer] = []
    pending = iter(requests)

    async def worker() -> None:
        connection = await Connection.open(host, port)
        try:
            for request in pending:
                answers.append(await connection.exchange(request))
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers
