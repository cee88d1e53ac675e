"""Property: no vendor request ever carries another tenant's data (security.md).

Hypothesis generates a whole world -- tenants in distinct regions with distinctive
attribute values, per-region API keys, roles with request additions, Embeddable,
Databrain, Superset (login, CSRF, guest token; RLS clauses over tenant values) and
Metabase (signed by the broker) embeds whose requests are templates over tenant, user
and embed values,
users of one or several tenants, internal services -- and a batch of token requests.
The policy is loaded with the real loader and the requests go through the real flow
(Policy, TokenFlow with cache and single-flight, VendorCaller, the real provider
classes) to an in-process fake of both vendors that records every request.

An independent oracle (written here, over the generator's own description of each
template) says what each request must get: a denial and which codes may explain it,
or the exact vendor request (URL, API key, body). Every granted token is traced back
to the vendor request that minted it, so a token served from the cache or shared by
single-flight is checked against the request it was minted for.

Every marker (tenant id, attribute value, user value, API key) is ``<word>-<index>-...``
with a word no other word ends with, so a marker cannot appear in a request by accident.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import jwt as pyjwt
import orjson
from hypothesis import HealthCheck, event, example, given, reject, settings
from hypothesis import strategies as st

from app.auth import SessionUser
from app.config.loader import ConfigError, load_policy_document
from app.config.models import PolicyConfig
from app.errors import BrokerError
from app.issuance import Grant, TokenFlow
from app.observability.metrics import Metrics
from app.policy import Policy, ServiceUser, User
from app.providers.base import AnyProvider
from app.providers.registry import provider_class
from app.resilience import VendorCaller
from app.state.cache import MemoryTokenCache
from app.state.ratelimit import RateLimiter

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DENIAL_CODES = frozenset(
    {
        "invalid_request",
        "tenant_not_allowed",
        "embed_not_allowed",
        "missing_claim",
        "rate_limited",
        "upstream_rejected",  # only a Superset body the vendor's model refuses (below)
    }
)
UPSTREAM_REJECTED = "upstream_rejected"
TENANT_NOT_ALLOWED = "tenant_not_allowed"
EMBED_NOT_ALLOWED = "embed_not_allowed"
MISSING_CLAIM = "missing_claim"
INVALID_REQUEST = "invalid_request"

ProviderName = Literal["embeddable", "databrain", "superset", "metabase"]
EMBEDDABLE: ProviderName = "embeddable"
DATABRAIN: ProviderName = "databrain"
SUPERSET: ProviderName = "superset"
METABASE: ProviderName = "metabase"

REGIONS = ("us", "eu", "ap", "sa", "me")
DEFAULT_EMBEDDABLE_BASES = {
    "us": "https://api.us.embeddable.com",
    "eu": "https://api.eu.embeddable.com",
}
EMBEDDABLE_PATH = "/api/v1/security-token"
DATABRAIN_BASE = "https://databrain.vendor.test/dbn"
DATABRAIN_PATH = "/api/v2/guest-token/create"
SESSION_SECRET = "isolation-session-secret-0123456789-abcdef"
SUPERSET_BASE = "https://superset.vendor.test/bi"
SUPERSET_LOGIN_PATH = "/api/v1/security/login"
SUPERSET_CSRF_PATH = "/api/v1/security/csrf_token/"
SUPERSET_GUEST_PATH = "/api/v1/security/guest_token/"
SUPERSET_PASSWORD = "sspass-000000"
SUPERSET_CSRF = "sscsrf-000000"
SUPERSET_SESSION = "sssession-000000"
SUPERSET_DASHBOARD = "5b1c8a0e-0000-4000-8000-000000000021"
METABASE_SITE = "https://metabase.vendor.test"
METABASE_SECRET = "ab" * 32

ROLE_NAMES = ("viewer", "analyst", "admin", "auditor")
UNKNOWN_EMBED = "no-such-embed"
GHOST_TENANT = "tenant-ghost"
EMBEDDABLE_IDS = (
    "c2b1a0de-0000-4000-8000-000000000001",
    "c2b1a0de-0000-4000-8000-000000000002",
)
PERMISSION_FLAGS = ("isEnableUnderlyingData", "isEnableDownloadMetrics", "isShowSideBar")
CONTEXT_KEYS = ("tenantId", "regions", "schema", "region", "userId", "groups", "team", "label")
LITERALS = ("production", "ctx", "read-only", "sales")
SEPARATORS = ("", "/", ":", " | ")

DIGITS = st.integers(0, 999_999).map(lambda n: f"{n:06d}")


def embeddable_base(region: str) -> str:
    return DEFAULT_EMBEDDABLE_BASES.get(region, f"https://embeddable-{region}.vendor.test/gateway")


# --- the generated world ------------------------------------------------------------------
#
# A request template is described by slots, so the oracle can render it without the
# code under test: a literal, a single reference (keeps its JSON type), or text that
# interpolates references after a literal prefix.

TemplatePath = tuple[str, ...]


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Ref:
    path: TemplatePath


@dataclass(frozen=True)
class Text:
    prefix: str
    refs: tuple[Ref, ...]
    separator: str


Slot = Lit | Ref | Text


@dataclass(frozen=True)
class TenantSpec:
    id: str
    region: str
    attributes: dict[str, Any]
    markers: frozenset[str]


@dataclass(frozen=True)
class UserSpec:
    id: str
    tenants: tuple[str, ...]
    roles: tuple[str, ...]
    email: str | None
    claims: dict[str, Any]
    markers: frozenset[str]


@dataclass(frozen=True)
class EmbedSpec:
    name: str
    provider: ProviderName
    tenants: tuple[str, ...]  # or ("*",)
    roles: tuple[str, ...] | None
    ttl_seconds: int
    request: dict[str, Any]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    key: str
    tenants: tuple[str, ...]
    embeds: tuple[str, ...]


@dataclass(frozen=True)
class World:
    tenants: tuple[TenantSpec, ...]
    region_keys: dict[str, str]
    databrain_key: str
    roles: dict[str, dict[str, dict[str, Any]]]
    embeds: tuple[EmbedSpec, ...]
    users: tuple[UserSpec, ...]
    services: tuple[ServiceSpec, ...]

    def tenant(self, tenant_id: str) -> TenantSpec | None:
        return next((t for t in self.tenants if t.id == tenant_id), None)

    def embed(self, name: str) -> EmbedSpec | None:
        return next((e for e in self.embeds if e.name == name), None)

    def service(self, name: str) -> ServiceSpec:
        return next(s for s in self.services if s.name == name)

    def document(self) -> dict[str, Any]:
        """The policy file, as the loader reads it."""
        return {
            "version": 1,
            "session": {
                "issuers": [
                    {
                        "issuer": "app-backend",
                        "audiences": ["analytics-web"],
                        "algorithms": ["HS256"],
                        "secret": SESSION_SECRET,
                    }
                ],
                "claims": {"user_id": "sub", "tenants": "org_id", "roles": "roles"},
            },
            "tenants": {
                t.id: {"region": t.region, "attributes": t.attributes} for t in self.tenants
            },
            "roles": {
                role: {provider: to_config(tree) for provider, tree in additions.items()}
                for role, additions in self.roles.items()
            },
            "providers": {
                EMBEDDABLE: {
                    "type": "embeddable",
                    "regions": {
                        region: {"api_key": key}
                        if region in DEFAULT_EMBEDDABLE_BASES
                        else {"api_key": key, "base_url": embeddable_base(region)}
                        for region, key in self.region_keys.items()
                    },
                },
                DATABRAIN: {
                    "type": "databrain",
                    "base_url": DATABRAIN_BASE,
                    "api_key": self.databrain_key,
                },
                SUPERSET: {
                    "type": "superset",
                    "base_url": SUPERSET_BASE,
                    "username": "svc-embed",
                    "password": SUPERSET_PASSWORD,
                },
                METABASE: {
                    "type": "metabase",
                    "site_url": METABASE_SITE,
                    "secret": METABASE_SECRET,
                },
            },
            "embeds": {
                embed.name: {
                    "provider": embed.provider,
                    "allow": {"tenants": list(embed.tenants)}
                    | ({} if embed.roles is None else {"roles": list(embed.roles)}),
                    "token_ttl_seconds": embed.ttl_seconds,
                    "request": to_config(embed.request),
                }
                | ({"element": {"dashboard_id": "dash-1"}} if embed.provider == DATABRAIN else {})
                | (
                    {"element": {"dashboard_id": SUPERSET_DASHBOARD}}
                    if embed.provider == SUPERSET
                    else {}
                )
                for embed in self.embeds
            },
            "services": {
                service.name: {
                    "key_sha256": hashlib.sha256(service.key.encode()).hexdigest(),
                    "allow": {"tenants": list(service.tenants), "embeds": list(service.embeds)},
                }
                for service in self.services
            },
            "cache": {"enabled": True, "max_entries": 10_000},
        }


@dataclass(frozen=True)
class Call:
    user: int
    embed: str
    tenant: str | None
    service: str | None = None


@dataclass(frozen=True)
class Scenario:
    world: World
    calls: tuple[Call, ...]


def template(slot: Slot) -> str:
    if isinstance(slot, Lit):
        return slot.text
    if isinstance(slot, Ref):
        return "{" + ".".join(slot.path) + "}"
    return slot.prefix + slot.separator.join(template(ref) for ref in slot.refs)


def to_config(node: Any) -> Any:
    if isinstance(node, Lit | Ref | Text):
        return template(node)
    if isinstance(node, dict):
        return {key: to_config(value) for key, value in node.items()}
    if isinstance(node, list):
        return [to_config(item) for item in node]
    return node


def make_tenant(index: int, region: str, digits: str = "000000", zones: int = 1) -> TenantSpec:
    tag = f"{index}-{digits}"
    attributes = {
        "environment": f"env-{tag}",
        "datasource": f"dsrc-{tag}",
        "regions": [f"zone-{tag}-{z}" for z in range(zones)],
        "warehouse": {"schema": f"schema-{tag}"},
    }
    return TenantSpec(
        id=f"tenant-{tag}",
        region=region,
        attributes=attributes,
        markers=frozenset(
            {f"tenant-{tag}", f"env-{tag}", f"dsrc-{tag}", f"schema-{tag}"}
            | set(attributes["regions"])
        ),
    )


def make_user(
    index: int,
    tenants: Sequence[str],
    roles: Sequence[str] = (),
    *,
    digits: str = "000000",
    department: Literal["string", "list", "absent", "null"] = "string",
    groups: bool = True,
    team: bool = True,
    email: bool = True,
) -> UserSpec:
    tag = f"{index}-{digits}"
    user_id = f"user-{tag}"
    claims: dict[str, Any] = {"sub": user_id, "org_id": list(tenants), "roles": list(roles)}
    markers = {user_id}
    if department == "string":
        claims["department"] = f"dept-{tag}"
    elif department == "list":
        claims["department"] = [f"dept-{tag}-a", f"dept-{tag}-b"]
    elif department == "null":
        claims["department"] = None
    if groups:
        claims["groups"] = [f"grp-{tag}-0", f"grp-{tag}-1"]
    if team:
        claims["org"] = {"team": f"team-{tag}"}
    address = f"mail-{tag}@example.test" if email else None
    if address is not None:
        claims["email"] = address
    markers |= {f"dept-{tag}", f"grp-{tag}", f"team-{tag}", f"mail-{tag}"}
    return UserSpec(
        id=user_id,
        tenants=tuple(tenants),
        roles=tuple(roles),
        email=address,
        claims=claims,
        markers=frozenset(markers),
    )


def region_keys(digits: str = "000000") -> dict[str, str]:
    return {region: f"apikey-{region}-{digits}" for region in REGIONS}


# --- strategies ---------------------------------------------------------------------------

TENANT_STRING_REFS = (
    ("tenant", "id"),
    ("tenant", "region"),
    ("tenant", "attributes", "environment"),
    ("tenant", "attributes", "datasource"),
    ("tenant", "attributes", "warehouse", "schema"),
)
TENANT_STRING_LIST_REFS = (("tenant", "attributes", "regions"),)
TENANT_OBJECT_REFS = (("tenant", "attributes", "warehouse"),)
USER_STRING_REFS = (
    ("user", "id"),
    ("user", "email"),
    ("user", "claims", "department"),
    ("user", "claims", "org", "team"),
)
USER_LIST_REFS = (("user", "roles"), ("user", "claims", "groups"))
USER_OBJECT_REFS = (("user", "claims", "org"),)
EMBED_REFS = (("embed", "name"),)

STRING_REFS = TENANT_STRING_REFS + USER_STRING_REFS + EMBED_REFS
STRING_LIST_REFS = TENANT_STRING_LIST_REFS + USER_LIST_REFS


def refs(paths: Sequence[TemplatePath]) -> st.SearchStrategy[Slot]:
    return st.sampled_from(paths).map(Ref)


def texts(paths: Sequence[TemplatePath] = STRING_REFS) -> st.SearchStrategy[Slot]:
    """Text interpolating 1-3 string-valued references (a user's claim may still be a list)."""
    return st.builds(
        Text,
        prefix=st.sampled_from(("ctx:", "t=", "x/")),
        refs=st.lists(refs(paths), min_size=1, max_size=3).map(tuple),
        separator=st.sampled_from(SEPARATORS),
    )


def string_slots() -> st.SearchStrategy[Slot]:
    return st.one_of(refs(STRING_REFS), texts(), st.sampled_from(LITERALS).map(Lit))


def any_slots() -> st.SearchStrategy[Slot]:
    return st.one_of(
        string_slots(), refs(STRING_LIST_REFS), refs(TENANT_OBJECT_REFS + USER_OBJECT_REFS)
    )


def filter_values() -> st.SearchStrategy[Slot]:
    """Databrain filter values: strings or lists of strings."""
    return st.one_of(string_slots(), refs(STRING_LIST_REFS))


@st.composite
def embeddable_requests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "embeddableId": Lit(draw(st.sampled_from(EMBEDDABLE_IDS))),
        "user": draw(string_slots()),
        "securityContext": draw(st.dictionaries(st.sampled_from(CONTEXT_KEYS), any_slots())),
    }
    if draw(st.booleans()):
        body["savedVersion"] = Lit(draw(st.sampled_from(("production", "staging", "v3"))))
    if draw(st.booleans()):
        body["environment"] = draw(string_slots())
    if draw(st.booleans()):
        body["roles"] = [Lit("embed-reader")]
    if draw(st.booleans()):
        body["filters"] = [
            {
                "member": Lit("orders.tenant"),
                "operator": Lit("equals"),
                "values": [draw(any_slots())],
            }
        ]
    return body


@st.composite
def databrain_requests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "clientId": draw(st.one_of(refs(TENANT_STRING_REFS), texts())),
        "dataAppName": Lit(draw(st.sampled_from(("opsapp", "salesApp2")))),
    }
    if draw(st.booleans()):
        body["datasourceName"] = draw(string_slots())
    params: dict[str, Any] = {}
    if draw(st.booleans()):
        params["userIdentifier"] = draw(string_slots())
    if draw(st.booleans()):
        values = draw(
            st.dictionaries(st.sampled_from(("region", "tenant", "team")), filter_values())
        )
        params["dashboardAppFilters"] = [{"dashboardId": Lit("dash-1"), "values": values}]
    if draw(st.booleans()):
        params["appFilters"] = [{"metricId": Lit("metric-1"), "values": draw(filter_values())}]
    keep_empty_params = draw(st.booleans())
    if params or keep_empty_params:
        body["params"] = params
    if draw(st.booleans()):
        body["permissions"] = draw(
            st.dictionaries(st.sampled_from(PERMISSION_FLAGS), st.booleans(), min_size=1)
        )
    return body


def clause_slots() -> st.SearchStrategy[Slot]:
    """An RLS clause: text over tenant and embed values only (the loader refuses a
    session value inside SQL), or a literal."""
    return st.one_of(
        texts(TENANT_STRING_REFS + EMBED_REFS), st.sampled_from(("1 = 1", "active")).map(Lit)
    )


@st.composite
def superset_requests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resources": [{"type": Lit("dashboard"), "id": Lit(SUPERSET_DASHBOARD)}],
    }
    if draw(st.booleans()):
        body["user"] = {"username": draw(string_slots())}
    if draw(USUALLY):
        rules = []
        for _ in range(draw(st.integers(1, 2))):
            rule: dict[str, Any] = {"clause": draw(clause_slots())}
            if draw(st.booleans()):
                rule["dataset"] = draw(st.integers(1, 9))
            rules.append(rule)
        body["rls"] = rules
    return body


@st.composite
def metabase_requests(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("dashboard", "question")))
    body: dict[str, Any] = {"resource": {kind: draw(st.integers(1, 40))}}
    if draw(USUALLY):
        body["params"] = draw(
            st.dictionaries(st.sampled_from(("tenant", "region", "team", "user")), filter_values())
        )
    return body


REQUESTS = {
    EMBEDDABLE: lambda: embeddable_requests(),
    DATABRAIN: lambda: databrain_requests(),
    SUPERSET: lambda: superset_requests(),
    METABASE: lambda: metabase_requests(),
}


@st.composite
def role_additions(draw: st.DrawFn) -> dict[str, dict[str, dict[str, Any]]]:
    """Additions never collide with a templated base field, so merge order is unambiguous."""
    roles: dict[str, dict[str, dict[str, Any]]] = {}
    for role in draw(st.lists(st.sampled_from(ROLE_NAMES), unique=True, max_size=3)):
        additions: dict[str, dict[str, Any]] = {}
        if draw(st.booleans()):
            embeddable: dict[str, Any] = {"roles": [Lit(role)]}
            if draw(st.booleans()):
                embeddable["securityContext"] = {f"{role}Scope": draw(any_slots())}
            additions[EMBEDDABLE] = embeddable
        if draw(st.booleans()):
            flags = draw(
                st.dictionaries(st.sampled_from(PERMISSION_FLAGS), st.booleans(), min_size=1)
            )
            databrain: dict[str, Any] = {"permissions": flags}
            if draw(st.booleans()):
                hidden = draw(st.one_of(refs(TENANT_STRING_REFS), st.just(Lit(f"{role}-filter"))))
                databrain["params"] = {"hideDashboardFilters": [hidden]}
            additions[DATABRAIN] = databrain
        if draw(st.booleans()):
            additions[SUPERSET] = {"rls": [{"clause": draw(clause_slots())}]}
        if draw(st.booleans()):
            additions[METABASE] = {"params": {f"{role}_scope": draw(filter_values())}}
        roles[role] = additions
    return roles


USUALLY = st.sampled_from((True, True, True, False))
RARELY = st.sampled_from((False,) * 9 + (True,))


@st.composite
def embed_specs(draw: st.DrawFn, tenant_ids: Sequence[str]) -> tuple[EmbedSpec, ...]:
    embeds: list[EmbedSpec] = []
    for index in range(draw(st.integers(1, 4))):
        provider = draw(st.sampled_from((EMBEDDABLE, DATABRAIN, SUPERSET, METABASE)))
        allowed = draw(
            st.one_of(
                st.just(("*",)),
                st.lists(st.sampled_from(tenant_ids), min_size=1, unique=True).map(tuple),
            )
        )
        roles = draw(
            st.none() | st.lists(st.sampled_from(ROLE_NAMES), min_size=1, max_size=2, unique=True)
        )
        same_vendor = [e for e in embeds if e.provider == provider]
        if same_vendor and not draw(USUALLY):
            # Same body as another embed: they share a token only if the lifetime matches.
            request = draw(st.sampled_from(same_vendor)).request
        else:
            request = draw(REQUESTS[provider]())
        embeds.append(
            EmbedSpec(
                name=f"{provider}-{index}",
                provider=provider,
                tenants=allowed,
                roles=None if roles is None else tuple(roles),
                ttl_seconds=draw(st.sampled_from((60, 300, 900))),
                request=request,
            )
        )
    return tuple(embeds)


@st.composite
def user_specs(draw: st.DrawFn, tenant_ids: Sequence[str]) -> tuple[UserSpec, ...]:
    """Most users have a role and every claim; some lack one or have it as a list."""
    users = []
    for index in range(draw(st.integers(1, 4))):
        tenants = draw(st.lists(st.sampled_from(tenant_ids), min_size=1, max_size=3, unique=True))
        if draw(RARELY):
            tenants.append(GHOST_TENANT)  # a tenant this broker does not serve
        roles = st.lists(st.sampled_from(ROLE_NAMES), min_size=1, max_size=3, unique=True)
        claims: dict[str, Any] = {}
        if not draw(USUALLY):
            claims = {
                "department": draw(st.sampled_from(("string", "list", "absent", "null"))),
                "groups": draw(st.booleans()),
                "team": draw(st.booleans()),
                "email": draw(st.booleans()),
            }
        users.append(
            make_user(
                index,
                tenants,
                draw(roles if draw(USUALLY) else st.just([])),
                digits=draw(DIGITS),
                **claims,
            )
        )
    return tuple(users)


def some_or_all(names: Sequence[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.one_of(
        st.just(("*",)), st.lists(st.sampled_from(names), min_size=1, unique=True).map(tuple)
    )


@st.composite
def service_specs(
    draw: st.DrawFn, tenant_ids: Sequence[str], embed_names: Sequence[str]
) -> tuple[ServiceSpec, ...]:
    return tuple(
        ServiceSpec(
            name=f"service-{index}",
            key=f"service-key-{index}-0123456789abcdef",
            tenants=draw(some_or_all(tenant_ids)),
            embeds=draw(some_or_all(embed_names)),
        )
        for index in range(draw(st.sampled_from((1, 2, 0))))
    )


@st.composite
def call_specs(draw: st.DrawFn, world: World) -> tuple[Call, ...]:
    """Mostly plausible requests (a granted tenant, a known embed), some hostile ones."""
    every_tenant = [t.id for t in world.tenants] + [GHOST_TENANT]
    calls = []
    for _ in range(draw(st.integers(1, 8))):
        user_index = draw(st.integers(0, len(world.users) - 1))
        user = world.users[user_index]
        service = (
            draw(st.sampled_from([s.name for s in world.services]))
            if (world.services and not draw(USUALLY))
            else None
        )
        choice = draw(st.sampled_from(("granted", "granted", "any", "none")))
        if choice == "any" or service is not None:
            tenant: str | None = draw(st.sampled_from(every_tenant))
        elif choice == "granted":
            tenant = draw(st.sampled_from(user.tenants))
        else:
            tenant = None
        embed = UNKNOWN_EMBED if draw(RARELY) else draw(st.sampled_from(world.embeds)).name
        calls.append(Call(user=user_index, embed=embed, tenant=tenant, service=service))
    return tuple(calls)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(2, 5))
    regions = draw(st.permutations(REGIONS))[:count]
    tenants = tuple(
        make_tenant(index, region, draw(DIGITS), draw(st.integers(1, 3)))
        for index, region in enumerate(regions)
    )
    tenant_ids = [t.id for t in tenants]
    embeds = draw(embed_specs(tenant_ids))
    world = World(
        tenants=tenants,
        region_keys=region_keys(draw(DIGITS)),
        databrain_key=f"dbnkey-{draw(DIGITS)}",
        roles=draw(role_additions()),
        embeds=embeds,
        users=draw(user_specs(tenant_ids)),
        services=draw(service_specs(tenant_ids, [e.name for e in embeds])),
    )
    return Scenario(world=world, calls=draw(call_specs(world)))


# --- the oracle ---------------------------------------------------------------------------


class Unresolvable(Exception):
    """A user value a template needs is absent, null or (inside text) not a string."""


@dataclass(frozen=True)
class RenderContext:
    tenant: TenantSpec
    user: UserSpec
    embed: str

    def value(self, path: TemplatePath) -> Any:
        root, name, *rest = path
        if root == "embed":
            return self.embed
        if root == "tenant":
            if name == "id":
                return self.tenant.id
            if name == "region":
                return self.tenant.region
            return dig(self.tenant.attributes, rest)
        if name == "id":
            return self.user.id
        if name == "roles":
            return list(self.user.roles)
        if name == "email":
            if self.user.email is None:
                raise Unresolvable(name)
            return self.user.email
        try:
            value = dig(self.user.claims, rest)
        except KeyError:
            raise Unresolvable(".".join(rest)) from None
        if value is None:
            raise Unresolvable(".".join(rest))
        return value


def dig(data: Any, path: Sequence[str]) -> Any:
    for segment in path:
        if not isinstance(data, Mapping) or segment not in data:
            raise KeyError(segment)
        data = data[segment]
    return data


def render(node: Any, context: RenderContext) -> Any:
    if isinstance(node, Lit):
        return node.text
    if isinstance(node, Ref):
        return context.value(node.path)
    if isinstance(node, Text):
        pieces = []
        for ref in node.refs:
            value = context.value(ref.path)
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise Unresolvable(template(ref))
            pieces.append(str(value))
        return node.prefix + node.separator.join(pieces)
    if isinstance(node, dict):
        return {key: render(value, context) for key, value in node.items()}
    if isinstance(node, list):
        return [render(item, context) for item in node]
    return node


def merged(base: Any, addition: Any) -> Any:
    """config.md's deep merge: mappings key by key, lists joined without repeats."""
    if isinstance(base, dict) and isinstance(addition, dict):
        out = dict(base)
        for key, value in addition.items():
            out[key] = merged(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(addition, list):
        return base + [item for item in addition if item not in base]
    return addition


@dataclass(frozen=True)
class Denied:
    codes: frozenset[str]
    """Every code that truthfully explains the denial (api.md fixes no precedence)."""


@dataclass(frozen=True)
class Issued:
    tenant: TenantSpec
    provider: ProviderName
    url: str
    api_key: str
    body: dict[str, Any]

    @property
    def identity(self) -> bytes:
        """What the vendor is asked, and where: one vendor call per identity. A signed
        token is its payload: the same payload signed in the same second is the same
        token, whichever region asked (it carries nothing else)."""
        region = None if self.provider == METABASE else self.tenant.region
        return orjson.dumps([self.provider, region, self.body], option=orjson.OPT_SORT_KEYS)


def expected_outcome(world: World, call: Call) -> Denied | Issued:
    user = world.users[call.user]
    service = world.service(call.service) if call.service else None
    codes: set[str] = set()
    if service is not None:
        assert call.tenant is not None
        tenant_id = call.tenant
        if world.tenant(tenant_id) is None or not listed(tenant_id, service.tenants):
            codes.add(TENANT_NOT_ALLOWED)
    elif call.tenant is not None:
        tenant_id = call.tenant
        if tenant_id not in user.tenants or world.tenant(tenant_id) is None:
            codes.add(TENANT_NOT_ALLOWED)
    elif len(user.tenants) > 1:
        return Denied(frozenset({INVALID_REQUEST}))
    else:
        tenant_id = user.tenants[0]
        if world.tenant(tenant_id) is None:
            codes.add(TENANT_NOT_ALLOWED)
    embed = world.embed(call.embed)
    if (
        embed is None
        or not listed(tenant_id, embed.tenants)
        or (embed.roles is not None and not set(embed.roles) & set(user.roles))
        or (service is not None and not listed(embed.name, service.embeds))
    ):
        codes.add(EMBED_NOT_ALLOWED)
    if codes:
        return Denied(frozenset(codes))
    assert embed is not None
    tenant = world.tenant(tenant_id)
    assert tenant is not None
    context = RenderContext(tenant=tenant, user=user, embed=embed.name)
    try:
        body = render(embed.request, context)
        for role, additions in world.roles.items():
            if role in user.roles and embed.provider in additions:
                body = merged(body, render(additions[embed.provider], context))
    except Unresolvable:
        return Denied(frozenset({MISSING_CLAIM}))
    if embed.provider == SUPERSET:
        guest = body.get("user")
        if isinstance(guest, dict) and not isinstance(guest.get("username", ""), str):
            # The guest-token body is checked again once the session's values are in it:
            # a whole-value claim of another type (a list, say) for the user name is
            # refused before sending, with the code Superset's own 400 would give.
            return Denied(frozenset({UPSTREAM_REJECTED}))
        body.setdefault("rls", [])
        url = SUPERSET_BASE + SUPERSET_GUEST_PATH
        api_key = SUPERSET_ACCESS
    elif embed.provider == METABASE:
        body.setdefault("params", {})
        url = METABASE_SITE  # nothing is sent: the broker signs
        api_key = ""
    elif embed.provider == EMBEDDABLE:
        body.setdefault("savedVersion", "production")
        body.setdefault("securityContext", {})
        body["expiryInSeconds"] = embed.ttl_seconds
        url = embeddable_base(tenant.region) + EMBEDDABLE_PATH
        api_key = world.region_keys[tenant.region]
    else:
        body["expiryTime"] = embed.ttl_seconds * 1000
        url = DATABRAIN_BASE + DATABRAIN_PATH
        api_key = world.databrain_key
    return Issued(tenant=tenant, provider=embed.provider, url=url, api_key=api_key, body=body)


def listed(name: str, allowed: Sequence[str]) -> bool:
    return "*" in allowed or name in allowed


def forbidden_markers(world: World, call: Call, issued: Issued) -> set[str]:
    """What must not appear anywhere in the vendor request for ``issued``."""
    acting_user = world.users[call.user]
    markers = {
        marker
        for tenant in world.tenants
        if tenant.id != issued.tenant.id
        for marker in tenant.markers
    }
    markers |= {
        marker for user in world.users if user is not acting_user for marker in user.markers
    }
    markers |= {*world.region_keys.values(), world.databrain_key}
    markers |= {SUPERSET_PASSWORD, METABASE_SECRET}
    markers |= {embeddable_base(region).split("://")[1] for region in REGIONS}
    markers.discard(issued.api_key)
    if issued.provider == EMBEDDABLE:
        markers.discard(embeddable_base(issued.tenant.region).split("://")[1])
    return markers


# --- running the flow ---------------------------------------------------------------------


@dataclass(frozen=True)
class VendorRequest:
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def serialized(self) -> str:
        lines = [f"POST {self.url}", *(f"{name}: {value}" for name, value in self.headers)]
        return "\n".join([*lines, "", self.body.decode()])

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)


@dataclass
class FakeVendors:
    """Answers like Embeddable and Databrain; every token is unique and names its request."""

    minted: dict[str, VendorRequest] = field(default_factory=dict)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        # Yield once, so concurrent identical requests meet in the single-flight.
        await asyncio.sleep(0)
        recorded = VendorRequest(
            url=str(request.url),
            headers=tuple(request.headers.multi_items()),
            body=request.content,
        )
        serial = len(self.minted) + 1
        path = request.url.path
        if path.endswith(SUPERSET_LOGIN_PATH):
            if orjson.loads(request.content).get("password") != SUPERSET_PASSWORD:
                return httpx.Response(401, json={"message": "Not authorized"})
            return httpx.Response(200, json={"access_token": SUPERSET_ACCESS})
        if path.startswith("/bi/") and request.headers.get("authorization") != (
            f"Bearer {SUPERSET_ACCESS}"
        ):
            return httpx.Response(401, json={"msg": "Missing Authorization Header"})
        if path.endswith(SUPERSET_CSRF_PATH):
            cookie = f"session={SUPERSET_SESSION}; HttpOnly; Path=/"
            return httpx.Response(
                200, json={"result": SUPERSET_CSRF}, headers={"set-cookie": cookie}
            )
        if path.endswith(SUPERSET_GUEST_PATH):
            csrf_ok = request.headers.get("x-csrftoken") == SUPERSET_CSRF
            if not csrf_ok or request.headers.get("cookie") != f"session={SUPERSET_SESSION}":
                return httpx.Response(400, json={"message": "The CSRF token is missing."})
            token = jwt_looking_token(serial)
        elif path.endswith(EMBEDDABLE_PATH):
            token = jwt_looking_token(serial)
        elif path.endswith(DATABRAIN_PATH):
            token = str(uuid.UUID(int=serial))
        else:
            return httpx.Response(404, json={"error": "no such endpoint"})
        self.minted[token] = recorded
        return httpx.Response(200, json={"token": token})


def jwt_looking_token(serial: int) -> str:
    def segment(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    claims = {"exp": int(time.time()) + 3600, "jti": serial}
    return f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(claims)}.c2lnbmF0dXJl"


SUPERSET_ACCESS = jwt_looking_token(0)
"""The fake Superset's access token (a JWT with an exp an hour ahead: reused)."""


Result = Grant | BrokerError


@dataclass(frozen=True)
class Run:
    policy: Policy
    concurrent: list[Result]
    """The generated calls, all at once (single-flight)."""
    probes: list[Result]
    """Every user for each of its tenants and each embed asked for, one after another."""
    repeated: list[Result]
    """The generated calls again, one after another (cache)."""
    vendors: FakeVendors


def probe_calls(scenario: Scenario) -> tuple[Call, ...]:
    """The requests a shared cache entry or single-flight would wrongly connect: every
    embed, by every user for each of its tenants; and each service call again for every
    tenant."""
    world = scenario.world
    by_session = [
        Call(user=index, embed=embed.name, tenant=tenant)
        for embed in world.embeds
        for index, user in enumerate(world.users)
        for tenant in user.tenants
    ]
    by_service = [
        dataclasses.replace(call, tenant=tenant.id)
        for call in dict.fromkeys(call for call in scenario.calls if call.service)
        for tenant in world.tenants
    ]
    return (*by_session, *by_service)


@dataclass(frozen=True)
class InForce:
    """The policy in force, as the flow sees it (the runtime's ActivePolicy has more)."""

    policy: Policy
    providers: Mapping[str, AnyProvider]


def acting_user(world: World, call: Call) -> User:
    spec = world.users[call.user]
    if call.service is not None:
        assert call.tenant is not None
        return ServiceUser(
            id=spec.id,
            tenants=(call.tenant,),
            roles=spec.roles,
            email=spec.email,
            claims=spec.claims,
            issuer=f"service:{call.service}",
        )
    return SessionUser(
        id=spec.id,
        tenants=spec.tenants,
        roles=spec.roles,
        email=spec.email,
        claims=spec.claims,
        issuer="app-backend",
        expires_at=time.time() + 3600,
        # As the verifier does: a digest of what the session says (its token), so the
        # flow's plan memo serves these users too.
        session=hashlib.sha256(
            orjson.dumps([spec.id, spec.tenants, spec.roles, spec.email, spec.claims])
        ).digest(),
    )


async def run_scenario(config: PolicyConfig, scenario: Scenario) -> Run:
    world = scenario.world
    policy = Policy(config)
    metrics = Metrics.create()
    limiter = RateLimiter(config.limits, redis=None, metrics=metrics, key_prefix="isolation:")
    flow = TokenFlow(
        cache=MemoryTokenCache(config.cache.max_entries),
        caller=VendorCaller(metrics=metrics),
        limiter=limiter,
        metrics=metrics,
    )
    vendors = FakeVendors()
    client = httpx.AsyncClient(transport=httpx.MockTransport(vendors.handle))
    providers: dict[str, AnyProvider] = {
        name: provider_class(block.type)(name, block, http_client=client)
        for name, block in config.providers.items()
    }
    active = InForce(policy, providers)

    async def attempt(call: Call) -> Result:
        try:
            return await flow.issue(
                active,
                acting_user(world, call),
                tenant=call.tenant,
                embed=call.embed,
                caller=f"service:{call.service}" if call.service else "session",
                service=config.services[call.service] if call.service else None,
            )
        except BrokerError as exc:
            return exc

    concurrent = list(await asyncio.gather(*(attempt(call) for call in scenario.calls)))
    probes = [await attempt(call) for call in probe_calls(scenario)]
    repeated = [await attempt(call) for call in scenario.calls]
    return Run(
        policy=policy, concurrent=concurrent, probes=probes, repeated=repeated, vendors=vendors
    )


# --- the checks ---------------------------------------------------------------------------


def check_result(world: World, call: Call, result: Result, vendors: FakeVendors) -> Issued | None:
    expected = expected_outcome(world, call)
    if isinstance(result, BrokerError):
        event(f"denied: {result.code}")
        assert result.code in DENIAL_CODES, f"{call}: undocumented denial {result!r}"
        assert isinstance(expected, Denied), f"{call}: denied {result.code}, expected a token"
        assert result.code in expected.codes, f"{call}: {result.code}, expected {expected.codes}"
        return None

    event(f"granted: {result.rule.provider_type}, cache {result.cache}")
    assert isinstance(expected, Issued), f"{call}: granted, expected {expected}"
    user = world.users[call.user]
    # The acting tenant: the one asked for (or the session's only one), and granted.
    assert result.tenant == (call.tenant or user.tenants[0])
    if call.service is not None:
        assert listed(result.tenant, world.service(call.service).tenants)
    else:
        assert result.tenant in user.tenants
    assert result.tenant == expected.tenant.id
    assert result.region == expected.tenant.region
    assert result.rule.name == call.embed
    if expected.provider == EMBEDDABLE:
        assert result.element.attributes["base-url"] == embeddable_base(result.region) + "/"
    if expected.provider == METABASE:
        # Signed by the broker, not minted by a vendor: the payload is the request.
        assert result.token not in vendors.minted
        claims = pyjwt.decode(result.token, METABASE_SECRET, algorithms=["HS256"])
        assert {k: v for k, v in claims.items() if k != "exp"} == expected.body
        signed = orjson.dumps(claims).decode()
        leaked = {m for m in forbidden_markers(world, call, expected) if m in signed}
        assert not leaked, f"{call}: the signed token carries {sorted(leaked)}"
        return expected

    # The token was minted by exactly the request this call must cause: a token from the
    # cache or the single-flight is never one minted for another body, tenant or region.
    minted_by = vendors.minted.get(result.token)
    assert minted_by is not None, f"{call}: the token was not minted by any vendor request"
    assert minted_by.url == expected.url
    assert minted_by.header("authorization") == f"Bearer {expected.api_key}"
    assert orjson.loads(minted_by.body) == expected.body, f"{call}: wrong vendor body"
    leaked = {m for m in forbidden_markers(world, call, expected) if m in minted_by.serialized()}
    assert not leaked, f"{call}: the vendor request carries {sorted(leaked)}"
    return expected


def check_run(scenario: Scenario, run: Run) -> None:
    world = scenario.world
    granted: dict[str, bytes] = {}  # token -> identity of the request it was handed for
    signed: set[str] = set()  # tokens the broker signed itself (Metabase)
    passes = (
        (scenario.calls, run.concurrent),
        (probe_calls(scenario), run.probes),
        (scenario.calls, run.repeated),
    )
    for calls, results in passes:
        for call, result in zip(calls, results, strict=True):
            issued = check_result(world, call, result, run.vendors)
            if issued is not None:
                assert isinstance(result, Grant)
                previous = granted.setdefault(result.token, issued.identity)
                assert previous == issued.identity, "one token handed out for two vendor requests"
                if issued.provider == METABASE:
                    signed.add(result.token)

    event(f"distinct vendor requests: {min(len(set(granted.values())), 5)}")
    # Requests repeated after the concurrent pass are served from the cache.
    for call, result in zip(scenario.calls, run.repeated, strict=True):
        if isinstance(result, Grant):
            assert result.cache == "hit", f"{call}: {result.cache} on repeat"
    # Every vendor call was made for a request that got its token: none on anyone
    # else's behalf. (Not one call per identity: two config bodies that differ only in
    # a vendor default, e.g. savedVersion, are cached apart; that is only a missed hit.)
    assert set(run.vendors.minted) == set(granted) - signed

    # The catalogue agrees with the decisions: a session's tenant lists exactly its embeds.
    for spec in world.users:
        if len(spec.tenants) > 1 or world.tenant(spec.tenants[0]) is None:
            continue
        session = acting_user(world, Call(user=world.users.index(spec), embed="", tenant=None))
        listed_embeds = {rule.name for rule in run.policy.embeds_for(session, spec.tenants[0])}
        allowed = {
            e.name
            for e in world.embeds
            if listed(spec.tenants[0], e.tenants)
            and (e.roles is None or set(e.roles) & set(spec.roles))
        }
        assert listed_embeds == allowed


# --- deterministic examples ---------------------------------------------------------------

_EMBEDDABLE_ALL_TENANTS = EmbedSpec(
    name="embeddable-0",
    provider=EMBEDDABLE,
    tenants=("*",),
    roles=None,
    ttl_seconds=300,
    request={
        "embeddableId": Lit(EMBEDDABLE_IDS[0]),
        "user": Ref(("user", "id")),
        "environment": Ref(("tenant", "attributes", "environment")),
        "securityContext": {
            "tenantId": Ref(("tenant", "id")),
            "regions": Ref(("tenant", "attributes", "regions")),
            "region": Ref(("tenant", "region")),
            "label": Text("ctx:", (Ref(("tenant", "id")), Ref(("user", "id"))), "/"),
        },
    },
)


def _two_tenant_world(**changes: Any) -> World:
    tenants = (make_tenant(0, "eu"), make_tenant(1, "ap", zones=2))
    users = (
        make_user(0, [tenants[0].id, tenants[1].id], ["analyst"]),
        make_user(1, [tenants[1].id]),
    )
    world = World(
        tenants=tenants,
        region_keys=region_keys(),
        databrain_key="dbnkey-000000",
        roles={"analyst": {EMBEDDABLE: {"roles": [Lit("analyst")]}}},
        embeds=(_EMBEDDABLE_ALL_TENANTS,),
        users=users,
        services=(),
    )
    return dataclasses.replace(world, **changes)


_T0, _T1 = "tenant-0-000000", "tenant-1-000000"

# Two users of two tenants ask for the same embed: different bodies, different tokens;
# a multi-tenant user must name a tenant and may only choose among its own.
SHARED_EMBED = Scenario(
    world=_two_tenant_world(),
    calls=(
        Call(user=0, embed="embeddable-0", tenant=_T0),
        Call(user=1, embed="embeddable-0", tenant=None),
        Call(user=0, embed="embeddable-0", tenant=_T1),
        Call(user=0, embed="embeddable-0", tenant=None),
        Call(user=1, embed="embeddable-0", tenant=_T0),
        Call(user=1, embed=UNKNOWN_EMBED, tenant=_T1),
    ),
)

# A Databrain body without any user or tenant value: the vendor request of tenant 0 and
# tenant 1 is byte-identical, but the cache key includes the region, so they get
# different tokens; the same body with another lifetime never shares either.
_TENANT_BLIND_BODY = {"clientId": Lit("sales"), "dataAppName": Lit("opsapp")}
TENANT_BLIND_DATABRAIN = Scenario(
    world=_two_tenant_world(
        embeds=tuple(
            EmbedSpec(
                name=f"databrain-{index}",
                provider=DATABRAIN,
                tenants=("*",),
                roles=None,
                ttl_seconds=ttl,
                request=_TENANT_BLIND_BODY,
            )
            for index, ttl in enumerate((60, 300))
        )
    ),
    calls=(
        Call(user=0, embed="databrain-0", tenant=_T0),
        Call(user=1, embed="databrain-0", tenant=_T1),
        Call(user=1, embed="databrain-1", tenant=_T1),
    ),
)

# A service may act only for the tenants and embeds it lists, whatever the user says.
SERVICE_LIMITS = Scenario(
    world=_two_tenant_world(
        services=(
            ServiceSpec(
                name="service-0",
                key="service-key-0-0123456789abcdef",
                tenants=(_T1,),
                embeds=("embeddable-0",),
            ),
        )
    ),
    calls=(
        Call(user=1, embed="embeddable-0", tenant=_T0, service="service-0"),
        Call(user=0, embed="embeddable-0", tenant=_T1, service="service-0"),
        Call(user=0, embed="embeddable-0", tenant=GHOST_TENANT, service="service-0"),
    ),
)

# Claims the template needs but the session lacks (or has as a list inside text).
MISSING_CLAIMS = Scenario(
    world=_two_tenant_world(
        embeds=(
            EmbedSpec(
                name="embeddable-0",
                provider=EMBEDDABLE,
                tenants=("*",),
                roles=None,
                ttl_seconds=60,
                request={
                    "embeddableId": Lit(EMBEDDABLE_IDS[1]),
                    "user": Text("x/", (Ref(("user", "claims", "department")),), ""),
                    "securityContext": {"email": Ref(("user", "email"))},
                },
            ),
        ),
        users=(
            make_user(0, [_T0], department="list"),
            make_user(1, [_T1], email=False),
            make_user(2, [_T1], department="null"),
            make_user(3, [_T0]),
        ),
    ),
    calls=tuple(Call(user=index, embed="embeddable-0", tenant=None) for index in range(4)),
)

# A session claim that is a list, whole as Superset's guest user name: refused before
# sending (found by the property once Superset embeds were in the generated worlds).
SUPERSET_LIST_USERNAME = Scenario(
    world=_two_tenant_world(
        embeds=(
            EmbedSpec(
                name="superset-0",
                provider=SUPERSET,
                tenants=("*",),
                roles=None,
                ttl_seconds=60,
                request={
                    "resources": [{"type": Lit("dashboard"), "id": Lit(SUPERSET_DASHBOARD)}],
                    "user": {"username": Ref(("user", "claims", "department"))},
                },
            ),
        ),
        users=(make_user(0, [_T0], department="list"), make_user(1, [_T1])),
    ),
    calls=(Call(user=0, embed="superset-0", tenant=None), Call(1, "superset-0", None)),
)


@PROPERTY_SETTINGS
@given(scenario=scenarios())
@example(scenario=SHARED_EMBED)
@example(scenario=TENANT_BLIND_DATABRAIN)
@example(scenario=SERVICE_LIMITS)
@example(scenario=MISSING_CLAIMS)
@example(scenario=SUPERSET_LIST_USERNAME)
def test_no_vendor_request_carries_another_tenants_data(scenario: Scenario) -> None:
    try:
        config = load_policy_document(scenario.world.document(), environ={})
    except ConfigError:
        event("policy rejected by the loader")
        reject()
    check_run(scenario, asyncio.run(run_scenario(config, scenario)))
