"""One vendor call for many identical concurrent cache misses (operations.md, S4).

The first caller for a key starts the work as its own task; callers arriving while it
runs await the same task. Every caller awaits it through :func:`asyncio.shield`, so a
client that disconnects (its request task is cancelled) stops waiting without
cancelling the call the others are waiting for. The task is forgotten as soon as it
finishes, successfully or not: a failure reaches every waiter and is never replayed
to later callers, which start a fresh call.

The shared task runs in a copy of the first caller's context (contextvars such as the
request id), which is the request that actually caused the vendor call.

Written here rather than taken from a library: asyncio has no built-in for it and the
whole mechanism is a dict of tasks; the shielding and forgetting rules above are the
part that matters, and they are easier to check in 30 lines than in a dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Coalesce concurrent calls with the same key into one."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        """Calls in flight."""
        return len(self._calls)

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(result, coalesced)``: ``coalesced`` is True when another caller's call was joined.

        When the shared call fails, every caller gets the same exception.
        """
        call = self._calls.get(key)
        if call is not None and not call.done():
            return await asyncio.shield(call), True

        async def invoke() -> T:
            return await factory()

        call = asyncio.create_task(invoke(), name=f"singleflight:{key[:16]}")
        self._calls[key] = call
        call.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(call), False

    def _forget(self, key: str, call: asyncio.Task[T]) -> None:
        if self._calls.get(key) is call:
            del self._calls[key]
        # Mark the outcome as seen even when every waiter was cancelled, so asyncio does
        # not log "exception was never retrieved" for a failure nobody was left to get.
        if not call.cancelled():
            call.exception()
