"""Valid policy documents for tests, built as dicts so each test can break one thing."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

HS_SECRET = "test-session-secret-0123456789-abcdefghij"  # >= 32 bytes
HS_ISSUER = "app-backend"
AUDIENCE = "analytics-web"
SERVICE_KEY = "service-key-report-worker-0123456789"
SERVICE_KEY_SHA256 = "83334cdb7949204ffbdff1ed275896596850e714b8ae23920434c39993ed9ad6"

_BASE: dict[str, Any] = {
    "version": 1,
    "session": {
        "issuers": [
            {
                "issuer": HS_ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["HS256"],
                "secret": "${SESSION_HS256_SECRET}",
            }
        ],
        "claims": {"user_id": "sub", "tenants": "org_id", "roles": "roles", "email": "email"},
    },
    "tenants": {
        "acme": {
            "region": "eu",
            "attributes": {
                "environment": "acme-prod",
                "regions": ["eu-west"],
                "datasource": "acme-warehouse",
            },
        },
        "globex": {
            "region": "us",
            "attributes": {
                "environment": "globex-prod",
                "regions": ["us-east"],
                "datasource": "globex-wh",
            },
        },
    },
    "roles": {
        "analyst": {
            "databrain": {"permissions": {"isEnableUnderlyingData": True}},
            "embeddable": {"roles": ["analyst"]},
        }
    },
    "providers": {
        "embeddable": {
            "type": "embeddable",
            "regions": {
                "us": {
                    "api_key": "${EMBEDDABLE_US_API_KEY}",
                    "base_url": "${EMBEDDABLE_US_URL:-https://api.us.embeddable.com}",
                },
                "eu": {
                    "api_key": "${EMBEDDABLE_EU_API_KEY}",
                    "base_url": "${EMBEDDABLE_EU_URL:-https://api.eu.embeddable.com}",
                },
            },
        },
        "databrain": {
            "type": "databrain",
            "api_key": "${DATABRAIN_API_KEY}",
            "base_url": "${DATABRAIN_URL:-https://api.usedatabrain.com}",
        },
    },
    "embeds": {
        "sales-overview": {
            "provider": "embeddable",
            "title": "Sales overview",
            "allow": {"tenants": ["*"], "roles": ["viewer", "analyst"]},
            "token_ttl_seconds": 900,
            "request": {
                "embeddableId": "c2b1a0de-0000-4000-8000-000000000001",
                "savedVersion": "production",
                "user": "{user.id}",
                "environment": "{tenant.attributes.environment}",
                "securityContext": {
                    "userId": "{user.id}",
                    "tenantId": "{tenant.id}",
                    "regions": "{tenant.attributes.regions}",
                },
            },
        },
        "ops-dashboard": {
            "provider": "databrain",
            "allow": {"tenants": ["acme"], "roles": ["analyst"]},
            "token_ttl_seconds": 600,
            "element": {"dashboard_id": "ops-dash"},
            "request": {
                "clientId": "{tenant.id}",
                "dataAppName": "opsapp",
                "datasourceName": "{tenant.attributes.datasource}",
                "params": {
                    "userIdentifier": "{user.id}",
                    "dashboardAppFilters": [
                        {
                            "dashboardId": "ops-dash",
                            "values": {"region": "{tenant.attributes.regions}"},
                        }
                    ],
                },
                "permissions": {"isShowSideBar": False},
            },
        },
    },
    "services": {
        "report-worker": {
            "key_sha256": SERVICE_KEY_SHA256,
            "allow": {"tenants": ["*"], "embeds": ["sales-overview"]},
        }
    },
    "limits": {"per_user": "600/minute", "per_tenant": "6000/minute"},
    "cache": {"enabled": True, "min_remaining_ratio": 0.5, "max_entries": 1000},
}

# Canary-like values: distinctive so leak tests can search for them.
BASE_ENV: dict[str, str] = {
    "SESSION_HS256_SECRET": HS_SECRET,
    "EMBEDDABLE_US_API_KEY": "canary-embeddable-us-key-7f1d",
    "EMBEDDABLE_EU_API_KEY": "canary-embeddable-eu-key-2c9a",
    "DATABRAIN_API_KEY": "canary-databrain-key-5b3e",
    # Metabase's embedding secret must be 64 hex characters: a canary in hex.
    "METABASE_EMBEDDING_SECRET": "ca7a12ca7a12ca7a12ca7a12ca7a12ca7a12ca7a12ca7a12ca7a12ca7a125e3b",
    "SUPERSET_PASSWORD": "canary-superset-password-8d1f",
    "PRESET_API_TOKEN": "canary-preset-token-3a7c",
    "PRESET_API_SECRET": "canary-preset-secret-6e2b",
}


def base_policy() -> dict[str, Any]:
    return copy.deepcopy(_BASE)


def write_policy(directory: Path, document: dict[str, Any], name: str = "broker.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
