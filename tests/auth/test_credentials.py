"""extract_session_token: api.md credential rules (and catalogue item 13)."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers
from starlette.requests import Request

from app.auth import extract_session_token
from app.errors import InvalidSession, OriginNotAllowed, Unauthenticated

ORIGINS = ["https://app.example.com"]
JSON = (b"content-type", b"application/json")


def extract(*headers: tuple[bytes, bytes], cookie: str | None = "app_session") -> str:
    return extract_session_token(list(headers), cookie_name=cookie, allow_origins=ORIGINS)


@pytest.mark.parametrize(
    "value", [b"Bearer tok.en.x", b"bearer tok.en.x", b"BEARER  tok.en.x ", b" Bearer tok.en.x"]
)
def test_bearer_header(value: bytes) -> None:
    assert extract((b"authorization", value)) == "tok.en.x"


def test_header_names_are_case_insensitive() -> None:
    assert extract((b"Authorization", b"Bearer abc")) == "abc"


def test_item13_two_authorization_headers() -> None:
    with pytest.raises(InvalidSession):
        extract((b"authorization", b"Bearer a.b.c"), (b"authorization", b"Bearer a.b.c"))


@pytest.mark.parametrize(
    "value",
    [
        b"Basic YWxpY2U6c2VjcmV0",
        b"Token abc",
        b"Bearer",
        b"Bearer ",
        b"Bearer a b",
        b"Bearerabc",
        b"",
        b"abc.def.ghi",
    ],
    ids=lambda v: v.decode() or "empty",
)
def test_item13_non_bearer_authorization(value: bytes) -> None:
    with pytest.raises(InvalidSession):
        extract((b"authorization", value))


def test_item13_token_in_query_string_is_not_read() -> None:
    """The extractor is given only headers; a request whose only credential is in
    the query string is unauthenticated."""
    request = Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/v1/tokens",
            "query_string": b"access_token=a.b.c&token=a.b.c",
            "headers": [JSON],
        }
    )
    with pytest.raises(Unauthenticated):
        extract_session_token(request.headers, cookie_name="app_session", allow_origins=ORIGINS)


def test_no_credentials_is_unauthenticated_with_challenge() -> None:
    with pytest.raises(Unauthenticated) as caught:
        extract(JSON)
    assert caught.value.headers == {"WWW-Authenticate": "Bearer"}


def test_bearer_wins_over_cookie() -> None:
    token = extract(
        (b"cookie", b"app_session=from-cookie"),
        (b"authorization", b"Bearer from-header"),
        (b"origin", b"https://evil.example"),
    )
    assert token == "from-header"


@pytest.mark.parametrize(
    "headers",
    [
        [JSON],
        [JSON, (b"origin", b"https://app.example.com")],
        [(b"content-type", b"application/json; charset=utf-8")],
        [(b"content-type", b"Application/JSON")],
    ],
    ids=["no-origin", "allowed-origin", "charset", "case"],
)
def test_cookie_credential(headers: list[tuple[bytes, bytes]]) -> None:
    cookie = (b"cookie", b"theme=dark; app_session=a.b.c; lang=en")
    assert extract(cookie, *headers) == "a.b.c"


def test_cookie_split_over_several_headers() -> None:
    assert extract((b"cookie", b"theme=dark"), (b"cookie", b"app_session=a.b.c"), JSON) == "a.b.c"


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"text/plain")],
        [(b"content-type", b"application/x-www-form-urlencoded")],
        [(b"content-type", b"multipart/form-data; boundary=x")],
        [(b"content-type", b"application/jsonp")],
        [(b"content-type", b"application/json"), (b"content-type", b"text/plain")],
        [JSON, (b"origin", b"https://evil.example")],
        [JSON, (b"origin", b"null")],
        [JSON, (b"origin", b"https://app.example.com.evil.example")],
        [JSON, (b"origin", b"https://app.example.com"), (b"origin", b"https://evil.example")],
    ],
    ids=[
        "no-content-type",
        "text-plain",
        "form",
        "multipart",
        "jsonp",
        "two-content-types",
        "foreign-origin",
        "null-origin",
        "origin-superstring",
        "two-origins",
    ],
)
def test_cookie_without_cors_proof_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(OriginNotAllowed):
        extract((b"cookie", b"app_session=a.b.c"), *headers)


def test_cookie_sent_twice_is_refused() -> None:
    with pytest.raises(InvalidSession):
        extract((b"cookie", b"app_session=a.b.c; app_session=d.e.f"), JSON)


@pytest.mark.parametrize(
    ("cookie_header", "cookie_name"),
    [
        (b"app_session=a.b.c", None),  # cookie credentials not configured
        (b"other=a.b.c; app_session_x=a.b.c", "app_session"),
        (b"app_session=", "app_session"),  # emptied at logout
    ],
)
def test_cookie_that_is_not_a_credential(cookie_header: bytes, cookie_name: str | None) -> None:
    with pytest.raises(Unauthenticated):
        extract((b"cookie", cookie_header), JSON, cookie=cookie_name)


def test_accepts_starlette_headers() -> None:
    headers = Headers(raw=[(b"authorization", b"Bearer a.b.c")])
    assert extract_session_token(headers, cookie_name=None, allow_origins=[]) == "a.b.c"
