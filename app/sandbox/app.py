"""The sandbox: local emulators of the Embeddable, Databrain, Superset and Preset token APIs.

One ASGI app serves, on one port (upstreams.md "The sandbox"):

- ``POST /embeddable/{region}/api/v1/security-token`` (regions ``us`` and ``eu``)
- ``POST /databrain/api/v2/guest-token/create``
- Superset's ``/superset/api/v1/security/{login,csrf_token/,guest_token/}`` and Preset's
  ``/preset/v1/auth/`` and ``/preset/v1/teams/{team}/workspaces/{ws}/guest-token/``
  (see superset.py)
- ``DELETE /_sandbox/sessions``: revoke every Superset/Preset access token issued so far
- ``GET|DELETE /_sandbox/requests[?vendor=&region=]``: what each vendor received
- ``GET|POST|DELETE /_sandbox/faults[?vendor=]``: fault injection (see faults.py)
- ``GET /_sandbox/tokens/{token}``: the request a token was issued for (any origin may read it)
- ``GET /_sandbox/components.js``: stand-in web components (see components.py)
- ``GET /healthz``

It is plain ASGI rather than FastAPI: it sits on the benchmark's hot path, and the
dropped-connection fault needs uvicorn's own ``send`` (see asgi.drop_connection).
The control API has no authentication: the sandbox is a development tool that holds
only development keys.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import signal
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import orjson
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from app.asgi import route_path
from app.observability.logging import configure_logging, logging_config
from app.sandbox.asgi import (
    HTML,
    BodyTooLarge,
    ClientGone,
    drop_connection,
    header_values,
    read_body,
    respond,
    respond_json,
)
from app.sandbox.components import (
    ANY_ORIGIN,
    COMPONENTS_PATH,
    load_components,
    serve_components,
)
from app.sandbox.faults import VENDORS, FaultBook, FaultRule, Vendor
from app.sandbox.schemas import (
    INVALID_REQUEST_BODY,
    databrain_code,
    validate_databrain,
    validate_embeddable,
)
from app.sandbox.settings import DEFAULT_HOST, DEFAULT_PORT, SandboxSettings
from app.sandbox.superset import (
    CSRF_PATH,
    GUEST_TOKEN_PATH,
    LOGIN_PATH,
    PRESET_AUTH_PATH,
    PRESET_GUEST_TOKEN_RE,
    SupersetEmulator,
)

log = logging.getLogger("token_broker.sandbox")

EMBEDDABLE_PREFIX = "/embeddable/"
EMBEDDABLE_SUFFIX = "/api/v1/security-token"
DATABRAIN_PATH = "/databrain/api/v2/guest-token/create"
CONTROL_PREFIX = "/_sandbox/"
MASKED = "***"
MALFORMED_200_BODY = b'{"token": "'
_BODY_SECRETS = frozenset({"password", "secret"})
_JWT_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")

_DATABRAIN_CODES: Mapping[int, str] = {
    400: INVALID_REQUEST_BODY,
    401: "AUTHENTICATION_ERROR",
    403: "INVALID_PERMISSIONS",
    404: "DATA_APP_ID_ERROR",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_SERVER_ERROR",
}
# What sits in front of a real API answers these, with an HTML page rather than JSON.
_GATEWAY_STATUSES = frozenset({502, 503, 504})

Answer = tuple[int, bytes]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def embeddable_error(message: str) -> bytes:
    """Embeddable documents no error shape; its official samples read ``errorMessage``."""
    return orjson.dumps({"errorMessage": message})


def databrain_error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def vendor_error(vendor: Vendor, status: int, message: str, code: str | None = None) -> bytes:
    if vendor == "embeddable":
        return embeddable_error(message)
    if vendor in ("superset", "preset"):
        return orjson.dumps({"message": message})
    default = _DATABRAIN_CODES.get(status, "INTERNAL_SERVER_ERROR" if status >= 500 else "ERROR")
    return databrain_error(code or default, message)


def _token_id() -> str:
    # A version-4 UUID from the fast PRNG: unique, not secret (the sandbox signs its
    # tokens with a random key), and no os.urandom system call per token.
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def sign_hs256(claims: Mapping[str, Any], key: bytes) -> str:
    payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    signing_input = _JWT_HEADER + b"." + payload
    signature = base64.urlsafe_b64encode(hmac.new(key, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature.rstrip(b"=")).decode()


class SandboxState:
    """Everything the sandbox remembers; owned by one event loop, so no locks."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.faults = FaultBook()
        self.history: deque[dict[str, Any]] = deque(maxlen=settings.history_limit)
        self.tokens: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sequence = 0
        self.token_key = settings.token_secret.get_secret_value().encode()
        self.embeddable_keys = {
            region: key.get_secret_value().encode()
            for region, key in settings.embeddable_api_keys().items()
        }
        self.databrain_key = settings.databrain_api_key.get_secret_value().encode()
        self.superset = SupersetEmulator(settings, self.token_key)

    def record(
        self, scope: Scope, vendor: Vendor, region: str | None, raw: bytes
    ) -> dict[str, Any]:
        self._sequence += 1
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = key.decode("latin-1").lower()
            text = _masked(value) if name == "authorization" else value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        body: Any = None
        body_error: str | None = None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body_error = "empty body" if not raw else "body is not JSON"
        if isinstance(body, dict):
            # Superset's password and Preset's API secret travel in the body.
            body = {k: MASKED if k in _BODY_SECRETS else v for k, v in body.items()}
        entry: dict[str, Any] = {
            "id": self._sequence,
            "vendor": vendor,
            "region": region,
            "method": scope["method"],
            "path": scope["path"],
            "headers": headers,
            # The W3C trace context the caller sent, if any (the broker's tracing tests).
            "traceparent": headers.get("traceparent"),
            "body": body,
            "body_error": body_error,
            # The exact bytes received, for byte-level comparisons (explain's output).
            "body_sha256": hashlib.sha256(raw).hexdigest(),
            "authorized": None,
            "fault": None,
            "status": None,
            "token": None,
            "received_at": time.time(),
        }
        self.history.append(entry)
        return entry

    def remember_token(self, token: str, entry: dict[str, Any]) -> None:
        entry["token"] = token
        self.tokens[token] = entry
        if len(self.tokens) > self.settings.history_limit:
            self.tokens.popitem(last=False)

    def requests(self, vendor: str | None, region: str | None) -> list[dict[str, Any]]:
        return [
            entry
            for entry in self.history
            if (vendor is None or entry["vendor"] == vendor)
            and (region is None or entry["region"] == region)
        ]


def _masked(authorization: bytes) -> str:
    scheme, _, credentials = authorization.decode("latin-1").partition(" ")
    return f"{scheme} {MASKED}" if credentials else MASKED


def _bearer_matches(scope: Scope, expected: bytes) -> bool:
    values = header_values(scope, b"authorization")
    if len(values) != 1:
        return False
    scheme, _, presented = values[0].partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), expected)


def _is_json(scope: Scope) -> bool:
    values = header_values(scope, b"content-type")
    return len(values) == 1 and values[0].split(b";")[0].strip().lower() == b"application/json"


class SandboxApp:
    """The ASGI callable. ``state`` is public so an in-process caller can inspect it."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.state = SandboxState(settings)
        load_components()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = route_path(scope)
        if path == DATABRAIN_PATH:
            await self._vendor(scope, receive, send, "databrain", None)
        elif path.startswith(EMBEDDABLE_PREFIX) and path.endswith(EMBEDDABLE_SUFFIX):
            region = path[len(EMBEDDABLE_PREFIX) : -len(EMBEDDABLE_SUFFIX)]
            if region in self.state.embeddable_keys:
                await self._vendor(scope, receive, send, "embeddable", region)
            else:
                await respond(send, 404, embeddable_error(f"unknown region {region[:32]!r}"))
        elif path in (LOGIN_PATH, CSRF_PATH, GUEST_TOKEN_PATH):
            await self._vendor(scope, receive, send, "superset", None)
        elif path == PRESET_AUTH_PATH or PRESET_GUEST_TOKEN_RE.match(path):
            await self._vendor(scope, receive, send, "preset", None)
        elif path == COMPONENTS_PATH and scope["method"] in ("GET", "HEAD"):
            await serve_components(send)
        elif path.startswith(CONTROL_PREFIX):
            await self._control(scope, receive, send, path[len(CONTROL_PREFIX) :])
        elif path == "/healthz":
            await respond_json(send, 200, {"status": "ok"})
        else:
            await respond_json(send, 404, {"detail": "not found"})

    # --- the vendors ------------------------------------------------------------------

    async def _vendor(
        self, scope: Scope, receive: Receive, send: Send, vendor: Vendor, region: str | None
    ) -> None:
        arrived = time.monotonic()
        method = "GET" if route_path(scope) == CSRF_PATH else "POST"
        if scope["method"] != method:
            body = vendor_error(vendor, 405, f"only {method} is supported")
            await respond(send, 405, body, headers=[(b"allow", method.encode())])
            return
        try:
            raw = await read_body(receive, scope, self.state.settings.max_body_bytes)
        except ClientGone:
            return
        except BodyTooLarge:
            await respond(send, 413, vendor_error(vendor, 413, "request body too large"))
            return
        entry = self.state.record(scope, vendor, region, raw)
        rule = self.state.faults.take(vendor, region)
        if rule is not None and await self._inject(rule, entry, receive, send, arrived):
            return
        headers: list[tuple[bytes, bytes]] = []
        if vendor == "embeddable":
            status, body = self._embeddable(scope, entry)
        elif vendor == "databrain":
            status, body = self._databrain(scope, entry)
        else:
            status, body, headers = self._superset(scope, entry, raw)
        entry["status"] = status
        await respond(send, status, body, headers=headers)

    async def _inject(
        self, rule: FaultRule, entry: dict[str, Any], receive: Receive, send: Send, arrived: float
    ) -> bool:
        """Apply a fault rule; True when it answered (or dropped) the request."""
        if rule.latency_ms:
            entry["fault"] = "latency"
            # Counted from the request's arrival: the sandbox's own work is part of it.
            await asyncio.sleep(max(0.0, rule.latency_ms / 1000 - (time.monotonic() - arrived)))
        if rule.drop_connection:
            entry["fault"] = "drop_connection"
            await drop_connection(receive, send)
            return True
        if rule.malformed_200:
            entry["fault"] = "malformed_200"
            entry["status"] = 200
            await respond(send, 200, MALFORMED_200_BODY)
            return True
        if rule.status is None:
            return False
        entry["fault"] = "status"
        entry["status"] = rule.status
        headers = []
        if rule.retry_after is not None:
            headers.append((b"retry-after", str(rule.retry_after).encode("latin-1")))
        if rule.status in _GATEWAY_STATUSES and rule.vendor_code is None and rule.message is None:
            title = f"{rule.status} {_phrase(rule.status)}"
            page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
            await respond(send, rule.status, page.encode(), content_type=HTML, headers=headers)
            return True
        message = rule.message or _phrase(rule.status)
        body = vendor_error(entry["vendor"], rule.status, message, rule.vendor_code)
        await respond(send, rule.status, body, headers=headers)
        return True

    def _embeddable(self, scope: Scope, entry: dict[str, Any]) -> Answer:
        entry["authorized"] = _bearer_matches(scope, self.state.embeddable_keys[entry["region"]])
        if not entry["authorized"]:
            return 401, embeddable_error("Unauthorized: invalid API key")
        if not _is_json(scope):
            return 400, embeddable_error("Content-Type must be application/json")
        if entry["body_error"] is not None:
            return 400, embeddable_error(f"invalid request: {entry['body_error']}")
        body = entry["body"]
        error = validate_embeddable(body)
        if error is not None:
            return 400, embeddable_error(f"invalid request: {error.message}")
        issued_at = int(time.time())
        claims = {
            "securityTokenId": _token_id(),
            "iat": issued_at,
            "exp": issued_at + body["expiryInSeconds"],
        }
        token = sign_hs256(claims, self.state.token_key)
        self.state.remember_token(token, entry)
        return 200, orjson.dumps({"token": token})

    def _databrain(self, scope: Scope, entry: dict[str, Any]) -> Answer:
        entry["authorized"] = _bearer_matches(scope, self.state.databrain_key)
        if not entry["authorized"]:
            return 401, databrain_error("AUTHENTICATION_ERROR", "Invalid API token")
        if not _is_json(scope):
            return 400, databrain_error(
                INVALID_REQUEST_BODY, "Content-Type must be application/json"
            )
        if entry["body_error"] is not None:
            return 400, databrain_error(INVALID_REQUEST_BODY, entry["body_error"])
        body = entry["body"]
        error = validate_databrain(body)
        if error is not None:
            return 400, databrain_error(databrain_code(error), error.message)
        known_apps = self.state.settings.databrain_data_apps
        if known_apps and body["dataAppName"] not in known_apps:
            return 404, databrain_error("DATA_APP_ID_ERROR", "data app not found")
        token = _token_id()
        self.state.remember_token(token, entry)
        return 200, orjson.dumps({"token": token, "error": None})

    def _superset(
        self, scope: Scope, entry: dict[str, Any], raw: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        emulator = self.state.superset
        path = route_path(scope)
        body = orjson.loads(raw) if entry["body_error"] is None else None
        if path == CSRF_PATH:
            answer = emulator.csrf_token(scope)
        elif path == LOGIN_PATH:
            answer = emulator.login(body)
        elif path == GUEST_TOKEN_PATH:
            answer = emulator.guest_token(scope, body, entry["body_error"])
        elif path == PRESET_AUTH_PATH:
            answer = emulator.preset_auth(body)
        else:
            match = PRESET_GUEST_TOKEN_RE.match(path)
            assert match is not None  # routed here only when it matched
            answer = emulator.preset_guest_token(
                scope, match["team"], match["workspace"], body, entry["body_error"]
            )
        status, content, _ = answer
        entry["authorized"] = status not in (401, 422)
        if status == 200 and path not in (LOGIN_PATH, CSRF_PATH, PRESET_AUTH_PATH):
            issued = orjson.loads(content)
            self.state.remember_token(issued.get("token") or issued["payload"]["token"], entry)
        return answer

    # --- the control API --------------------------------------------------------------

    async def _control(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        query = {
            key: values[-1]
            for key, values in parse_qs(scope["query_string"].decode("latin-1")).items()
        }
        vendor = query.get("vendor")
        if vendor is not None and vendor not in VENDORS:
            await respond_json(send, 400, {"detail": f"vendor must be one of {list(VENDORS)}"})
            return
        state = self.state
        if path == "requests" and method == "GET":
            found = state.requests(vendor, query.get("region"))
            await respond_json(send, 200, {"requests": found})
        elif path == "requests" and method == "DELETE":
            state.history.clear()
            state.tokens.clear()
            await respond_json(send, 200, {"requests": []})
        elif path == "faults" and method == "GET":
            await respond_json(send, 200, {"faults": state.faults.describe()})
        elif path == "faults" and method == "POST":
            await self._set_faults(scope, receive, send)
        elif path == "faults" and method == "DELETE":
            state.faults.clear(vendor)
            await respond_json(send, 200, {"faults": state.faults.describe()})
        elif path == "sessions" and method == "DELETE":
            state.superset.revoke_sessions()
            await respond_json(send, 200, {"sessions": []})
        elif path.startswith("tokens/") and method == "GET":
            entry = state.tokens.get(path[len("tokens/") :])
            if entry is None:
                await respond_json(send, 404, {"detail": "no such token"}, headers=ANY_ORIGIN)
            else:
                await respond_json(send, 200, {"request": entry}, headers=ANY_ORIGIN)
        else:
            await respond_json(send, 404, {"detail": "not found"})

    async def _set_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            raw = await read_body(receive, scope, self.state.settings.max_body_bytes)
            document = orjson.loads(raw)
        except ClientGone:
            return
        except (BodyTooLarge, orjson.JSONDecodeError):
            await respond_json(send, 400, {"detail": "the body must be a JSON fault rule"})
            return
        items = document if isinstance(document, list) else [document]
        try:
            rules = [FaultRule.model_validate(item) for item in items]
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False)
            )
            await respond_json(send, 400, {"detail": reasons})
            return
        for rule in rules:
            self.state.faults.set(rule)
        await respond_json(send, 200, {"faults": self.state.faults.describe()})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_sandbox_app(settings: SandboxSettings | None = None) -> SandboxApp:
    """A fresh sandbox with its own state (no module-level app)."""
    return SandboxApp(settings if settings is not None else SandboxSettings())


def run_sandbox(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, settings: SandboxSettings | None = None
) -> None:
    """Serve the sandbox with uvicorn until interrupted (``token-broker sandbox``)."""
    import uvicorn

    settings = settings if settings is not None else SandboxSettings()
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default
    # handler that kills the process before the log queue is drained (the last lines,
    # "Application shutdown complete" among them, would be lost). A no-op handler makes
    # it a normal exit, as `token-broker serve` does.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    base = f"http://{host}:{port}"
    log.info(
        "sandbox.starting",
        extra={
            "embeddable_base_urls": [f"{base}/embeddable/{r}" for r in ("us", "eu")],
            "databrain_base_url": f"{base}/databrain",
            "superset_base_url": f"{base}/superset",
            "preset_api_url": f"{base}/preset",
        },
    )
    uvicorn.run(
        create_sandbox_app(settings),
        host=host,
        port=port,
        log_config=logging_config(settings.log_level, settings.log_format),
        log_level=settings.log_level,
        access_log=settings.access_log,
        server_header=False,
        lifespan="on",
    )
