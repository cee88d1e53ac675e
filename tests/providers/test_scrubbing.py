"""Vendor messages that quote a variant of a secret are withheld (issue 14, item 8).

The red team's vendor echoed the API key back lowercased, truncated, reversed,
%-encoded and letter-spaced; exact-match replacement missed every one.
"""

from __future__ import annotations

import urllib.parse

import pytest

from app.providers.http import WITHHELD, quotes_a_secret, scrub_message

KEY = "Sk_live_7Hq2ZpX9vR4mW8nT3bY6"


def variants(secret: str) -> dict[str, str]:
    return {
        "exact inside a word": f"key{secret}rejected",
        "lowercased": secret.lower(),
        "uppercased": secret.upper(),
        "truncated": secret[:14],
        "truncated from the front": secret[-13:],
        "reversed": secret[::-1],
        "%-encoded": urllib.parse.quote(secret, safe=""),
        "every byte %-encoded": "".join(f"%{b:02X}" for b in secret.encode()),
        "double %-encoded": urllib.parse.quote(urllib.parse.quote(secret, safe=""), safe=""),
        "letter-spaced": " ".join(secret),
        "dash-spaced": "-".join(secret),
        "full-width": "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in secret),
        "reversed and spaced": " ".join(secret[::-1].lower()),
    }


@pytest.mark.parametrize("name", sorted(variants(KEY)))
def test_a_message_quoting_a_variant_of_the_key_is_withheld(name: str) -> None:
    message = f"invalid api key: {variants(KEY)[name]} (see docs)"
    scrubbed = scrub_message(message, [KEY])
    assert scrubbed == WITHHELD or "[redacted]" in scrubbed, scrubbed
    for fragment in (KEY[:8], KEY[-8:], KEY.lower()[:8]):
        assert fragment.lower() not in scrubbed.lower()


@pytest.mark.parametrize(
    "message",
    [
        "dataAppName 'opsapp' not found",
        "Embeddable c2b1a0de-0000-4000-8000-000000000001 has no saved version production",
        "the security context must be an object",
        "rate limit exceeded, retry in 30 seconds",
    ],
)
def test_ordinary_messages_pass(message: str) -> None:
    assert scrub_message(message, [KEY, "canary-embeddable-us-key-7f1d"]) == message


def test_a_short_shared_run_is_not_a_quote() -> None:
    # Eleven letters and digits in a row in common: by chance, not a quote.
    assert not quotes_a_secret("embeddables are fine", "canary-embeddable-us-key-7f1d")
    assert quotes_a_secret("canaryembeddab", "canary-embeddable-us-key-7f1d")


def test_a_short_secret_must_appear_whole() -> None:
    assert quotes_a_secret("the key was A-B-C-D-E", "abcde")
    assert not quotes_a_secret("the key was A-B-C-D", "abcde")
