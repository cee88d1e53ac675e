"""Edge cases of one vendor call, with the vendor replaced by httpx.MockTransport."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from app.errors import UpstreamRejected
from app.providers.base import AnyProvider
from app.providers.databrain import DatabrainConfig, DatabrainProvider
from app.providers.embeddable import EmbeddableConfig, EmbeddableProvider, unverified_exp
from app.providers.errors import (
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderConnectError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderServerError,
    ProviderTimeout,
)
from app.providers.http import MAX_RESPONSE_BYTES, parse_retry_after, scrub_message
from app.providers.mapping import to_broker_error

pytestmark = pytest.mark.anyio

API_KEY = "live-key-7c1d0e55f3a94b2e"
Handler = Callable[[httpx.Request], httpx.Response]


def embeddable(handler: Handler) -> EmbeddableProvider:
    config = EmbeddableConfig.model_validate(
        {"type": "embeddable", "regions": {"eu": {"api_key": API_KEY}}}
    )
    return EmbeddableProvider(
        "embeddable", config, http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )


def databrain(handler: Handler) -> DatabrainProvider:
    config = DatabrainConfig.model_validate({"type": "databrain", "api_key": API_KEY})
    return DatabrainProvider(
        "databrain", config, http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )


async def issue(provider: AnyProvider, ttl: int = 900) -> Any:
    body = (
        {"embeddableId": "d", "user": "u"}
        if provider.type_name == "embeddable"
        else {"clientId": "c", "dataAppName": "app"}
    )
    return await provider.issue(body, ttl, "eu")


def jwt_with(claims: dict[str, Any]) -> str:
    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    return ".".join([part(b'{"alg":"HS256"}'), part(orjson.dumps(claims)), part(b"sig")])


def answer(status: int, body: Any = None, **kwargs: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes | str):
            return httpx.Response(status, content=body, **kwargs)
        return httpx.Response(status, json=body, **kwargs)

    return handler


both = pytest.mark.parametrize("build", [embeddable, databrain], ids=["embeddable", "databrain"])


# --- the request --------------------------------------------------------------------------


@both
async def test_the_request_carries_key_json_and_explicit_timeouts(
    build: Callable[[Handler], AnyProvider],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"token": jwt_with({"exp": time.time() + 5000})})

    await issue(build(handler))

    (request,) = seen
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.extensions["timeout"] == {"connect": 2.0, "read": 5.0, "write": 5.0, "pool": 5.0}
    assert isinstance(orjson.loads(request.content), dict)


@both
async def test_identity_encoding_and_no_cookie_ever(
    build: Callable[[Handler], AnyProvider],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={"token": jwt_with({"exp": time.time() + 5000})},
            headers={"set-cookie": "vendor=1; Path=/"},
        )

    provider = build(handler)
    for _ in range(2):
        await issue(provider)
    for request in seen:
        assert request.headers["user-agent"] == "token-broker"
        assert request.headers["accept-encoding"] == "identity"
        assert "cookie" not in request.headers


@both
async def test_a_vendor_call_leaves_no_cyclic_garbage(
    build: Callable[[Handler], AnyProvider],
) -> None:
    """A call's objects are freed by reference counting, not left for the (pausing)
    cyclic collector (httpx's client binds a response and its stream to each other;
    post_json cuts that cycle)."""
    import gc

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"token": jwt_with({"exp": time.time() + 5000})})

    provider = build(handler)
    await issue(provider)  # the endpoint is prepared on first use
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            await issue(provider)
        gc.collect()
        left = [
            type(item).__name__ for item in gc.garbage if type(item).__module__.startswith("httpx")
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


async def test_default_vendor_urls() -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(200, json={"token": "00000000-0000-4000-8000-000000000000"})

    await issue(embeddable(handler))
    await issue(databrain(handler))

    assert urls == [
        "https://api.eu.embeddable.com/api/v1/security-token",
        "https://api.usedatabrain.com/api/v2/guest-token/create",
    ]


# --- transport failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("refused"), ProviderConnectError),
        (httpx.RemoteProtocolError("Server disconnected"), ProviderConnectError),
        (httpx.ReadError("reset by peer"), ProviderConnectError),
        (httpx.WriteError("broken pipe"), ProviderConnectError),
        (httpx.ConnectTimeout("connect"), ProviderTimeout),
        (httpx.ReadTimeout("read"), ProviderTimeout),
        (httpx.PoolTimeout("pool"), ProviderTimeout),
    ],
)
@both
async def test_transport_failures(
    build: Callable[[Handler], AnyProvider],
    raised: httpx.HTTPError,
    expected: type[ProviderError],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    with pytest.raises(expected) as caught:
        await issue(build(handler))

    assert caught.value.retryable
    assert caught.value.__cause__ is None  # the httpx error holds the request and its key
    assert API_KEY not in str(caught.value)


# --- statuses and error bodies ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ProviderRejected),
        (401, ProviderAuthFailed),
        (403, ProviderRejected),  # about the request (e.g. its permissions), not the key
        (404, ProviderRejected),
        (409, ProviderRejected),
        (429, ProviderRateLimited),
        (500, ProviderServerError),
        (503, ProviderServerError),
        (302, ProviderBadResponse),
    ],
)
@both
async def test_non_json_error_bodies_map_by_status_alone(
    build: Callable[[Handler], AnyProvider], status: int, expected: type[ProviderError]
) -> None:
    page = "<html><body>Bad things happened</body></html>"
    handler = answer(status, page, headers={"content-type": "text/html"})

    with pytest.raises(expected) as caught:
        await issue(build(handler))

    assert "html" not in caught.value.message
    assert getattr(caught.value, "vendor_code", None) is None


@pytest.mark.parametrize("body", [[1, 2], "just a string", 42, None, {"unexpected": {"x": 1}}])
@both
async def test_unknown_error_shapes_are_tolerated(
    build: Callable[[Handler], AnyProvider], body: Any
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        await issue(build(answer(400, orjson.dumps(body))))

    assert caught.value.status == 400
    assert caught.value.vendor_code is None


async def test_databrain_error_code_and_message() -> None:
    body = {"error": {"code": "CLIENT_ID_ERROR", "message": "clientId is invalid"}}

    with pytest.raises(ProviderRejected) as caught:
        await issue(databrain(answer(400, body)))

    assert caught.value.vendor_code == "CLIENT_ID_ERROR"
    assert caught.value.message == "HTTP 400 CLIENT_ID_ERROR: clientId is invalid"


async def test_embeddable_error_message() -> None:
    with pytest.raises(ProviderRejected) as caught:
        await issue(embeddable(answer(400, {"errorMessage": "embeddableId not found"})))

    assert caught.value.message == "HTTP 400: embeddableId not found"


@both
async def test_a_vendor_code_that_is_not_code_like_is_dropped(
    build: Callable[[Handler], AnyProvider],
) -> None:
    body = {"error": {"code": "x" * 65, "message": "m"}, "errorCode": "has spaces in it"}

    with pytest.raises(ProviderRejected) as caught:
        await issue(build(answer(400, body)))

    assert caught.value.vendor_code is None


async def test_a_retry_after_http_date_becomes_seconds() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)

    with pytest.raises(ProviderRateLimited) as caught:
        await issue(databrain(answer(429, {}, headers={"retry-after": when})))

    assert caught.value.retry_after_seconds is not None
    assert 110 <= caught.value.retry_after_seconds <= 121
    assert to_broker_error(caught.value).headers["Retry-After"] in {str(n) for n in range(110, 122)}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("-1", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_date_relative_to_now() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0


# --- 2xx bodies without a usable token ----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"null",
        b"[]",
        b'"token"',
        b"{}",
        b'{"token": null}',
        b'{"token": ""}',
        b'{"token": 123}',
        b'{"token": ["a"]}',
        b'{"token": "has space"}',
        b'{"token": "quote\\"d"}',
        orjson.dumps({"token": "a" * 20_000}),
    ],
)
@both
async def test_2xx_without_a_usable_token_is_a_bad_response(
    build: Callable[[Handler], AnyProvider], content: bytes
) -> None:
    with pytest.raises(ProviderBadResponse) as caught:
        await issue(build(answer(200, content)))

    assert not caught.value.retryable


async def test_databrain_2xx_carrying_an_error_is_a_bad_response() -> None:
    body = {"token": "00000000-0000-4000-8000-000000000000", "error": {"code": "X"}}

    with pytest.raises(ProviderBadResponse):
        await issue(databrain(answer(200, body)))


async def test_databrain_2xx_with_error_null_is_a_token() -> None:
    body = {"token": "00000000-0000-4000-8000-000000000000", "error": None}

    issued = await issue(databrain(answer(200, body)))

    assert issued.token == body["token"]


@both
async def test_an_undecodable_gzip_body_is_a_bad_response(
    build: Callable[[Handler], AnyProvider],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, stream=httpx.ByteStream(b"not gzip"), headers={"content-encoding": "gzip"}
        )

    with pytest.raises(ProviderBadResponse):
        await issue(build(handler))


class CountingStream(httpx.AsyncByteStream):
    """An endless-looking body that records how much of it was read."""

    def __init__(self, chunk: bytes, chunks: int) -> None:
        self.chunk = chunk
        self.chunks = chunks
        self.served = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.served += 1
            yield self.chunk


@pytest.mark.parametrize("status", [200, 400, 500])
@both
async def test_a_huge_body_is_not_read_beyond_the_limit(
    build: Callable[[Handler], AnyProvider], status: int
) -> None:
    stream = CountingStream(b'{"token": "' + b"a" * 8192, chunks=10_000)  # ~80 MB

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=stream)

    with pytest.raises(ProviderError) as caught:
        await issue(build(handler))

    assert stream.served * 8192 <= MAX_RESPONSE_BYTES + 2 * 8192
    expected = {200: ProviderBadResponse, 400: ProviderRejected, 500: ProviderServerError}
    assert type(caught.value) is expected[status]


@both
async def test_a_declared_huge_body_is_not_read_at_all(
    build: Callable[[Handler], AnyProvider],
) -> None:
    stream = CountingStream(b"x", chunks=1)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=stream, headers={"content-length": str(10**9)})

    with pytest.raises(ProviderBadResponse):
        await issue(build(handler))
    assert stream.served == 0


# --- Embeddable token expiry --------------------------------------------------------------


async def test_a_jwt_expiring_before_the_ttl_wins() -> None:
    exp = int(time.time()) + 60

    issued = await issue(embeddable(answer(200, {"token": jwt_with({"exp": exp})})), ttl=900)

    assert issued.expires_at == exp


async def test_the_ttl_wins_when_the_jwt_lives_longer() -> None:
    before = time.time()
    token = jwt_with({"exp": before + 86_400})

    issued = await issue(embeddable(answer(200, {"token": token})), ttl=900)

    assert before + 900 <= issued.expires_at <= time.time() + 900


@pytest.mark.parametrize(
    "token",
    [
        "eyJ'<script>.e30.c2ln",  # the red team's: ' < > pass "visible ASCII"
        'eyJhbGciOiJIUzI1NiJ9.e30."onmouseover',
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln extra",
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln\n",
        "eyJhbGciOiJIUzI1NiJ9.e30",  # two segments
        "a.b.c.d.e",  # JWE: not a token any vendor hands out
        "opaque-token-without-dots",
        "0f8fad5b-d9cb-469f-a165-70867728950e-x",
        "&lt;0f8fad5b-d9cb-469f-a165-70867728950e",
    ],
)
async def test_a_token_outside_the_vendor_alphabet_is_a_bad_response(token: str) -> None:
    with pytest.raises(ProviderBadResponse, match="characters a token cannot have"):
        await issue(embeddable(answer(200, {"token": token})))


async def test_an_already_expired_jwt_is_a_bad_response() -> None:
    token = jwt_with({"exp": int(time.time()) - 1})

    with pytest.raises(ProviderBadResponse):
        await issue(embeddable(answer(200, {"token": token})))


@pytest.mark.parametrize(
    "token",
    ["0f8fad5b-d9cb-469f-a165-70867728950e", jwt_with({"sub": "x"}), jwt_with({"exp": "tomorrow"})],
)
async def test_a_token_without_a_readable_exp_lives_for_the_ttl(
    token: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = time.time()

    with caplog.at_level(logging.WARNING, logger="token_broker.providers"):
        issued = await issue(embeddable(answer(200, {"token": token})), ttl=900)

    assert issued.token == token
    assert before + 900 <= issued.expires_at <= time.time() + 900
    assert [r.getMessage() for r in caplog.records] == ["provider.token_without_exp"]
    assert token not in caplog.text


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (jwt_with({"exp": 1234}), 1234.0),
        (jwt_with({"exp": 12.5}), 12.5),
        (jwt_with({"exp": True}), None),
        (jwt_with({"exp": None}), None),
        ("a.!!!.c", None),
        ("a.b", None),
        ("e30.W10.c", None),  # payload is a list
    ],
)
def test_unverified_exp(token: str, expected: float | None) -> None:
    assert unverified_exp(token) == expected


# --- secrets in vendor messages -----------------------------------------------------------


SESSION_JWT = jwt_with({"sub": "alice", "exp": 2_000_000_000})


@both
async def test_vendor_messages_are_scrubbed_everywhere(
    build: Callable[[Handler], AnyProvider], caplog: pytest.LogCaptureFixture
) -> None:
    message = (
        f"bad key {API_KEY} for\n\ttoken {SESSION_JWT} "
        "(header was Bearer abc.def) opaque=QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3"
    )
    body = {"errorMessage": message, "error": {"code": "CODE", "message": message}}

    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderRejected) as caught:
        await issue(build(answer(400, body)))

    broker = to_broker_error(caught.value)
    assert isinstance(broker, UpstreamRejected)
    shown = " ".join([str(caught.value), repr(caught.value), broker.detail, caplog.text])
    shown += orjson.dumps(broker.problem("rid")).decode()
    for secret in (API_KEY, SESSION_JWT, "abc.def", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3"):
        assert secret not in shown
    assert "\n" not in caught.value.message
    assert "bad key [redacted] for token [redacted]" in caught.value.message


@both
@pytest.mark.parametrize(
    "code", [API_KEY, f"key:{API_KEY}", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3"]
)
@pytest.mark.parametrize("status", [400, 500])
async def test_a_vendor_code_carrying_a_secret_is_dropped(
    build: Callable[[Handler], AnyProvider], code: str, status: int
) -> None:
    # Embeddable reads a top-level errorCode, Databrain error.code.
    body = {"errorCode": code, "errorMessage": "nope", "error": {"code": code, "message": "nope"}}

    with pytest.raises((ProviderRejected, ProviderServerError)) as caught:
        await issue(build(answer(status, body)))

    failure = caught.value
    assert isinstance(failure, ProviderRejected | ProviderServerError)
    assert failure.vendor_code is None
    broker = to_broker_error(caught.value)
    shown = " ".join([str(caught.value), repr(caught.value), broker.detail])
    shown += orjson.dumps(broker.problem("rid")).decode()
    assert code not in shown
    assert API_KEY not in shown


@both
async def test_an_ordinary_vendor_code_is_kept(build: Callable[[Handler], AnyProvider]) -> None:
    code = "INVALID_REQUEST_BODY"
    body = {"errorCode": code, "errorMessage": "nope", "error": {"code": code, "message": "nope"}}

    with pytest.raises(ProviderRejected) as caught:
        await issue(build(answer(400, body)))

    assert caught.value.vendor_code == "INVALID_REQUEST_BODY"
    assert "INVALID_REQUEST_BODY" in to_broker_error(caught.value).detail


def test_scrub_caps_and_collapses() -> None:
    scrubbed = scrub_message("word " * 200 + "\x00\x1b[31m")

    assert len(scrubbed) <= 200
    assert scrubbed.endswith("…")
    assert "  " not in scrubbed
    assert "\x00" not in scrub_message("a\x00b\x7fc")


def test_scrub_keeps_ordinary_words_and_ids() -> None:
    text = "dashboard c2b1a0de-0000-4000-8000-000000000001 not found on api.eu.embeddable.com"
    assert scrub_message(text) == text


class DrippingStream(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(1000):
            await asyncio.sleep(0.01)
            yield b" "


async def test_a_body_that_drips_in_forever_is_a_timeout() -> None:
    config = DatabrainConfig.model_validate(
        {"type": "databrain", "api_key": API_KEY, "timeout_seconds": 0.2}
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=DrippingStream())

    provider = DatabrainProvider(
        "databrain", config, http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(ProviderTimeout):
        await issue(provider)
