"""``${NAME}``, ``${NAME:-default}`` and ``${file:/path}`` in policy-file strings.

Interpolation happens on the parsed YAML tree, before validation, so a secret is
never part of YAML syntax and an error can name the YAML path. ``$${`` is a literal
``${``. Errors name the variable or file, never a value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.config.tree import Problem, YamlPath, map_strings

_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_SECRET_FILE_BYTES = 64 * 1024


class InterpolationError(ValueError):
    pass


def interpolate_string(value: str, environ: Mapping[str, str]) -> str:
    if "$" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        inner = match.group(1)
        if inner is None:
            raise InterpolationError("'${' without a closing '}'")
        return _resolve(inner, environ)

    return _PLACEHOLDER.sub(replace, value)


def _resolve(inner: str, environ: Mapping[str, str]) -> str:
    if inner.startswith("file:"):
        return _read_secret_file(inner[len("file:") :])
    name, has_default, default = inner.partition(":-")
    if not _ENV_NAME.match(name):
        raise InterpolationError(f"'${{{name}}}' is not a valid variable reference")
    value = environ.get(name, "")
    if value:
        return value
    if has_default:
        return default
    raise InterpolationError(f"environment variable {name} is not set")


def _read_secret_file(raw_path: str) -> str:
    path = Path(raw_path)
    if not raw_path or not path.is_absolute():
        raise InterpolationError(f"${{file:...}} needs an absolute path, got {raw_path!r}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise InterpolationError(
            f"cannot read {raw_path}: {exc.strerror or 'unreadable'}"
        ) from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise InterpolationError(f"{raw_path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InterpolationError(f"{raw_path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def interpolate_tree(
    node: Any, environ: Mapping[str, str], path: YamlPath = ()
) -> tuple[Any, list[Problem]]:
    """Return the tree with every string interpolated, plus (path, reason) for failures."""
    return map_strings(node, lambda text: interpolate_string(text, environ), path)
