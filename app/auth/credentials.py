"""Where the browser's session token is read from (api.md "Credentials").

1. ``Authorization: Bearer <token>``: exactly one such header; any other scheme, or
   two headers, is ``invalid_session``.
2. Else the configured cookie. A cookie is sent by the browser on its own, so the
   request must prove it came from our front end: ``Content-Type: application/json``
   (a cross-site form cannot send that without a CORS preflight) and, when present,
   an ``Origin`` from ``cors.allow_origins``; otherwise ``origin_not_allowed``.
   The same cookie name twice (cookie tossing from a sibling domain) is refused.

The query string is never read: URLs end up in logs, history and Referer headers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from starlette.datastructures import Headers

from app.errors import InvalidSession, OriginNotAllowed, Unauthenticated

RawHeaders = Iterable[tuple[bytes, bytes]]


def _header_values(headers: RawHeaders | Headers) -> dict[bytes, list[str]]:
    raw = headers.raw if isinstance(headers, Headers) else headers
    found: dict[bytes, list[str]] = {}
    for name, value in raw:
        lowered = name.lower()
        if lowered in (b"authorization", b"cookie", b"content-type", b"origin"):
            found.setdefault(lowered, []).append(value.decode("latin-1"))
    return found


def _bearer_token(values: list[str]) -> str:
    if len(values) != 1:
        raise InvalidSession("send exactly one Authorization header")
    scheme, _, credentials = values[0].strip().partition(" ")
    token = credentials.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise InvalidSession("the Authorization header must use the Bearer scheme")
    return token


def _cookie_values(cookie_headers: list[str], name: str) -> list[str]:
    found: list[str] = []
    for header in cookie_headers:
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                if value:  # an emptied cookie (after logout) is no credential
                    found.append(value)
    return found


def _is_json_content_type(values: list[str]) -> bool:
    if len(values) != 1:
        return False
    media_type = values[0].split(";", 1)[0].strip().lower()
    return media_type == "application/json"


def extract_session_token(
    headers: RawHeaders | Headers,
    *,
    cookie_name: str | None,
    allow_origins: Sequence[str],
) -> str:
    """The session token of a browser request; raises Unauthenticated, InvalidSession
    or OriginNotAllowed (see the module docstring for the rules)."""
    values = _header_values(headers)
    authorization = values.get(b"authorization")
    if authorization:
        return _bearer_token(authorization)
    if cookie_name is None:
        raise Unauthenticated()
    cookies = _cookie_values(values.get(b"cookie", []), cookie_name)
    if not cookies:
        raise Unauthenticated()
    if len(cookies) > 1:
        raise InvalidSession("the session cookie was sent more than once")
    if not _is_json_content_type(values.get(b"content-type", [])):
        raise OriginNotAllowed("cookie credentials need Content-Type: application/json")
    origins = values.get(b"origin")
    if origins is not None and (len(origins) != 1 or origins[0] not in allow_origins):
        raise OriginNotAllowed()
    return cookies[0]
