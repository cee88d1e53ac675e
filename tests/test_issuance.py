"""The token flow's plan memo (unit tests; the flow itself is tested end to end in
tests/policy and tests/integration)."""

from __future__ import annotations

from typing import cast

from app.issuance import PlanKey, PlanMemo, PlannedRequest
from app.policy import Policy


def policy() -> Policy:
    return cast(Policy, object())  # the memo only compares policies by identity


def test_keys_are_values_not_objects() -> None:
    memo = PlanMemo()
    current = policy()
    memo.put(current, PlanKey(b"digest", "acme", "sales"), PlannedRequest("eu", "key-1"))
    # An equal key built from other objects finds the entry; any other value does not.
    assert memo.get(current, PlanKey(b"digest", "acme", "sales")) == PlannedRequest("eu", "key-1")
    assert memo.get(current, PlanKey(b"other", "acme", "sales")) is None
    assert memo.get(current, PlanKey(b"digest", "globex", "sales")) is None
    assert memo.get(current, PlanKey(b"digest", "acme", "ops")) is None


def test_a_new_policy_answers_nothing_from_the_old_one() -> None:
    memo = PlanMemo()
    old, new = policy(), policy()
    key = PlanKey(b"digest", "acme", "sales")
    memo.put(old, key, PlannedRequest("eu", "key-1"))
    assert memo.get(new, key) is None
    memo.put(new, PlanKey(b"other", "acme", "sales"), PlannedRequest("us", "key-2"))
    assert len(memo) == 1  # the old policy's entries are gone
    assert memo.get(old, key) is None


def test_the_least_recently_used_entry_goes_first() -> None:
    memo = PlanMemo(max_entries=2)
    current = policy()
    first, second, third = (PlanKey(bytes([n]), "acme", "sales") for n in range(3))
    memo.put(current, first, PlannedRequest("eu", "1"))
    memo.put(current, second, PlannedRequest("eu", "2"))
    assert memo.get(current, first) is not None  # now the most recent
    memo.put(current, third, PlannedRequest("eu", "3"))
    assert memo.get(current, second) is None
    assert memo.get(current, first) is not None
    assert len(memo) == 2
