"""Metabase static ("guest") embedding: the broker *signs* the embed token itself.

Metabase has no token API to call. The host application signs an HS256 JWT over
``{"resource": {"dashboard": <id>} | {"question": <id>}, "params": {...}, "exp": ...}``
with the instance's embedding secret, and the front end loads
``{site_url}/embed/dashboard/<jwt>#bordered=true&titled=true`` in an iframe. The
``params`` signed into the token are *locked*: the viewer cannot change them, so they
are the security context here, and they come from the policy's templates like every
other vendor's security context.

This makes a second kind of provider, a signer, behind the same interface: the
policy, cache, rate limits, audit and metrics all apply as for a vendor call; only
:meth:`MetabaseProvider.issue` makes no outbound call.

Docs: metabase.com "Static embedding" and its "embedding-reference-apps" samples.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import orjson
from jose import jwt
from pydantic import AfterValidator, AnyHttpUrl, Field, SecretStr, StrictInt, model_validator

from app.masking import mask_url
from app.providers.base import (
    LOOPBACK_HOSTS,
    BaseProvider,
    Element,
    EmbedElementConfig,
    IssuedToken,
    ProviderConfigBase,
    StrictModel,
    check_browser_url,
)
from app.providers.http import require_positive_ttl
from app.providers.validation import validate_body

TYPE_NAME = "metabase"
ALGORITHM = "HS256"
RESOURCE_KINDS = ("dashboard", "question")
DEFAULT_FRAGMENT = "bordered=true&titled=true"
_SECRET_RE = re.compile(r"[0-9a-fA-F]{64}")
_ENTITY_ID_RE = re.compile(r"[A-Za-z0-9_-]{21}")


def check_site_url(url: AnyHttpUrl) -> AnyHttpUrl:
    """The browser loads the signed URL, token included: over plain http anyone on the
    path could read it. Allowed only to loopback and single-label hosts (dev, compose)."""
    check_browser_url(url)
    host = url.host or ""
    if url.scheme == "https" or host in LOOPBACK_HOSTS or "." not in host:
        return url
    raise ValueError("the iframe URL carries the token: plain http to a public host; use https")


def check_secret(secret: SecretStr) -> SecretStr:
    """Metabase's embedding secret is 64 hex characters (Admin → Embedding → Static)."""
    if not _SECRET_RE.fullmatch(secret.get_secret_value()):
        raise ValueError(
            "must be Metabase's embedding secret key: 64 hexadecimal characters "
            "(check for an extra newline in the secret file)"
        )
    return secret


EmbeddingSecret = Annotated[SecretStr, AfterValidator(check_secret)]


class MetabaseConfig(ProviderConfigBase):
    type: Literal["metabase"]
    site_url: Annotated[AnyHttpUrl, AfterValidator(check_site_url)]
    """The Metabase instance the browser loads the embed from."""
    secret: EmbeddingSecret
    bordered: bool = True
    titled: bool = True

    def secrets(self) -> list[SecretStr]:
        return [self.secret]


def _resource_id(value: int | str) -> int | str:
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a numeric id must be positive")
        return value
    if not _ENTITY_ID_RE.fullmatch(value):
        raise ValueError("must be a numeric id or a 21-character entity id")
    return value


ResourceId = Annotated[StrictInt | str, AfterValidator(_resource_id)]


class MetabaseResource(StrictModel):
    """``{"dashboard": <id>}`` or ``{"question": <id>}``: exactly one."""

    dashboard: ResourceId | None = None
    question: ResourceId | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> MetabaseResource:
        if (self.dashboard is None) == (self.question is None):
            raise ValueError("name exactly one of dashboard or question")
        return self


ParamValue = str | int | float | bool | None | list[str | int | float | bool | None]


class MetabaseRequest(StrictModel):
    """The signed payload as the policy writes it (the broker adds ``exp``)."""

    resource: MetabaseResource
    params: dict[Annotated[str, Field(min_length=1)], ParamValue] = Field(default_factory=dict)
    """Locked parameters: the viewer cannot change them (the security context)."""


class MetabaseProvider(BaseProvider[MetabaseConfig]):
    type_name: ClassVar[str] = TYPE_NAME
    config_model: ClassVar[type[ProviderConfigBase]] = MetabaseConfig
    token_path: ClassVar[str] = ""
    """A signer calls no endpoint."""

    def __repr__(self) -> str:
        return f"MetabaseProvider(name={self.name!r}, site_url={mask_url(self.config.site_url)!r})"

    @classmethod
    def validate_request(
        cls, body: Mapping[str, Any], *, allow_unknown_fields: bool = False
    ) -> tuple[str, ...]:
        return validate_body(MetabaseRequest, body, allow_unknown_fields=allow_unknown_fields)

    @classmethod
    def validate_element(cls, element: EmbedElementConfig | None) -> None:
        if element is not None and (element.dashboard_id or element.metric_id):
            raise ValueError(
                "Metabase embeds take no element block (request.resource names the "
                "dashboard or question)"
            )

    async def issue(
        self, body: Mapping[str, Any], ttl_seconds: int, region: str | None
    ) -> IssuedToken:
        """Sign the embed token; no vendor is called, so nothing here can be retried."""
        require_positive_ttl(ttl_seconds)
        expires_at = int(time.time()) + ttl_seconds
        token = sign(body, self.config.secret, expires_at)
        return IssuedToken(token=token, expires_at=float(expires_at), vendor_status=None)

    def account(self, region: str | None) -> tuple[str, SecretStr]:
        return str(self.config.site_url).rstrip("/"), self.config.secret

    def preview(self, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The payload signed, without ``exp`` (now + the embed's lifetime)."""
        return {"resource": dict(body["resource"]), "params": dict(body.get("params") or {})}

    def element(self, element: EmbedElementConfig | None, region: str | None) -> Element:
        return Element(iframe=self.iframe_url)

    def iframe_url(self, token: str) -> str:
        """``{site_url}/embed/<dashboard|question>/<token>#bordered=...&titled=...``.

        The path names the resource kind, which the token itself carries (this provider
        signed it), so the URL follows from the token alone, cached or not.
        """
        kind = signed_resource_kind(token)
        fragment = f"bordered={_flag(self.config.bordered)}&titled={_flag(self.config.titled)}"
        return f"{str(self.config.site_url).rstrip('/')}/embed/{kind}/{token}#{fragment}"


def sign(body: Mapping[str, Any], secret: SecretStr, expires_at: int) -> str:
    """The HS256 JWT Metabase verifies: ``resource``, ``params`` ({} if none) and ``exp``."""
    payload = {
        "resource": dict(body["resource"]),
        "params": dict(body.get("params") or {}),
        "exp": expires_at,
    }
    return str(jwt.encode(payload, secret.get_secret_value(), algorithm=ALGORITHM))


def signed_resource_kind(token: str) -> str:
    """``dashboard`` or ``question``: the resource a token this provider signed names."""
    try:
        segment = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        resource = claims["resource"]
    except (IndexError, KeyError, TypeError, binascii.Error, ValueError):
        raise ValueError("not a Metabase embed token") from None
    for kind in RESOURCE_KINDS:
        if isinstance(resource, dict) and resource.get(kind) is not None:
            return kind
    raise ValueError("the token names no dashboard or question")


def _flag(value: bool) -> str:
    return "true" if value else "false"
