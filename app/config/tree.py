"""Walking a parsed YAML tree: one walker for every pass that rewrites string leaves.

Interpolation (``${VAR}``) and template compilation (``{user.id}``) both turn each
string of a mapping/list tree into something else and report the YAML path of every
string they cannot turn. They share :func:`map_strings`, so both passes agree on what a
leaf and a path are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

YamlPath = tuple[str | int, ...]
Problem = tuple[YamlPath, str]


def map_strings(
    node: Any, transform: Callable[[str], Any], path: YamlPath = ()
) -> tuple[Any, list[Problem]]:
    """The tree with ``transform`` applied to every string leaf, and ``(path, reason)``
    for each leaf where it raised ValueError (that leaf is kept as it was)."""
    problems: list[Problem] = []

    def walk(value: Any, where: YamlPath) -> Any:
        if isinstance(value, str):
            try:
                return transform(value)
            except ValueError as exc:
                problems.append((where, str(exc)))
                return value
        if isinstance(value, dict):
            return {key: walk(item, (*where, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, (*where, index)) for index, item in enumerate(value)]
        return value

    return walk(node, path), problems
