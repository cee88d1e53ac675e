"""Audit events that are not token decisions (those are in ``app.issuance``).

``session.rejected``: one event per refused credential, so an operator can tell an
expired session from a bad signature from an unknown issuer without asking the user
(operations.md "Observability"). It carries the reason (a closed set,
:data:`app.errors.SESSION_REJECTION_REASONS`), the error code, the caller kind, the
issuer when known, and the request id (added by the log formatter). Never the token,
never a claim other than the issuer.
"""

from __future__ import annotations

import logging
from typing import Any

from app.errors import AuthenticationError, OriginNotAllowed
from app.observability.metrics import Metrics

audit_log = logging.getLogger("token_broker.audit")


def session_rejected(
    metrics: Metrics, error: AuthenticationError | OriginNotAllowed, *, caller: str
) -> None:
    """Audit and count one refused credential; ``caller`` is ``session`` or ``service``."""
    fields: dict[str, Any] = {
        "reason": error.reason,
        "code": error.code,
        "caller": caller,
        "detail": error.detail,
    }
    if error.issuer is not None:
        fields["issuer"] = error.issuer
    audit_log.info("session.rejected", extra=fields)
    metrics.session_rejected(error.reason).inc()
