"""The documentation stays true: docs/configuration.md names every setting and key."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app.config.models import PolicyConfig
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def section(title: str) -> str:
    start = CONFIGURATION.index(title)
    end = CONFIGURATION.find("\n## ", start + 1)
    return CONFIGURATION[start : end if end != -1 else None]


def models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in typing.get_args(annotation):
        found.extend(models_in(argument))
    if isinstance(annotation, types.UnionType):
        for argument in annotation.__args__:
            found.extend(models_in(argument))
    return found


def policy_keys(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for inner in models_in(field.annotation):
            keys |= policy_keys(inner, seen)
    return keys


def test_every_environment_setting_is_documented() -> None:
    text = section("## Environment")
    for name in Settings.model_fields:
        assert f"`BROKER_{name.upper()}`" in text, name


def test_every_policy_key_is_documented() -> None:
    text = section("## The policy file")
    documented = set(re.findall(r"`([^`]+)`", text))
    words = {part for entry in documented for part in re.split(r"[.\[\]<> /]+", entry) if part}
    missing = sorted(policy_keys(PolicyConfig) - words)
    assert not missing, missing


def test_readme_shows_the_two_commands() -> None:
    assert "make run" in README
    assert "make test" in README


def test_the_readme_points_to_the_documentation() -> None:
    assert "(docs/README.md)" in README
    assert "(docs/api.md)" in README
    assert "(docs/configuration.md)" in README
