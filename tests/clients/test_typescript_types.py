"""``clients/js/token-broker.d.ts`` checked against the broker's OpenAPI document.

The response interfaces of the type file must name exactly the fields the OpenAPI
document gives (required ones as required), and every error code the broker can
answer must be in ``TokenBrokerErrorCode``: a field added to the API without the types
following fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from app.api import tokens
from app.api.openapi import build_document
from app.errors import BrokerError
from app.main import create_app
from app.settings import Settings

TYPES = Path(__file__).resolve().parents[2] / "clients" / "js" / "token-broker.d.ts"
# d.ts interface -> OpenAPI component schema
SAME_FIELDS = {
    "TokenGrant": "TokenResponse",
    "EmbedList": "EmbedsResponse",
    "EmbedSummary": "EmbedOut",
}


def interfaces() -> dict[str, dict[str, bool]]:
    """interface name -> {field: optional}"""
    found: dict[str, dict[str, bool]] = {}
    text = TYPES.read_text()
    for match in re.finditer(r"export interface (\w+)[^{]*\{(.*?)\n\}", text, re.DOTALL):
        fields = re.findall(r"^  (?:readonly )?(\w+)(\??):", match.group(2), re.MULTILINE)
        found[match.group(1)] = {name: bool(optional) for name, optional in fields}
    return found


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    # The document the broker serves (app.api.openapi), not FastAPI's own: the token
    # routes are served by TokenRouter and declared there.
    app = create_app(Settings(config=Path("unused.yaml")))
    document = build_document(
        version="1.0.0",
        framework_routes=app.routes,
        token_routes=tokens.ROUTES,
        cookie_name="app_session",
    )
    components: dict[str, Any] = document["components"]["schemas"]
    return components


@pytest.mark.parametrize(("interface", "schema"), sorted(SAME_FIELDS.items()))
def test_response_interfaces_match_the_openapi_schemas(
    schemas: dict[str, Any], interface: str, schema: str
) -> None:
    declared = interfaces()[interface]
    properties = schemas[schema]["properties"]
    assert set(declared) == set(properties), f"{interface} vs {schema}"
    for name in schemas[schema].get("required", []):
        assert not declared[name], f"{interface}.{name} is required in {schema}"


def test_element_hint_covers_every_element_field(schemas: dict[str, Any]) -> None:
    declared = interfaces()["ElementHint"]
    element_schema = next(schemas[name] for name in ("ElementOut", "Element") if name in schemas)
    assert set(element_schema["properties"]) <= set(declared)


def _codes(cls: type[BrokerError]) -> set[str]:
    """Codes of the errors actually raised: the leaves of the tree (errors.py)."""
    subclasses = cls.__subclasses__()
    if not subclasses:
        return {cls.code}
    return set().union(*(_codes(sub) for sub in subclasses))


def test_every_broker_error_code_is_typed() -> None:
    text = TYPES.read_text()
    union = text[text.index("export type TokenBrokerErrorCode") :]
    union = union[: union.index(";")]
    typed = set(re.findall(r'"(\w+)"', union))
    assert _codes(BrokerError) <= typed, _codes(BrokerError) - typed
