"""Waiting for a condition instead of sleeping for a guess.

``eventually(check)`` polls ``check`` until it returns something truthy (and returns
that), or fails the test after ``timeout`` seconds saying what it waited for. A sleep
that stands in for a condition is either too short on a busy machine (a flaky test)
or too long everywhere else (a slow one); this is neither.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.02


def eventually(check: Callable[[], T], *, timeout: float = 15.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {what or check!r}")
        time.sleep(POLL_SECONDS)


async def eventually_async(
    check: Callable[[], T | Awaitable[T]], *, timeout: float = 15.0, what: str = ""
) -> T:
    """The same inside an event loop; ``check`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        result: T = await outcome if isinstance(outcome, Awaitable) else outcome
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {what or check!r}")
        await asyncio.sleep(POLL_SECONDS)
