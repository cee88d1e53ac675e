"""Everything the process holds while it serves, created by the lifespan in ``app.main``.

:class:`Runtime` lives for the whole process. Everything derived from one policy file
is bundled into an immutable :class:`ActivePolicy`; a reload builds a new one and swaps
a single reference, so a request (which reads ``runtime.active`` once) sees either the
old policy or the new one, never a mix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.config.models import PolicyConfig
from app.observability.metrics import Metrics
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    config: PolicyConfig
    loaded_at: float


@dataclass(eq=False, slots=True)
class Runtime:
    settings: Settings
    http: httpx.AsyncClient
    metrics: Metrics
    active: ActivePolicy
    started_at: float = field(default_factory=time.time)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {"config": "ok"}
        return True, checks


def vendor_http_client() -> httpx.AsyncClient:
    """The one outbound client of the process (vendors and JWKS).

    Per-call timeouts come from each provider's ``timeout_seconds``; these defaults only
    bound what does not set its own. Redirects are not followed: a token or JWKS
    endpoint that redirects is misconfigured, and following could leak the API key.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(5.0, connect=2.0),
        limits=httpx.Limits(
            max_connections=512, max_keepalive_connections=128, keepalive_expiry=30
        ),
        follow_redirects=False,
        headers={"User-Agent": "token-broker"},
    )
