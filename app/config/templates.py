"""The ``{user.id}`` template syntax of vendor request bodies (config.md "Templates").

A template is parsed once, at load; nothing is ever evaluated. A string that is exactly
one reference takes the referenced value with its JSON type; a reference inside longer
text must resolve to a string or number. ``{{`` and ``}}`` are literal braces.

References:

    {user.id} {user.issuer} {user.email} {user.roles} {user.claims.<dotted.path>}
    {tenant.id} {tenant.region} {tenant.attributes.<dotted.path>}
    {embed.name}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from app.config.tree import Problem, YamlPath, map_strings

_NAME = r"[A-Za-z_][A-Za-z0-9_\-]*"
_SEGMENT = r"[A-Za-z0-9_\-]+"
_REFERENCE = re.compile(rf"^{_NAME}(?:\.{_SEGMENT})*$")

USER_FIELDS = frozenset({"id", "issuer", "email", "roles"})
TENANT_FIELDS = frozenset({"id", "region"})
EMBED_FIELDS = frozenset({"name"})


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Reference:
    root: str  # "user" | "tenant" | "embed"
    path: tuple[str, ...]

    def __str__(self) -> str:
        return "{" + ".".join((self.root, *self.path)) + "}"

    @property
    def is_user(self) -> bool:
        return self.root == "user"


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed string: literal text and references, in order."""

    parts: tuple[str | Reference, ...]

    @property
    def references(self) -> tuple[Reference, ...]:
        return tuple(part for part in self.parts if isinstance(part, Reference))

    @property
    def is_single_reference(self) -> bool:
        return len(self.parts) == 1 and isinstance(self.parts[0], Reference)

    @property
    def is_literal(self) -> bool:
        return not self.references


def parse_template(text: str) -> Template:
    parts: list[str | Reference] = []
    literal: list[str] = []
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char == "{":
            if text.startswith("{{", index):
                literal.append("{")
                index += 2
                continue
            end = text.find("}", index + 1)
            if end == -1:
                raise TemplateError(
                    f"'{{' at position {index} is never closed (write '{{{{' for a literal brace)"
                )
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_parse_reference(text[index + 1 : end]))
            index = end + 1
        elif char == "}":
            if text.startswith("}}", index):
                literal.append("}")
                index += 2
                continue
            raise TemplateError(
                f"'}}' at position {index} has no opening brace (write '}}}}' for a literal brace)"
            )
        else:
            literal.append(char)
            index += 1
    if literal:
        parts.append("".join(literal))
    return Template(tuple(parts))


def _parse_reference(inner: str) -> Reference:
    if not _REFERENCE.match(inner):
        raise TemplateError(f"'{{{inner}}}' is not a reference such as {{user.id}}")
    root, *path = inner.split(".")
    if root == "user":
        if len(path) == 1 and path[0] in USER_FIELDS:
            return Reference(root, tuple(path))
        if len(path) >= 2 and path[0] == "claims":
            return Reference(root, tuple(path))
        raise TemplateError(
            f"unknown reference '{{{inner}}}': user has id, issuer, email, roles and claims.<path>"
        )
    if root == "tenant":
        if len(path) == 1 and path[0] in TENANT_FIELDS:
            return Reference(root, tuple(path))
        if len(path) >= 2 and path[0] == "attributes":
            return Reference(root, tuple(path))
        raise TemplateError(
            f"unknown reference '{{{inner}}}': tenant has id, region and attributes.<path>"
        )
    if root == "embed":
        if len(path) == 1 and path[0] in EMBED_FIELDS:
            return Reference(root, tuple(path))
        raise TemplateError(f"unknown reference '{{{inner}}}': embed has name")
    raise TemplateError(
        f"unknown reference root '{root}' in '{{{inner}}}' (use user, tenant or embed)"
    )


# --- compiled request trees -------------------------------------------------------------
#
# A request body is compiled into a tree whose string leaves are Templates. Rendering
# walks it once; `bind` does the same walk with only some roots known, which is how the
# policy pre-renders tenant and embed values at load and leaves only user values for
# request time.


class Missing(LookupError):
    """A referenced value is absent; ``reference`` says which."""

    def __init__(self, reference: Reference) -> None:
        super().__init__(str(reference))
        self.reference = reference


Resolver = Callable[[Reference], Any]


def compile_tree(node: Any, path: YamlPath = ()) -> tuple[Any, list[Problem]]:
    """Parse every string leaf; return the compiled tree and (path, reason) errors."""
    return map_strings(node, _compile_string, path)


def _compile_string(text: str) -> str | Template:
    template = parse_template(text)  # TemplateError is a ValueError: reported with its path
    if template.is_literal:  # "{{x}}" compiles to the text "{x}"
        return "".join(part for part in template.parts if isinstance(part, str))
    return template


def iter_templates(
    node: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Template]]:
    if isinstance(node, Template):
        yield path, node
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from iter_templates(item, (*path, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from iter_templates(item, (*path, index))


def render(node: Any, resolve: Resolver, *, only: frozenset[str] | None = None) -> Any:
    """Substitute references. With ``only``, references to other roots are left in place.

    ``resolve`` raises :class:`Missing` for an absent value. A reference inside longer
    text that resolves to something other than a string or number raises TypeError.
    """
    if isinstance(node, Template):
        return _render_template(node, resolve, only)
    if isinstance(node, dict):
        return {key: render(item, resolve, only=only) for key, item in node.items()}
    if isinstance(node, list):
        return [render(item, resolve, only=only) for item in node]
    return node


def _render_template(template: Template, resolve: Resolver, only: frozenset[str] | None) -> Any:
    if template.is_single_reference:
        ref = template.parts[0]
        assert isinstance(ref, Reference)
        if only is not None and ref.root not in only:
            return template
        return resolve(ref)
    out: list[str | Reference] = []
    pending = False
    for part in template.parts:
        if isinstance(part, Reference):
            if only is not None and part.root not in only:
                out.append(part)
                pending = True
                continue
            value = resolve(part)
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise TypeError(
                    f"{part} is a {type(value).__name__}; only strings and numbers fit inside text"
                )
            text = value if isinstance(value, str) else _number_text(value)
            if out and isinstance(out[-1], str):
                out[-1] = out[-1] + text
            else:
                out.append(text)
        elif out and isinstance(out[-1], str):
            out[-1] = out[-1] + part
        else:
            out.append(part)
    if pending:
        return Template(tuple(out))
    return "".join(p for p in out if isinstance(p, str))


def _number_text(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


STATIC_ROOTS = frozenset({"tenant", "embed"})
"""The references whose values are known at load, before any user."""


def static_resolver(
    embed_name: str, tenant_id: str, region: str, attributes: Mapping[str, Any]
) -> Resolver:
    """Resolves ``{tenant.*}`` and ``{embed.name}`` for one embed and tenant: the policy
    pre-renders bodies with it, the loader validates them with it. ``{user.*}`` and a
    missing attribute raise :class:`Missing`."""

    def resolve(ref: Reference) -> Any:
        if ref.root == "embed":
            return embed_name
        if ref.root == "tenant":
            if ref.path[0] == "id":
                return tenant_id
            if ref.path[0] == "region":
                return region
            try:
                return lookup_path(attributes, ref.path[1:])
            except KeyError:
                raise Missing(ref) from None
        raise Missing(ref)

    return resolve


def lookup_path(data: Any, path: tuple[str, ...]) -> Any:
    """Follow a dotted path through nested mappings; raise KeyError when absent."""
    current = data
    for segment in path:
        if isinstance(current, Mapping) and segment in current:
            current = current[segment]
        else:
            raise KeyError(segment)
    return current


def deep_merge(base: Any, addition: Any) -> Any:
    """Merge ``addition`` into ``base`` without mutating either.

    Mappings merge key by key, lists are joined without repeating an element already
    present, and anything else is replaced by the addition.
    """
    if isinstance(base, dict) and isinstance(addition, dict):
        merged = dict(base)
        for key, value in addition.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(addition, list):
        joined = list(base)
        joined.extend(item for item in addition if item not in base)
        return joined
    return addition
