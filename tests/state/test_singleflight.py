from __future__ import annotations

import asyncio

import pytest

from app.state.singleflight import SingleFlight

pytestmark = pytest.mark.anyio


class VendorDown(Exception):
    pass


class Factory:
    """Counts calls; each call waits until released, then returns or raises."""

    def __init__(self, result: str = "token", error: Exception | None = None) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.result = result
        self.error = error

    async def __call__(self) -> str:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return f"{self.result}-{self.calls}"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_200_concurrent_identical_calls_share_one_factory_call() -> None:
    flight: SingleFlight[str] = SingleFlight()
    factory = Factory()
    callers = [asyncio.create_task(flight.run("k", factory)) for _ in range(200)]
    await settle()
    assert len(flight) == 1
    factory.release.set()
    results = await asyncio.gather(*callers)
    assert factory.calls == 1
    assert {value for value, _ in results} == {"token-1"}
    assert sum(not coalesced for _, coalesced in results) == 1
    assert len(flight) == 0


async def test_different_keys_do_not_coalesce() -> None:
    flight: SingleFlight[str] = SingleFlight()
    factory = Factory()
    factory.release.set()
    results = await asyncio.gather(flight.run("a", factory), flight.run("b", factory))
    assert factory.calls == 2
    assert [coalesced for _, coalesced in results] == [False, False]


async def test_a_failure_reaches_every_waiter_and_is_not_remembered() -> None:
    flight: SingleFlight[str] = SingleFlight()
    error = VendorDown("503")
    failing = Factory(error=error)
    callers = [asyncio.create_task(flight.run("k", failing)) for _ in range(20)]
    await settle()
    failing.release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert failing.calls == 1
    assert all(outcome is error for outcome in outcomes)
    assert len(flight) == 0

    succeeding = Factory()
    succeeding.release.set()
    assert await flight.run("k", succeeding) == ("token-1", False)
    assert succeeding.calls == 1


async def test_completed_results_are_not_cached() -> None:
    flight: SingleFlight[str] = SingleFlight()
    factory = Factory()
    factory.release.set()
    assert (await flight.run("k", factory))[0] == "token-1"
    assert (await flight.run("k", factory))[0] == "token-2"


async def test_cancelling_one_waiter_does_not_cancel_the_call_for_the_others() -> None:
    flight: SingleFlight[str] = SingleFlight()
    factory = Factory()
    first = asyncio.create_task(flight.run("k", factory))
    others = [asyncio.create_task(flight.run("k", factory)) for _ in range(5)]
    await settle()
    first.cancel()  # the caller that started the call goes away
    others[0].cancel()
    await settle()
    assert first.cancelled()
    factory.release.set()
    results = await asyncio.gather(*others[1:])
    assert [value for value, _ in results] == ["token-1"] * 4
    assert factory.calls == 1
    with pytest.raises(asyncio.CancelledError):
        await others[0]


async def test_a_call_whose_waiters_all_left_still_finishes_and_is_joined() -> None:
    flight: SingleFlight[str] = SingleFlight()
    factory = Factory()
    lone = asyncio.create_task(flight.run("k", factory))
    await settle()
    lone.cancel()
    await settle()
    assert len(flight) == 1  # still running for whoever comes next
    late = asyncio.create_task(flight.run("k", factory))
    await settle()
    factory.release.set()
    assert await late == ("token-1", True)
    assert factory.calls == 1
