"""validate_body: strict request models, and what allow_unknown_fields lets through."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, model_validator

from app.providers.validation import validate_body


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Item(Strict):
    name: str
    size: int | None = None


class Either(Strict):
    low: int


class Other(Strict):
    high: int


class Body(Strict):
    title: str
    items: list[Item] = []
    choice: Either | Other | None = None

    @model_validator(mode="after")
    def _no_empty_title(self) -> Body:
        if not self.title:
            raise ValueError("title must not be empty")
        return self


def test_a_valid_body_lets_nothing_unknown_through() -> None:
    assert validate_body(Body, {"title": "t", "items": [{"name": "a"}]}) == ()


def test_unknown_fields_are_errors_by_default_with_a_hint_and_no_values() -> None:
    body = {"title": "t", "secretish": "value-never-shown", "items": [{"name": "a", "x": 1}]}

    with pytest.raises(ValueError) as caught:
        validate_body(Body, body)

    message = str(caught.value)
    assert "secretish: unknown field" in message
    assert "items.0.x: unknown field" in message
    assert "allow_unknown_fields" in message
    assert "value-never-shown" not in message


def test_allowed_unknown_fields_are_returned_at_any_depth() -> None:
    body: dict[str, Any] = {
        "title": "t",
        "zeta": 1,
        "items": [{"name": "a"}, {"name": "b", "extra": [1]}],
    }

    assert validate_body(Body, body, allow_unknown_fields=True) == ("items.1.extra", "zeta")
    assert body["items"][1] == {"name": "b", "extra": [1]}  # the caller's body is untouched


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"title": "", "new": 1}, "title must not be empty"),  # a model rule still runs
        ({"title": "t", "new": 1, "items": [{"size": 2}]}, "items.0.name"),
    ],
)
def test_allowing_unknown_fields_still_checks_the_known_ones(
    body: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        validate_body(Body, body, allow_unknown_fields=True)
    assert "new" not in str(caught.value)


def test_an_unknown_key_inside_a_union_member_is_no_forwardable_field() -> None:
    with pytest.raises(ValueError, match="choice"):
        validate_body(
            Body, {"title": "t", "choice": {"low": 1, "odd": 2}}, allow_unknown_fields=True
        )


def test_keys_every_union_member_calls_unknown_are_refused_not_forwarded() -> None:
    # Either and Other each see one unknown key: neither error names a field of the body.
    with pytest.raises(ValueError, match="choice"):
        validate_body(
            Body, {"title": "t", "choice": {"low": 1, "high": 2}}, allow_unknown_fields=True
        )
