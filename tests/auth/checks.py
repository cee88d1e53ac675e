"""Assertions shared by the auth tests."""

from __future__ import annotations

import pytest

from app.auth import SessionVerifier
from app.errors import AuthenticationError, InvalidSession


async def assert_rejected(
    verifier: SessionVerifier,
    token: str,
    error: type[AuthenticationError] = InvalidSession,
    *,
    detail: str | None = None,
) -> AuthenticationError:
    """``verify`` raises exactly ``error`` (optionally with ``detail``), and neither the
    error's detail nor its repr quotes the token or any sizeable part of it."""
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    raised = caught.value
    assert type(raised) is error, f"{raised!r} is not {error.__name__}"
    if detail is not None:
        assert raised.detail == detail
    assert_not_leaked(token, repr(raised), str(raised), raised.detail)
    return raised


def assert_not_leaked(token: str, *texts: str) -> None:
    pieces = [part for part in token.split(".") if len(part) >= 8]
    if len(token) >= 8:
        pieces.append(token)
    for text in texts:
        for piece in pieces:
            assert piece not in text, "an error message quotes the token"
