"""The stand-in web components the sandbox serves under the vendors' real tag names.

``GET /_sandbox/components.js`` defines ``<em-beddable>``, ``<dbn-dashboard>`` and
``<dbn-metric>``: instead of charts they show the token's decoded claims, the request
the sandbox received for that token (``GET /_sandbox/tokens/{token}``) and countdowns
to the next refresh and to expiry. The demo page loads them; so can any page under
development that points its broker at the sandbox.

Both paths answer any origin (``Access-Control-Allow-Origin: *``, no credentials): the
components run on the page's origin, not the sandbox's, and the sandbox holds only
public development keys.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from starlette.types import Send

from app.sandbox.asgi import respond

COMPONENTS_PATH = "/_sandbox/components.js"
SCRIPT_FILE = Path(__file__).with_name("components.js")
JAVASCRIPT = b"text/javascript; charset=utf-8"
ANY_ORIGIN: tuple[tuple[bytes, bytes], ...] = ((b"access-control-allow-origin", b"*"),)


@functools.cache
def _script() -> tuple[bytes, bytes]:
    body = SCRIPT_FILE.read_bytes()
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'.encode()


def load_components() -> None:
    """Read the script now (start-up), not on the event loop at the first request."""
    _script()


async def serve_components(send: Send) -> None:
    body, etag = _script()
    headers = [*ANY_ORIGIN, (b"etag", etag), (b"cache-control", b"no-cache")]
    await respond(send, 200, body, content_type=JAVASCRIPT, headers=headers)
