"""Emulators of Apache Superset's guest-token API and of Preset's hosted variant.

Superset (self-hosted), under ``/superset`` (so the broker's ``base_url`` is
``http://127.0.0.1:PORT/superset``):

- ``POST /api/v1/security/login`` ``{"username", "password", "provider", "refresh"}``
  → ``{"access_token", "refresh_token"}``; wrong credentials 401 ``{"message": "Not
  authorized"}``, a missing field 400 ``{"message": {"password": ["Missing data ..."]}}``.
- ``GET /api/v1/security/csrf_token/`` with the access token → ``{"result": <csrf>}``
  and a ``session`` cookie that must come back with the next call.
- ``POST /api/v1/security/guest_token/`` with the access token, ``X-CSRFToken`` and
  the cookie → ``{"token": <JWT>}``. CSRF is checked first, as Flask-WTF's
  ``before_request`` hook does: no header is 400 "The CSRF token is missing.", no
  cookie 400 "The CSRF session token is missing."; then the access token (flask-jwt-
  extended: none 401 ``{"msg": "Missing Authorization Header"}``, expired or revoked
  401, malformed 422); then the body; an unknown embedded dashboard is 400
  ``{"message": "EmbeddedDashboard not found."}``.

Preset, under ``/preset`` (``https://api.app.preset.io`` in production):

- ``POST /v1/auth/`` ``{"name": <api token>, "secret": <api secret>}`` →
  ``{"payload": {"access_token"}}``;
- ``POST /v1/teams/{team}/workspaces/{workspace}/guest-token/`` with the access token
  and the Superset body → ``{"payload": {"token"}}``.

Every shape above was seen from a real Superset 6.1.0 (tests/superset runs one).
Guest tokens are HS256 JWTs with Superset's claims (``user``, ``resources``,
``rls_rules``, ``iat``, ``exp``, ``aud``, ``type: guest``) signed with the sandbox's
guest-token secret; ``DELETE /_sandbox/sessions`` revokes every access token issued so
far (as a Superset restart with a new key would), so renewal can be tested.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.types import Scope

from app.sandbox.asgi import header_values
from app.sandbox.schemas import superset_field_errors
from app.sandbox.settings import SandboxSettings

SUPERSET_PREFIX = "/superset/api/v1/security/"
LOGIN_PATH = SUPERSET_PREFIX + "login"
CSRF_PATH = SUPERSET_PREFIX + "csrf_token/"
GUEST_TOKEN_PATH = SUPERSET_PREFIX + "guest_token/"
PRESET_AUTH_PATH = "/preset/v1/auth/"
PRESET_GUEST_TOKEN_RE = re.compile(
    r"^/preset/v1/teams/(?P<team>[^/]{1,128})/workspaces/(?P<workspace>[^/]{1,128})/guest-token/$"
)
SESSION_COOKIE = "session"
NOT_FOUND_MESSAGE = "EmbeddedDashboard not found."
CSRF_MISSING = "400 Bad Request: The CSRF token is missing."
CSRF_SESSION_MISSING = "400 Bad Request: The CSRF session token is missing."
CSRF_MISMATCH = "400 Bad Request: The CSRF tokens do not match."

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign(claims: Mapping[str, Any], key: bytes) -> str:
    signing_input = _HEADER + b"." + _b64(orjson.dumps(claims))
    signature = _b64(hmac.new(key, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def verify(token: str, key: bytes) -> dict[str, Any] | None:
    """The claims of an HS256 token signed with ``key``; None when it is not one."""
    parts = token.encode("latin-1", "replace").split(b".")
    if len(parts) != 3:
        return None
    expected = _b64(hmac.new(key, parts[0] + b"." + parts[1], hashlib.sha256).digest())
    if not hmac.compare_digest(expected, parts[2]):
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def message(text: Any) -> bytes:
    return orjson.dumps({"message": text})


def jwt_error(text: str) -> bytes:
    """flask-jwt-extended's error body (``msg``, not ``message``)."""
    return orjson.dumps({"msg": text})


def csrf_error(text: str) -> bytes:
    """Superset's generic error envelope, as its CSRF failures come."""
    return orjson.dumps(
        {
            "errors": [
                {
                    "message": text,
                    "error_type": "GENERIC_BACKEND_ERROR",
                    "level": "error",
                    "extra": {"issue_codes": [{"code": 1011, "message": "Issue 1011"}]},
                }
            ]
        }
    )


def _cookies(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for value in header_values(scope, b"cookie"):
        for pair in value.decode("latin-1").split(";"):
            name, sep, content = pair.strip().partition("=")
            if sep:
                found[name] = content
    return found


def _bearer(scope: Scope) -> str | None:
    values = header_values(scope, b"authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class SupersetEmulator:
    """State and answers of the Superset and Preset endpoints (one event loop: no locks)."""

    def __init__(self, settings: SandboxSettings, token_key: bytes) -> None:
        self.settings = settings
        self._access_key = hmac.new(token_key, b"superset-access", hashlib.sha256).digest()
        self._guest_key = settings.superset_guest_token_secret.get_secret_value().encode()
        self._username = settings.superset_username.encode()
        self._password = settings.superset_password.get_secret_value().encode()
        self._preset_token = settings.preset_api_token.encode()
        self._preset_secret = settings.preset_api_secret.get_secret_value().encode()
        self._live_access: dict[str, float] = {}
        """jti → exp of every access token issued and not revoked."""
        self._sessions: dict[str, str] = {}
        """session cookie → the CSRF token issued with it."""

    def revoke_sessions(self) -> None:
        self._live_access.clear()
        self._sessions.clear()

    # --- access tokens -------------------------------------------------------------

    def _issue_access(self, subject: str) -> tuple[str, str]:
        now = int(time.time())
        jti = secrets.token_hex(16)
        exp = now + self.settings.superset_access_token_seconds
        claims = {
            "fresh": True,
            "iat": now,
            "jti": jti,
            "type": "access",
            "sub": subject,
            "nbf": now,
            "exp": exp,
        }
        self._live_access[jti] = exp
        refresh = sign(
            {**claims, "type": "refresh", "jti": secrets.token_hex(16)}, self._access_key
        )
        if len(self._live_access) > self.settings.history_limit:
            self._live_access.pop(next(iter(self._live_access)))
        return sign(claims, self._access_key), refresh

    def _authenticate(self, scope: Scope) -> Answer | None:
        """None when the request carries a live access token; else flask-jwt's answer."""
        token = _bearer(scope)
        if token is None:
            return 401, jwt_error("Missing Authorization Header"), []
        claims = verify(token, self._access_key)
        if claims is None or claims.get("type") != "access":
            return 422, jwt_error("Signature verification failed"), []
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= time.time():
            return 401, jwt_error("Token has expired"), []
        if str(claims.get("jti")) not in self._live_access:
            return 401, jwt_error("Token has been revoked"), []
        return None

    # --- Superset --------------------------------------------------------------------

    def login(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            return 400, message("Request is not JSON"), []
        errors = superset_field_errors("login", body)
        if errors is not None:
            return 400, message(errors), []
        if body["provider"] != "db":
            return 400, message({"provider": ["Must be one of: db, ldap."]}), []
        good_user = hmac.compare_digest(body["username"].encode(), self._username)
        good_password = hmac.compare_digest(body["password"].encode(), self._password)
        if not (good_user and good_password):
            return 401, message("Not authorized"), []
        access, refresh = self._issue_access("1")
        answer: dict[str, str] = {"access_token": access}
        if body.get("refresh"):
            answer["refresh_token"] = refresh
        return 200, orjson.dumps(answer), []

    def csrf_token(self, scope: Scope) -> Answer:
        refused = self._authenticate(scope)
        if refused is not None:
            return refused
        session = secrets.token_urlsafe(24)
        csrf = secrets.token_urlsafe(32)
        self._sessions[session] = csrf
        if len(self._sessions) > self.settings.history_limit:
            self._sessions.pop(next(iter(self._sessions)))
        cookie = f"{SESSION_COOKIE}={session}; HttpOnly; Path=/; SameSite=Lax"
        return 200, orjson.dumps({"result": csrf}), [(b"set-cookie", cookie.encode())]

    def guest_token(self, scope: Scope, body: Any, body_error: str | None) -> Answer:
        csrf_values = header_values(scope, b"x-csrftoken")
        if len(csrf_values) != 1 or not csrf_values[0]:
            return 400, csrf_error(CSRF_MISSING), []
        session = _cookies(scope).get(SESSION_COOKIE)
        expected = self._sessions.get(session or "")
        if expected is None:
            return 400, csrf_error(CSRF_SESSION_MISSING), []
        if not hmac.compare_digest(csrf_values[0], expected.encode()):
            return 400, csrf_error(CSRF_MISMATCH), []
        refused = self._authenticate(scope)
        if refused is not None:
            return refused
        return self._guest_token(body, body_error, wrap=False)

    # --- Preset ----------------------------------------------------------------------

    def preset_auth(self, body: Any) -> Answer:
        errors = superset_field_errors("preset_auth", body)
        if errors is not None:
            return 400, message(errors), []
        good_name = hmac.compare_digest(body["name"].encode(), self._preset_token)
        good_secret = hmac.compare_digest(body["secret"].encode(), self._preset_secret)
        if not (good_name and good_secret):
            return 401, message("Invalid API token or secret"), []
        access, _ = self._issue_access("preset")
        return 200, orjson.dumps({"payload": {"access_token": access}}), []

    def preset_guest_token(
        self, scope: Scope, team: str, workspace: str, body: Any, body_error: str | None
    ) -> Answer:
        refused = self._authenticate(scope)
        if refused is not None:
            return refused[0], message(orjson.loads(refused[1])["msg"]), []
        if (team, workspace) != (self.settings.preset_team, self.settings.preset_workspace):
            return 404, message("Team or workspace not found"), []
        return self._guest_token(body, body_error, wrap=True)

    # --- both ------------------------------------------------------------------------

    def _guest_token(self, body: Any, body_error: str | None, *, wrap: bool) -> Answer:
        if body_error is not None:
            return 400, message(body_error), []
        errors = superset_field_errors("guest_token", body)
        if errors is not None:
            return 400, message(errors), []
        known = self.settings.superset_dashboards
        for resource in body["resources"]:
            if resource["id"] not in known:
                return 400, message(NOT_FOUND_MESSAGE), []
        now = time.time()
        claims = {
            "user": body.get("user", {}),
            "resources": body["resources"],
            "rls_rules": body["rls"],
            "iat": now,
            "exp": now + self.settings.superset_guest_token_seconds,
            "aud": self.settings.superset_guest_token_audience,
            "type": "guest",
        }
        token = sign(claims, self._guest_key)
        answer = {"payload": {"token": token}} if wrap else {"token": token}
        return 200, orjson.dumps(answer), []
