"""``mask_url``: URLs printed or logged keep their shape and lose their secrets."""

from __future__ import annotations

import httpx
import pytest
from pydantic import AnyHttpUrl, TypeAdapter

from app.auth.jwks import JwksSource
from app.masking import mask_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "https://idp.example.com/.well-known/jwks.json",
            "https://idp.example.com/.well-known/jwks.json",
        ),
        ("https://user:pa55word@idp.example.com/jwks", "https://***@idp.example.com/jwks"),
        ("https://apikey-only@idp.example.com/jwks", "https://***@idp.example.com/jwks"),
        (
            "https://idp.example.com/jwks?key=s3cret&tenant=a",
            "https://idp.example.com/jwks?key=***&tenant=***",
        ),
        ("https://idp.example.com/jwks?AKIAS3CRET", "https://idp.example.com/jwks?***"),
        ("https://idp.example.com/jwks?key=", "https://idp.example.com/jwks?key=***"),
        (
            "https://u:p@idp.example.com:8443/jwks?k=v#frag",
            "https://***@idp.example.com:8443/jwks?k=***#***",
        ),
        ("http://[::1]:8080/jwks?k=v", "http://[::1]:8080/jwks?k=***"),
        ("https://h:99999/jwks", "***"),
    ],
)
def test_userinfo_and_query_values_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_pydantic_and_httpx_urls_are_masked() -> None:
    url = "https://user:pa55word@idp.example.com/jwks?key=s3cret"
    for value in (TypeAdapter(AnyHttpUrl).validate_python(url), httpx.URL(url)):
        text = mask_url(value)
        assert "pa55word" not in text and "s3cret" not in text and "user" not in text


def test_jwks_source_repr_masks_its_url() -> None:
    source = JwksSource(
        "https://idp.example.com/",
        "https://user:pa55word@idp.example.com/jwks?key=s3cret",
        httpx.AsyncClient(),
        None,
        lambda: 0.0,
    )
    text = repr(source)
    assert "pa55word" not in text and "s3cret" not in text
    assert "idp.example.com/jwks?key=***" in text
