"""Load the policy file: YAML → ``${...}`` interpolation → models → cross-checks.

Every failure becomes one :class:`ConfigError` listing ``(YAML path, reason)`` pairs.
No message ever contains a secret value: interpolation errors name the variable or
file, pydantic errors are reported without their input, and our own checks only name
keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.config.interpolation import interpolate_tree
from app.config.models import EmbedConfig, PolicyConfig, SessionConfig
from app.config.templates import (
    STATIC_ROOTS,
    Missing,
    Reference,
    compile_tree,
    deep_merge,
    iter_templates,
    lookup_path,
    render,
    static_resolver,
)
from app.config.tree import YamlPath
from app.jose_keys import HMAC_ALGORITHMS, HMAC_DIGEST_BYTES, pem_key_problem
from app.providers.base import BROKER_OWNED_FIELDS
from app.providers.registry import provider_class

MAX_CONFIG_BYTES = 4 * 1024 * 1024

# Values used to render templates at load, to validate bodies against vendor models.
PLACEHOLDER_USER: Mapping[str, Any] = {
    "id": "placeholder-user",
    "issuer": "https://placeholder-issuer.example.invalid/",
    "email": "placeholder@example.invalid",
    "roles": ["placeholder-role"],
}
PLACEHOLDER_CLAIM = "placeholder-claim"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ConfigError(Exception):
    """The policy file is invalid. ``str()`` lists every problem, one per line."""

    def __init__(self, source: str, issues: Iterable[ConfigIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"invalid config {source}:\n{lines}")


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# --- YAML -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (a duplicate silently drops a rule)."""


def _construct_mapping(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int | float | bool):
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        # Only the problem, never the snippet: the line could hold a value.
        raise ConfigError(
            source, [ConfigIssue("", f"YAML syntax error at {where}: {exc.problem}")]
        ) from None
    except yaml.YAMLError:
        raise ConfigError(source, [ConfigIssue("", "not a valid YAML document")]) from None


# --- entry points ---------------------------------------------------------------------


def load_policy_file(path: Path | str, environ: Mapping[str, str] | None = None) -> PolicyConfig:
    return load_policy_text(_read_policy_text(path), source=str(path), environ=environ)


def load_session_section(
    path: Path | str, environ: Mapping[str, str] | None = None
) -> SessionConfig:
    """Only the file's ``session`` section, interpolated and validated.

    ``token-broker dev-token`` needs an issuer's secret, not every vendor API key: a
    developer can mint a session with nothing but the HS secret in the environment.
    """
    source = str(path)
    document = parse_yaml(_read_policy_text(path), source)
    if not isinstance(document, dict) or not isinstance(document.get("session"), dict):
        raise ConfigError(source, [ConfigIssue("session", "required key is missing")])
    session, errors = interpolate_tree(
        document["session"], os.environ if environ is None else environ, ("session",)
    )
    if errors:
        raise ConfigError(source, [ConfigIssue(format_path(p), r) for p, r in errors])
    try:
        config = SessionConfig.model_validate(session)
    except ValidationError as exc:
        issues = _pydantic_issues(exc, {})
        raise ConfigError(
            source, [ConfigIssue(format_path(("session", i.path)), i.reason) for i in issues]
        ) from None
    issues = list(_check_issuers(config))
    if issues:
        raise ConfigError(source, issues)
    return config


def _read_policy_text(path: Path | str) -> str:
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, [ConfigIssue("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(source, [ConfigIssue("", f"cannot read file: {exc.strerror}")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [ConfigIssue("", "file is larger than 4 MiB")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, [ConfigIssue("", "file is not UTF-8 text")]) from None
    return text


def load_policy_text(
    text: str, *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> PolicyConfig:
    document = parse_yaml(text, source)
    return load_policy_document(document, source=source, environ=environ)


def load_policy_document(
    document: Any, *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> PolicyConfig:
    if not isinstance(document, dict):
        raise ConfigError(
            source, [ConfigIssue("", "the file must be a YAML mapping (version, session, ...)")]
        )
    interpolated, interpolation_errors = interpolate_tree(
        document, os.environ if environ is None else environ
    )
    if interpolation_errors:
        raise ConfigError(source, [ConfigIssue(format_path(p), r) for p, r in interpolation_errors])
    try:
        policy = PolicyConfig.model_validate(interpolated)
    except ValidationError as exc:
        raise ConfigError(source, _pydantic_issues(exc, interpolated)) from None
    forwarded: list[str] = []
    issues = list(check_policy(policy, forwarded))
    if issues:
        raise ConfigError(source, issues)
    policy._forwarded_unknown_fields = tuple(dict.fromkeys(forwarded))
    return policy


def _pydantic_issues(exc: ValidationError, document: Mapping[str, Any]) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = list(err["loc"])
        # A tagged union (providers.<name>) inserts the tag into the location; drop it.
        if len(loc) >= 3 and loc[0] == "providers":
            block = document.get("providers", {}).get(loc[1])
            if isinstance(block, dict) and block.get("type") == loc[2]:
                del loc[2]
        loc = ["(key)" if part == "[key]" else part for part in loc]
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/configuration.md)"
        elif err["type"] == "missing":
            message = "required key is missing"
        issues.append(ConfigIssue(format_path(loc), message))
    return issues


# --- cross-checks ---------------------------------------------------------------------


def check_policy(policy: PolicyConfig, forwarded: list[str] | None = None) -> Iterable[ConfigIssue]:
    """Every cross-reference problem. ``forwarded`` collects the YAML paths of request
    fields let through by a provider's ``allow_unknown_fields``."""
    yield from _check_issuers(policy.session)
    yield from _check_roles(policy)
    yield from _check_embeds(policy, [] if forwarded is None else forwarded)
    yield from _check_services(policy)


def _check_issuers(session: SessionConfig) -> Iterable[ConfigIssue]:
    seen: set[str] = set()
    for index, issuer in enumerate(session.issuers):
        where = f"session.issuers[{index}]"
        if issuer.issuer in seen:
            yield ConfigIssue(f"{where}.issuer", "this issuer is configured twice")
        seen.add(issuer.issuer)
        algorithms = set(issuer.algorithms)
        hmac = algorithms & HMAC_ALGORITHMS
        asymmetric = algorithms - HMAC_ALGORITHMS
        if hmac and asymmetric:
            yield ConfigIssue(
                f"{where}.algorithms",
                "mixing HS* with RS*/ES* in one issuer is not allowed (key confusion); "
                "configure two issuers",
            )
            continue
        if hmac:
            if issuer.secret is None:
                yield ConfigIssue(f"{where}.secret", "HS* algorithms need a secret")
            else:
                needed = max(HMAC_DIGEST_BYTES[alg] for alg in hmac)
                if len(issuer.secret.get_secret_value().encode()) < needed:
                    yield ConfigIssue(
                        f"{where}.secret",
                        f"the secret must be at least {needed} bytes for {', '.join(sorted(hmac))}",
                    )
            if issuer.jwks_url is not None or issuer.public_key is not None:
                yield ConfigIssue(where, "an HS* issuer takes no jwks_url or public_key")
        else:
            if issuer.secret is not None:
                yield ConfigIssue(f"{where}.secret", "RS*/ES* issuers take no secret")
            if (issuer.jwks_url is None) == (issuer.public_key is None):
                yield ConfigIssue(
                    where, "RS*/ES* algorithms need exactly one of jwks_url or public_key"
                )
            elif issuer.public_key is not None:
                reason = pem_key_problem(issuer.public_key, issuer.algorithms)
                if reason:
                    yield ConfigIssue(f"{where}.public_key", reason)


def _check_roles(policy: PolicyConfig) -> Iterable[ConfigIssue]:
    for role, additions in policy.roles.items():
        for provider_name, body in additions.items():
            where = ("roles", role, provider_name)
            if provider_name not in policy.providers:
                yield ConfigIssue(format_path(where), f"no provider named {provider_name!r}")
                continue
            for field in sorted(BROKER_OWNED_FIELDS & set(body)):
                yield ConfigIssue(format_path((*where, field)), _owned_field_reason(field))
            compiled, errors = compile_tree(body, where)
            for path, reason in errors:
                yield ConfigIssue(format_path(path), reason)
            factory = provider_class(policy.providers[provider_name].type)
            for path, reason in factory.check_templates(_templated_fields(compiled)):
                yield ConfigIssue(format_path((*where, *path)), reason)


def _templated_fields(compiled: Any) -> list[tuple[tuple[str | int, ...], frozenset[str]]]:
    """Each templated field of a compiled body: its path and the roots it references."""
    return [
        (path, frozenset(ref.root for ref in template.references))
        for path, template in iter_templates(compiled)
    ]


def _owned_field_reason(field: str) -> str:
    return f"{field} is set by the broker from token_ttl_seconds; remove it"


def _check_embeds(policy: PolicyConfig, forwarded: list[str]) -> Iterable[ConfigIssue]:
    for name, embed in policy.embeds.items():
        where: YamlPath = ("embeds", name)
        provider_config = policy.providers.get(embed.provider)
        if provider_config is None:
            yield ConfigIssue(
                format_path((*where, "provider")), f"no provider named {embed.provider!r}"
            )
            continue
        factory = provider_class(provider_config.type)
        try:
            factory.validate_element(embed.element)
        except ValueError as exc:
            yield ConfigIssue(format_path((*where, "element")), str(exc))

        tenants = list(_allowed_tenants(policy, embed, where))
        for issue in tenants:
            if isinstance(issue, ConfigIssue):
                yield issue
        tenant_ids = [t for t in tenants if isinstance(t, str)]

        regions = provider_config.region_names()
        if regions is not None:
            for tenant_id in tenant_ids:
                region = policy.tenants[tenant_id].region
                if region not in regions:
                    yield ConfigIssue(
                        format_path(("providers", embed.provider, "regions")),
                        f"no region {region!r} (tenant {tenant_id!r} uses it for embed {name!r})",
                    )

        for field in sorted(BROKER_OWNED_FIELDS & set(embed.request)):
            yield ConfigIssue(format_path((*where, "request", field)), _owned_field_reason(field))
        compiled, errors = compile_tree(embed.request, (*where, "request"))
        if errors:
            yield from (ConfigIssue(format_path(p), r) for p, r in errors)
            continue
        for path, reason in factory.check_templates(_templated_fields(compiled)):
            yield ConfigIssue(format_path((*where, "request", *path)), reason)
        role_additions = _role_additions(policy, embed.provider)
        if role_additions is None:
            continue  # reported by _check_roles
        yield from _check_rendered(
            policy,
            name,
            embed,
            compiled,
            role_additions,
            tenant_ids,
            factory,
            forwarded if provider_config.allow_unknown_fields else None,
        )


def _allowed_tenants(
    policy: PolicyConfig, embed: EmbedConfig, where: YamlPath
) -> Iterable[str | ConfigIssue]:
    if "*" in embed.allow.tenants:
        yield from policy.tenants
        return
    for index, tenant_id in enumerate(embed.allow.tenants):
        if tenant_id in policy.tenants:
            yield tenant_id
        else:
            yield ConfigIssue(
                format_path((*where, "allow", "tenants", index)), f"no tenant named {tenant_id!r}"
            )


def _role_additions(policy: PolicyConfig, provider_name: str) -> list[tuple[str, Any]] | None:
    """(role, compiled additions) for this provider, in file order."""
    found = []
    for role, additions in policy.roles.items():
        body = additions.get(provider_name)
        if body is None:
            continue
        compiled, errors = compile_tree(body)
        if errors:
            return None
        found.append((role, compiled))
    return found


def _missing_attributes(
    tree: Any, where: YamlPath, attributes: Mapping[str, Any]
) -> list[tuple[YamlPath, Reference]]:
    missing = []
    for body_path, template in iter_templates(tree, where):
        for ref in template.references:
            if ref.root == "tenant" and ref.path[0] == "attributes":
                try:
                    lookup_path(attributes, ref.path[1:])
                except KeyError:
                    missing.append((body_path, ref))
    return missing


def _check_rendered(
    policy: PolicyConfig,
    name: str,
    embed: EmbedConfig,
    compiled: Any,
    role_additions: list[tuple[str, Any]],
    tenant_ids: list[str],
    factory: Any,
    forwarded: list[str] | None,
) -> Iterable[ConfigIssue]:
    """``forwarded`` is None when the provider is strict, else where unknown fields go."""
    request_path = ("embeds", name, "request")
    for tenant_id in tenant_ids:
        tenant = policy.tenants[tenant_id]
        missing = _missing_attributes(compiled, request_path, tenant.attributes)
        for role, additions in role_additions:
            missing += _missing_attributes(
                additions, ("roles", role, embed.provider), tenant.attributes
            )
        for body_path, ref in missing:
            yield ConfigIssue(
                format_path(body_path),
                f"{ref} is not defined for tenant {tenant_id!r} (tenants.{tenant_id}.attributes), "
                f"which embed {name!r} allows",
            )
        if missing:
            continue
        yield from _check_static_values(
            (name, embed.provider),
            (tenant_id, tenant.region, tenant.attributes),
            compiled,
            role_additions,
            factory,
        )
        every_role = [additions for _, additions in role_additions]
        for label, trees in (
            ("", [compiled]),
            (" with every role's additions", [compiled, *every_role]),
        ):
            problem, unknown = _render_and_validate(
                trees, tenant_id, tenant.region, tenant.attributes, name, factory, forwarded
            )
            if forwarded is not None:
                forwarded.extend(f"{format_path(request_path)}.{field}" for field in unknown)
            if problem:
                yield ConfigIssue(
                    format_path(request_path),
                    f"rendered for tenant {tenant_id!r}{label}, the body is not a valid "
                    f"{factory.type_name} request: {problem}",
                )
                break


def _check_static_values(
    embed: tuple[str, str],
    tenant: tuple[str, str, Mapping[str, Any]],
    compiled: Any,
    role_additions: list[tuple[str, Any]],
    factory: Any,
) -> Iterable[ConfigIssue]:
    """Each tenant and embed value a template writes into longer text, shown to the
    provider (``check_static_value``): the rendered body alone cannot tell a value that
    ended a SQL literal from the clause's own text."""
    (name, provider), (tenant_id, region, attributes) = embed, tenant
    resolve = static_resolver(name, tenant_id, region, attributes)
    trees: list[tuple[YamlPath, Any]] = [(("embeds", name, "request"), compiled)]
    trees += [(("roles", role, provider), additions) for role, additions in role_additions]
    for where, tree in trees:
        for body_path, template in iter_templates(tree):
            if template.is_single_reference:
                continue  # the whole field is the value: the operator's own text
            for ref in template.references:
                if ref.root not in STATIC_ROOTS:
                    continue
                reason = factory.check_static_value(body_path, resolve(ref))
                if reason:
                    yield ConfigIssue(
                        format_path((*where, *body_path)),
                        f"{ref} of tenant {tenant_id!r}: {reason}",
                    )


def _render_and_validate(
    trees: list[Any],
    tenant_id: str,
    region: str,
    attributes: Mapping[str, Any],
    embed_name: str,
    factory: Any,
    forwarded: list[str] | None,
) -> tuple[str | None, tuple[str, ...]]:
    """Render the request and role additions (merged after rendering, as at request
    time) with placeholder user values and validate the body against the vendor model.

    Returns the first problem (None when valid) and the unknown fields let through."""
    first_problem: str | None = None
    # A claim's JSON type is unknown at load: accept the body if it validates with the
    # claim as a string or as a list of strings.
    static = static_resolver(embed_name, tenant_id, region, attributes)
    for claim_value in (PLACEHOLDER_CLAIM, [PLACEHOLDER_CLAIM]):

        def resolve(ref: Reference, claim_value: Any = claim_value) -> Any:
            if ref.root != "user":
                return static(ref)
            if ref.path[0] == "claims":
                return claim_value
            return PLACEHOLDER_USER[ref.path[0]]

        try:
            body = render(trees[0], resolve)
            for additions in trees[1:]:
                body = deep_merge(body, render(additions, resolve))
            unknown = factory.validate_request(body, allow_unknown_fields=forwarded is not None)
        except (ValueError, TypeError, Missing) as exc:
            first_problem = first_problem or str(exc)
            continue
        return None, unknown
    return first_problem, ()


def _check_services(policy: PolicyConfig) -> Iterable[ConfigIssue]:
    owners: dict[str, str] = {}
    for name, service in policy.services.items():
        where = ("services", name)
        other = owners.get(service.key_sha256)
        if other is not None:
            yield ConfigIssue(
                format_path((*where, "key_sha256")), f"the same key as service {other!r}"
            )
        else:
            owners[service.key_sha256] = name
        for index, tenant_id in enumerate(service.allow.tenants):
            if tenant_id != "*" and tenant_id not in policy.tenants:
                yield ConfigIssue(
                    format_path((*where, "allow", "tenants", index)),
                    f"no tenant named {tenant_id!r}",
                )
        for index, embed_name in enumerate(service.allow.embeds):
            if embed_name != "*" and embed_name not in policy.embeds:
                yield ConfigIssue(
                    format_path((*where, "allow", "embeds", index)),
                    f"no embed named {embed_name!r}",
                )


__all__ = [
    "ConfigError",
    "ConfigIssue",
    "format_path",
    "load_policy_document",
    "load_policy_file",
    "load_policy_text",
]
