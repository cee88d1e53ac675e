"""Fault injection: what the next vendor answers go wrong with.

One rule per vendor (and, for Embeddable, optionally per region). A rule applies to
every request, to a random ``fraction`` of them, or to the next ``count`` (then it is
removed). An applied rule first waits ``latency_ms``, then fails the request in at most
one way: an error ``status``, a dropped connection, or a malformed 200 body.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Vendor = Literal["embeddable", "databrain", "superset", "preset"]
VENDORS: tuple[Vendor, ...] = ("embeddable", "databrain", "superset", "preset")


class FaultRule(BaseModel):
    """The body of ``POST /_sandbox/faults``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vendor: Vendor
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,32}$")
    """Embeddable only: limit the rule to one region."""
    latency_ms: int = Field(default=0, ge=0, le=120_000)
    status: int | None = Field(default=None, ge=400, le=599)
    vendor_code: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    """Databrain only: the error code in its error body (default: the usual one for
    ``status``). Embeddable's errors carry only ``errorMessage``."""
    message: str | None = Field(default=None, max_length=1000)
    """The error message in the vendor's error body."""
    retry_after: int | str | None = None
    """``Retry-After`` header value: seconds, or any string (an HTTP-date, garbage...)."""
    drop_connection: bool = False
    malformed_200: bool = False
    fraction: float | None = Field(default=None, gt=0, le=1)
    count: int | None = Field(default=None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _coherent(self) -> FaultRule:
        failures = (self.status is not None) + self.drop_connection + self.malformed_200
        if failures > 1:
            raise ValueError("choose one of status, drop_connection, malformed_200")
        if failures == 0 and self.latency_ms == 0:
            raise ValueError("a fault needs latency_ms, status, drop_connection or malformed_200")
        if self.fraction is not None and self.count is not None:
            raise ValueError("choose fraction or count, not both")
        if self.status is None and (
            self.retry_after is not None or self.vendor_code is not None or self.message
        ):
            raise ValueError("retry_after, vendor_code and message need a status")
        if self.vendor_code is not None and self.vendor != "databrain":
            raise ValueError("only Databrain errors carry a code (Embeddable: errorMessage)")
        if self.region is not None and self.vendor != "embeddable":
            raise ValueError("only Embeddable has regions")
        if isinstance(self.retry_after, int) and self.retry_after < 0:
            raise ValueError("retry_after seconds cannot be negative")
        return self


@dataclass(slots=True)
class _ActiveRule:
    rule: FaultRule
    remaining: int | None

    def describe(self) -> dict[str, Any]:
        return {**self.rule.model_dump(exclude_none=True), "remaining": self.remaining}


class FaultBook:
    """The rules in force. One event loop owns it, so no locking."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rules: dict[tuple[Vendor, str | None], _ActiveRule] = {}
        self._rng = rng or random.Random()  # noqa: S311 -- fault sampling, not security

    def set(self, rule: FaultRule) -> None:
        self._rules[(rule.vendor, rule.region)] = _ActiveRule(rule, rule.count)

    def clear(self, vendor: Vendor | None = None) -> None:
        if vendor is None:
            self._rules.clear()
        else:
            for key in [key for key in self._rules if key[0] == vendor]:
                del self._rules[key]

    def describe(self) -> list[dict[str, Any]]:
        return [active.describe() for active in self._rules.values()]

    def take(self, vendor: Vendor, region: str | None) -> FaultRule | None:
        """The rule to apply to this request, if any (consumes one of a ``count``)."""
        if not self._rules:
            return None
        key: tuple[Vendor, str | None] = (vendor, region)
        active = self._rules.get(key)
        if active is None:
            key = (vendor, None)
            active = self._rules.get(key)
        if active is None:
            return None
        rule = active.rule
        if rule.fraction is not None and self._rng.random() >= rule.fraction:
            return None
        if active.remaining is not None:
            active.remaining -= 1
            if active.remaining <= 0:
                del self._rules[key]
        return rule
