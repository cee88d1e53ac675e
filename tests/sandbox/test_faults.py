"""FaultBook: which requests a rule applies to."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from app.sandbox.faults import FaultBook, FaultRule


def rule(**fields: object) -> FaultRule:
    return FaultRule.model_validate({"vendor": "databrain", "status": 500, **fields})


def test_no_rule_no_fault() -> None:
    assert FaultBook().take("databrain", None) is None


def test_a_plain_rule_applies_to_every_request_of_its_vendor_only() -> None:
    book = FaultBook()
    book.set(rule())

    assert all(book.take("databrain", None) is not None for _ in range(10))
    assert book.take("embeddable", "eu") is None


def test_a_count_is_consumed_then_the_rule_is_gone() -> None:
    book = FaultBook()
    book.set(rule(count=2))

    assert [book.take("databrain", None) is not None for _ in range(3)] == [True, True, False]
    assert book.describe() == []


def test_a_fraction_samples_requests() -> None:
    book = FaultBook(random.Random(7))
    book.set(rule(fraction=0.25))

    applied = sum(book.take("databrain", None) is not None for _ in range(2000))

    assert 400 <= applied <= 600


def test_a_region_rule_wins_over_the_vendor_rule() -> None:
    book = FaultBook()
    book.set(FaultRule(vendor="embeddable", status=503))
    book.set(FaultRule(vendor="embeddable", region="eu", status=500))

    eu, us = book.take("embeddable", "eu"), book.take("embeddable", "us")
    assert eu is not None
    assert us is not None
    assert (eu.status, us.status) == (500, 503)


def test_clear_one_vendor_or_all() -> None:
    book = FaultBook()
    book.set(rule())
    book.set(FaultRule(vendor="embeddable", latency_ms=5))

    book.clear("databrain")
    assert [f["vendor"] for f in book.describe()] == ["embeddable"]
    book.clear()
    assert book.describe() == []


def test_latency_alone_is_a_fault() -> None:
    assert FaultRule(vendor="databrain", latency_ms=1).status is None


@pytest.mark.parametrize(
    "fields",
    [{"status": 500, "malformed_200": True}, {"status": None}, {"message": "m", "status": None}],
)
def test_incoherent_rules_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        rule(**fields)
