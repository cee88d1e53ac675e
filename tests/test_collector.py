"""The serving garbage-collection policy (app.collector)."""

from __future__ import annotations

import gc
import weakref

import pytest

from app import collector
from app.collector import NEVER, ServingCollector, incremental_collector
from tests.support.eventually import eventually_async

pytestmark = pytest.mark.anyio


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle_in_the_oldest_generation() -> weakref.ref[Node]:
    """Two objects that refer to each other, moved to the oldest generation, then dropped:
    only a full collection can free them."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    gc.collect(1)  # survivors of the young generations move to the oldest
    return weakref.ref(first)


@pytest.mark.skipif(
    incremental_collector(), reason="3.14's incremental collector: see the test below"
)
async def test_while_serving_only_the_scheduled_full_collection_frees_old_cycles() -> None:
    before = gc.get_threshold()
    async with ServingCollector(3600):
        assert gc.get_threshold() == (before[0], before[1], NEVER)
        assert gc.get_freeze_count() > 0  # start-up objects
        dropped = cycle_in_the_oldest_generation()
        for _ in range(50):
            gc.collect(0)
            gc.collect(1)
            [Node() for _ in range(2000)]  # allocations that trigger young collections
        assert dropped() is not None  # no automatic full collection
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert dropped() is None


async def test_the_background_task_runs_full_collections() -> None:
    async with ServingCollector(0.05):
        dropped = cycle_in_the_oldest_generation()
        await eventually_async(lambda: dropped() is None, what="a full collection")


async def test_nested_apps_share_the_policy_until_the_last_one_ends() -> None:
    before = gc.get_threshold()
    outer = ServingCollector(3600)
    inner = ServingCollector(3600)
    await outer.__aenter__()
    await inner.__aenter__()
    await outer.__aexit__(None, None, None)
    assert gc.get_threshold()[2] == NEVER
    await inner.__aexit__(None, None, None)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_zero_keeps_pythons_policy() -> None:
    before = gc.get_threshold()
    async with ServingCollector(0):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


async def test_on_an_incremental_collector_only_the_freeze_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3.14 ignores the third threshold: setting it would claim a policy that does not
    hold, and scheduled full collections would bring back the long pauses."""
    monkeypatch.setattr(collector, "incremental_collector", lambda: True)
    before = gc.get_threshold()
    serving = ServingCollector(3600)
    async with serving:
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() > 0
        assert serving._task is None
    assert gc.get_freeze_count() == 0


def test_the_incremental_collector_is_detected_by_version() -> None:
    import sys

    assert incremental_collector() is (sys.version_info >= (3, 14))
