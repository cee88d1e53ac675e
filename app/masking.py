"""URLs made safe to print: no credentials, no query values.

A JWKS URL or a vendor base URL may carry a secret: ``https://user:pass@idp/…`` or
``…/jwks?api_key=…`` (some IdPs and proxies authenticate that way). Everything that
prints or logs a URL (``check-config``, reprs, log events) passes it through
:func:`mask_url` first, so the URL stays recognisable (scheme, host, port, path, the
*names* of query parameters) and the secret does not.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def mask_url(url: object) -> str:
    """``url`` with the userinfo replaced by ``***`` and every query value by ``***``.

    Works on anything whose ``str()`` is a URL (pydantic's ``AnyHttpUrl``, ``httpx.URL``).
    A string that does not parse as a URL is masked whole rather than shown.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return MASK
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = f"{MASK}@{netloc}"
    # Names stay (they say what the parameter is); values, and bare items that may be
    # a key on their own (``?AKIA…``), do not.
    query = "&".join(
        f"{pair.partition('=')[0]}={MASK}" if "=" in pair else MASK
        for pair in parts.query.split("&")
        if pair
    )
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
