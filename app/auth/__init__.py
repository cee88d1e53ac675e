"""Session authentication: strict JWT validation with JWKS (security.md)."""

from app.auth.credentials import extract_session_token
from app.auth.jwks import JwksSource, JwksStore
from app.auth.session import SessionUser, SessionVerifier, mint_dev_token

__all__ = [
    "JwksSource",
    "JwksStore",
    "SessionUser",
    "SessionVerifier",
    "extract_session_token",
    "mint_dev_token",
]
