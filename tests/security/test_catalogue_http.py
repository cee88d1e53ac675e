"""security.md "Negative catalogue" over real HTTP, one test id per item and variant.

The attacks are :mod:`tests.auth.catalogue`'s, the list the verifier-level tests in
``tests/auth/test_negative_catalogue.py`` run too. Every forged session goes to
``POST /v1/tokens`` on the running stack (broker and sandbox under uvicorn, JWKS
served by a loopback server, the catalogue's issuers trusted). Each case asserts the
401 with the code and detail the catalogue names (``session_expired`` only for a
correctly signed token past ``exp``, ``unauthenticated`` only where there is no
credential), that the sandbox recorded no vendor call, and that the response does
not quote the token.

The forgeries are otherwise valid, so a check the broker skipped shows up as a 200
and a vendor call; the controls prove that the unmodified tokens do get through.
Below the shared cases are the ones that only make sense over HTTP, each marked
"HTTP level only".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.auth.catalogue import (
    ATTACKS_BY_ID,
    BURST,
    CONTROLS,
    RS,
    TENANT_CASES,
    Attack,
    attack_params,
    claims,
    flipped,
    remote_key_token,
)
from tests.auth.checks import assert_not_leaked
from tests.auth.keys import jwks_document, rsa_key
from tests.security.conftest import SecurityStack

EMBED = "sales-overview"
BURST_SIZE = 1000
BURST_CONCURRENCY = 50
# One httpx pool serving 50 busy connections is slow (seconds per thousand requests);
# five pools of ten are not.
BURST_CLIENTS = 5


@pytest.fixture(autouse=True)
def _no_vendor_calls_yet(secured: SecurityStack) -> None:
    secured.stack.clear_vendor_requests()


# --- talking to the broker --------------------------------------------------------------


def bearer_header(token: str) -> dict[bytes, bytes]:
    # bytes, so that tokens with non-ASCII characters reach the wire unchanged
    return {b"Authorization": b"Bearer " + token.encode("utf-8")}


def post_token(secured: SecurityStack, token: str, **body: Any) -> httpx.Response:
    stack = secured.stack
    return stack.client.post(
        f"{stack.broker}/v1/tokens", json={"embed": EMBED, **body}, headers=bearer_header(token)
    )


def assert_refused(
    secured: SecurityStack,
    response: httpx.Response,
    token: str,
    code: str = "invalid_session",
    status: int = 401,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert_not_leaked(token, response.text, *response.headers.values())
    assert secured.stack.vendor_requests() == []
    return body


def refuse(secured: SecurityStack, token: str, code: str = "invalid_session") -> dict[str, Any]:
    return assert_refused(secured, post_token(secured, token), token, code)


# --- the shared catalogue -----------------------------------------------------------------


@pytest.mark.parametrize("attack", attack_params())
def test_attack(secured: SecurityStack, attack: Attack) -> None:
    body = refuse(secured, attack.build(), attack.code)
    assert body["detail"] == attack.detail


@pytest.mark.parametrize("case", CONTROLS)
def test_control_valid_token_is_accepted(secured: SecurityStack, case: str) -> None:
    user = f"control-{uuid.uuid4().hex}"
    response = post_token(secured, CONTROLS[case](user))
    assert response.status_code == 200, response.text
    (call,) = secured.stack.vendor_requests()
    assert call["body"]["user"] == user


@pytest.mark.parametrize("case", TENANT_CASES)
def test_item14_other_tenant(secured: SecurityStack, case: str) -> None:
    tenant_case = TENANT_CASES[case]
    token = tenant_case.build(f"tenant-{uuid.uuid4().hex}")
    response = post_token(secured, token, tenant=tenant_case.other)
    assert_refused(secured, response, token, "tenant_not_allowed", status=403)
    # the same session for its own tenant goes through (the refusal was about B)
    assert post_token(secured, token).status_code == 200


# --- 5. remote key URLs (HTTP level only: the broker's own fetches) ------------------------


@pytest.mark.parametrize("kid", ["attacker", "rs-1"], ids=["attacker-kid", "trusted-kid"])
@pytest.mark.parametrize("member", ["jku", "x5u"])
def test_item05_remote_key_url_is_never_fetched(
    secured: SecurityStack, member: Any, kid: str
) -> None:
    path = f"attacker/{uuid.uuid4().hex}/{member}"
    secured.keys_server.publish(path, jwks_document(rsa_key("attacker").jwk(kid=kid)))
    refuse(secured, remote_key_token(member, kid, secured.keys_server.url(path)))
    assert secured.keys_server.hits(path) == 0


# --- 6. a burst of unknown kids -----------------------------------------------------------


@pytest.mark.anyio
async def test_item06_burst_of_1000_distinct_unknown_kids(secured: SecurityStack) -> None:
    """HTTP level only. Genuinely signed by the issuer's only key, each naming a kid
    nobody published: all refused, and the JWKS endpoint sees at most one extra fetch."""
    fetches_before = secured.jwks_fetches(BURST)
    assert fetches_before >= 1  # the start-up fetch
    payload = claims(BURST)
    tokens = [BURST.token(payload, kid=f"unknown-{uuid.uuid4().hex}") for _ in range(BURST_SIZE)]
    url = f"{secured.stack.broker}/v1/tokens"
    pending = iter(tokens)  # shared by the workers: each token is sent once
    responses: dict[str, httpx.Response] = {}

    async def worker(client: httpx.AsyncClient) -> None:
        for token in pending:
            responses[token] = await client.post(
                url, json={"embed": EMBED}, headers=bearer_header(token)
            )

    tls = ssl.create_default_context()  # unused on http://, but costly per client
    async with contextlib.AsyncExitStack() as clients_stack:
        clients = [
            await clients_stack.enter_async_context(httpx.AsyncClient(verify=tls, timeout=30))
            for _ in range(BURST_CLIENTS)
        ]
        await asyncio.gather(
            *(worker(clients[i % BURST_CLIENTS]) for i in range(BURST_CONCURRENCY))
        )

    assert len(responses) == BURST_SIZE
    for token, response in responses.items():
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_session"
        assert_not_leaked(token, response.text)
    assert secured.jwks_fetches(BURST) <= fetches_before + 1
    assert secured.stack.vendor_requests() == []


# --- 13. credentials (HTTP level only: where the token is carried) -------------------------

Headers = list[tuple[str, str]]


def _two_headers(first: str, second: str) -> Headers:
    return [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]


# (valid, forged) -> headers; the valid token alone would be accepted
CREDENTIAL_CASES: dict[str, Callable[[str, str], Headers]] = {
    "two-authorization-headers-same-valid-token": lambda valid, _: _two_headers(valid, valid),
    "two-authorization-headers-valid-then-forged": lambda valid, forged: _two_headers(
        valid, forged
    ),
    "two-authorization-headers-forged-then-valid": lambda valid, forged: _two_headers(
        forged, valid
    ),
    "basic-credentials": lambda _, __: [
        ("Authorization", "Basic " + base64.b64encode(b"alice:secret").decode())
    ],
    "basic-scheme-carrying-a-valid-jwt": lambda valid, _: [("Authorization", f"Basic {valid}")],
    "token-scheme-carrying-a-valid-jwt": lambda valid, _: [("Authorization", f"Token {valid}")],
    "no-scheme-valid-jwt": lambda valid, _: [("Authorization", valid)],
    "bearer-without-token": lambda _, __: [("Authorization", "Bearer")],
}


def _valid_and_forged() -> tuple[str, str]:
    valid = RS.token(claims(RS, sub=f"cred-{uuid.uuid4().hex}"))
    return valid, flipped(valid, 0)


@pytest.mark.parametrize("case", CREDENTIAL_CASES)
def test_item13_credentials(secured: SecurityStack, case: str) -> None:
    valid, forged = _valid_and_forged()
    headers = CREDENTIAL_CASES[case](valid, forged)
    client = secured.stack.client
    request = client.build_request(
        "POST", f"{secured.stack.broker}/v1/tokens", json={"embed": EMBED}, headers=headers
    )
    # httpx must not have merged the duplicates: both go on the wire
    assert request.headers.get_list("authorization", split_commas=False) == [v for _, v in headers]
    response = client.send(request)
    assert_refused(secured, response, valid)
    assert_not_leaked(forged, response.text)


@pytest.mark.parametrize(
    "params",
    [{"access_token": "T"}, {"token": "T"}, {"jwt": "T", "session": "T", "authorization": "T"}],
    ids=["access_token", "token", "several-names"],
)
def test_item13_token_only_in_query_string_is_unauthenticated(
    secured: SecurityStack, params: dict[str, str]
) -> None:
    valid, _ = _valid_and_forged()
    stack = secured.stack
    response = stack.client.post(
        f"{stack.broker}/v1/tokens",
        params=dict.fromkeys(params, valid),
        json={"embed": EMBED},
    )
    assert_refused(secured, response, valid, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_item13_no_credentials_at_all_is_unauthenticated(secured: SecurityStack) -> None:
    stack = secured.stack
    response = stack.client.post(f"{stack.broker}/v1/tokens", json={"embed": EMBED})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stack.vendor_requests() == []


# --- GET /v1/embeds -------------------------------------------------------------------------

# (HTTP level only: the other route that reads a session) -> a catalogue attack
EMBEDS_FORGERIES: dict[str, str] = {
    "alg-none": "item01-rs-issuer-unsigned-none",
    "bit-flipped-signature": "item02-rs256-jwks-signature-bit-0-flipped",
    "hs256-keyed-with-rs-public-pem": "item03-rsa-jwks-pem-no-kid",
    "other-issuers-secret": "item09-hs-issuer-other-hs-issuer-secret",
    "wrong-audience": "item10-aud-wrong",
    "expired": "item08-exp-past-beyond-leeway",
}


def _list_embeds(secured: SecurityStack, token: str) -> httpx.Response:
    stack = secured.stack
    return stack.client.get(f"{stack.broker}/v1/embeds", headers=bearer_header(token))


def test_embeds_control_valid_token_lists_embeds(secured: SecurityStack) -> None:
    response = _list_embeds(secured, RS.token())
    assert response.status_code == 200, response.text
    assert EMBED in {embed["name"] for embed in response.json()["embeds"]}


@pytest.mark.parametrize("case", EMBEDS_FORGERIES)
def test_embeds_refuses_forged_session(secured: SecurityStack, case: str) -> None:
    attack = ATTACKS_BY_ID[EMBEDS_FORGERIES[case]]
    token = attack.build()
    body = assert_refused(secured, _list_embeds(secured, token), token, attack.code)
    assert body["detail"] == attack.detail
