"""Who may get which token, and the vendor request it is minted from.

The policy knows nothing about HTTP or vendors' wire formats: it maps a verified user
to a tenant, decides whether an embed is allowed, and renders the vendor request body
from config and verified claims only. Everything that does not depend on the user is
rendered once, when the policy is built (for each embed, allowed tenant and role), so a
request only substitutes user values.

Denials use one code per kind (api.md): ``tenant_not_allowed``, ``embed_not_allowed``
(for unknown *and* disallowed embeds, so names cannot be enumerated), ``missing_claim``,
and ``invalid_request`` when a multi-tenant user does not say which tenant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.config.models import EmbedConfig, PolicyConfig, ServiceConfig
from app.config.templates import (
    STATIC_ROOTS,
    Missing,
    Reference,
    Resolver,
    compile_tree,
    deep_merge,
    lookup_path,
    render,
    static_resolver,
)
from app.errors import EmbedNotAllowed, InvalidRequest, MissingClaim, TenantNotAllowed
from app.providers.base import EmbedElementConfig


class User(Protocol):
    """A verified user: from a session JWT or a trusted service's request."""

    @property
    def id(self) -> str: ...
    @property
    def tenants(self) -> tuple[str, ...]: ...
    @property
    def roles(self) -> tuple[str, ...]: ...
    @property
    def email(self) -> str | None: ...
    @property
    def claims(self) -> Mapping[str, Any]: ...
    @property
    def issuer(self) -> str: ...
    @property
    def session(self) -> bytes | None:
        """The digest of the session token the user was verified from (a value that
        fixes every claim); None when a service vouches for the user."""


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """The user an internal service acts for (``POST /internal/v1/tokens``)."""

    id: str
    tenants: tuple[str, ...]
    roles: tuple[str, ...]
    email: str | None
    claims: Mapping[str, Any]
    issuer: str  # "service:<name>": user ids are namespaced by who vouches for them
    session: None = None


@dataclass(frozen=True, slots=True)
class EmbedRule:
    """One embed, compiled: who may have it and its request per allowed tenant."""

    name: str
    title: str | None
    provider: str
    provider_type: str
    ttl_seconds: int
    element: EmbedElementConfig | None
    tenants: frozenset[str]
    roles: frozenset[str] | None  # None: any role
    # tenant -> (base body, ((role, additions), ...) in config order); tenant and embed
    # references are already substituted, user references are left as Templates.
    bodies: Mapping[str, tuple[Any, tuple[tuple[str, Any], ...]]]

    def allows_roles(self, roles: Sequence[str]) -> bool:
        return self.roles is None or not self.roles.isdisjoint(roles)


@dataclass(frozen=True, slots=True)
class TokenPlan:
    """What to ask which vendor for: the fully rendered request, before expiry is set."""

    embed: EmbedRule
    tenant: str
    region: str
    body: Mapping[str, Any]


class Policy:
    """The compiled, immutable policy of one config file."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._embeds: dict[str, EmbedRule] = {
            name: self._compile_embed(name, embed) for name, embed in config.embeds.items()
        }

    # --- compile -----------------------------------------------------------------------

    def _compile_embed(self, name: str, embed: EmbedConfig) -> EmbedRule:
        config = self.config
        tenants = (
            frozenset(config.tenants)
            if "*" in embed.allow.tenants
            else frozenset(embed.allow.tenants) & frozenset(config.tenants)
        )
        base, _ = compile_tree(embed.request)
        role_bodies = []
        for role, additions in config.roles.items():
            if embed.provider in additions:
                compiled, _ = compile_tree(additions[embed.provider])
                role_bodies.append((role, compiled))
        bodies = {}
        for tenant_id in tenants:
            tenant = config.tenants[tenant_id]
            resolve = static_resolver(name, tenant_id, tenant.region, tenant.attributes)
            bodies[tenant_id] = (
                render(base, resolve, only=STATIC_ROOTS),
                tuple(
                    (role, render(body, resolve, only=STATIC_ROOTS)) for role, body in role_bodies
                ),
            )
        provider = config.providers[embed.provider]
        return EmbedRule(
            name=name,
            title=embed.title,
            provider=embed.provider,
            provider_type=provider.type,
            ttl_seconds=embed.token_ttl_seconds,
            element=embed.element,
            tenants=tenants,
            roles=frozenset(embed.allow.roles) if embed.allow.roles is not None else None,
            bodies=bodies,
        )

    # --- decide ------------------------------------------------------------------------

    def resolve_tenant(self, user: User, requested: str | None) -> str:
        """The tenant to act for: the session's only tenant, or the one it asks for."""
        if requested is not None:
            if requested not in user.tenants or requested not in self.config.tenants:
                raise TenantNotAllowed(f"the session does not grant tenant {requested!r}")
            return requested
        if len(user.tenants) > 1:
            raise InvalidRequest(
                "the session grants several tenants; say which one in the 'tenant' field"
            )
        tenant = user.tenants[0]
        if tenant not in self.config.tenants:
            raise TenantNotAllowed("the session's tenant is not served by this broker")
        return tenant

    def authorize(
        self, user: User, tenant: str, embed_name: str, service: ServiceConfig | None = None
    ) -> EmbedRule:
        rule = self._embeds.get(embed_name)
        if (
            rule is None
            or tenant not in rule.tenants
            or not rule.allows_roles(user.roles)
            or (service is not None and not _listed(embed_name, service.allow.embeds))
        ):
            raise EmbedNotAllowed(f"embed {embed_name!r} is not available to you")
        return rule

    def authorize_service_tenant(self, service: ServiceConfig, tenant: str) -> None:
        if tenant not in self.config.tenants or not _listed(tenant, service.allow.tenants):
            raise TenantNotAllowed(f"the service may not act for tenant {tenant!r}")

    def embeds_for(self, user: User, tenant: str) -> list[EmbedRule]:
        return [
            rule
            for rule in self._embeds.values()
            if tenant in rule.tenants and rule.allows_roles(user.roles)
        ]

    def plan(self, user: User, tenant: str, rule: EmbedRule) -> TokenPlan:
        """Render the vendor request for this user. Raises MissingClaim."""
        base, role_bodies = rule.bodies[tenant]
        resolve = _user_resolver(user)
        try:
            # User values first, then the merge: a role adding ["analyst"] to a list
            # that comes from {user.roles} joins the user's roles instead of replacing them.
            body = render(base, resolve)
            for role, additions in role_bodies:
                if role in user.roles:
                    body = deep_merge(body, render(additions, resolve))
        except Missing as exc:
            raise MissingClaim(f"the session has no {_claim_name(exc.reference)} claim") from None
        except TypeError as exc:
            raise MissingClaim(f"a session claim has the wrong type: {exc}") from None
        return TokenPlan(
            embed=rule, tenant=tenant, region=self.config.tenants[tenant].region, body=body
        )


def _listed(name: str, allowed: Sequence[str]) -> bool:
    return "*" in allowed or name in allowed


def _claim_name(ref: Reference) -> str:
    if ref.path[0] == "claims":
        return repr(".".join(ref.path[1:]))
    return repr(ref.path[0])


def _user_resolver(user: User) -> Resolver:
    def resolve(ref: Reference) -> Any:
        field = ref.path[0]
        if field == "id":
            return user.id
        if field == "issuer":  # the same id at two issuers is two users
            return user.issuer
        if field == "roles":
            return list(user.roles)
        if field == "email":
            if user.email is None:
                raise Missing(ref)
            return user.email
        try:
            value = lookup_path(user.claims, ref.path[1:])
        except KeyError:
            raise Missing(ref) from None
        if value is None:
            raise Missing(ref)
        if not _json_safe(value):
            raise TypeError(
                f"claim '{'.'.join(ref.path[1:])}' holds a value no vendor body can carry"
            )
        return value

    return resolve


_INT_RANGE = (-(2**63), 2**64 - 1)


def _json_safe(value: Any, depth: int = 0) -> bool:
    """True when ``value`` encodes as JSON for a vendor body (64-bit ints, finite floats)."""
    if isinstance(value, str | bool) or value is None:
        return True
    if isinstance(value, int):
        return _INT_RANGE[0] <= value <= _INT_RANGE[1]
    if isinstance(value, float):
        return math.isfinite(value)
    if depth > 16:
        return False
    if isinstance(value, list):
        return all(_json_safe(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(_json_safe(item, depth + 1) for item in value.values())
    return False


__all__ = ["EmbedRule", "Policy", "ServiceUser", "TokenPlan", "User"]
