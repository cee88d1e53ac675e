"""How the broker runs Python's cyclic garbage collector while it serves.

A full (oldest-generation) collection stops the event loop while it traverses every
tracked object. With CPython's default policy a full collection runs whenever the
objects that reached the oldest generation grew by a quarter: under a stream of new
users (performance.md S3) that was every few seconds, 10-40 ms each, and it was most of
the p99. The policy while serving:

1. After start-up, one collection, then :func:`gc.freeze`: modules, classes, the policy
   and the providers live as long as the process and are never traversed again.
2. Young collections (generations 0 and 1) run as usual: they are short, and they
   collect the cycles that short-lived objects form.
3. Automatic full collections are off; one runs every ``interval`` seconds from a
   background task instead, so they are rare and predictable (each is logged with its
   duration at debug level).

This is sound because the hot paths form no reference cycles (tests check that a cache
hit and a vendor call leave no cyclic garbage): what reaches the oldest generation
between full collections is long-lived state, which reference counting frees when a
cache evicts it, and the odd cycle of an error path, which waits at most ``interval``.

Process-wide, like the collector: the first lifespan applies it, the last one restores
the previous thresholds and unfreezes (tests run many apps in one process).

CPython 3.14's collector is incremental: it has a young and an old generation, ignores
the third threshold, and every automatic collection also scans an increment of the old
generation, so there is no long full pause to schedule away (and setting the third
threshold would silently do nothing). There only step 1 applies: start-up objects are
frozen, and Python's own (incremental) policy does the rest. ``started`` is logged with
the mode in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import time

log = logging.getLogger("token_broker.collector")

NEVER = 2**31 - 1
"""A threshold the count of young collections never reaches."""


def incremental_collector() -> bool:
    """True where CPython's cyclic collector is incremental (3.14 and later)."""
    return sys.version_info >= (3, 14)


class _CollectorPolicy:
    def __init__(self) -> None:
        self._users = 0
        self._saved: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            self._saved = gc.get_threshold()
            gc.collect()
            gc.freeze()
            if not incremental_collector():
                young, middle, _ = self._saved
                gc.set_threshold(young, middle, NEVER)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._saved is None:
                return
            gc.set_threshold(*self._saved)
            self._saved = None
            gc.unfreeze()


_policy = _CollectorPolicy()


async def full_collections_every(interval_seconds: float) -> None:
    """Run a full collection every ``interval_seconds`` (a background task)."""
    while True:
        await asyncio.sleep(interval_seconds)
        started = time.perf_counter()
        unreachable = gc.collect()
        log.debug(
            "gc.full_collection",
            extra={
                "seconds": round(time.perf_counter() - started, 4),
                "unreachable": unreachable,
            },
        )


class ServingCollector:
    """The policy above for one app's lifespan: ``async with ServingCollector(60):``.

    ``full_interval_seconds <= 0`` leaves Python's own policy in place.
    """

    def __init__(self, full_interval_seconds: float) -> None:
        self._interval = full_interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._acquired = False

    async def __aenter__(self) -> ServingCollector:
        if self._interval > 0:
            _policy.acquire()
            incremental = incremental_collector()
            if not incremental:
                self._task = asyncio.create_task(
                    full_collections_every(self._interval), name="token-broker-full-collections"
                )
            self._acquired = True
            log.debug(
                "gc.policy",
                extra={
                    "mode": "freeze + incremental" if incremental else "freeze + scheduled full",
                    "full_interval_seconds": None if incremental else self._interval,
                },
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._acquired:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._acquired = False
        _policy.release()
