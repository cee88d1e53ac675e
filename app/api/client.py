"""``GET /v1/client.js``: the browser client, served by the broker itself.

A page behind the same proxy as the broker imports it with no build step and no CDN
(``import { TokenBroker } from "/analytics/v1/client.js"``), and always gets the client
that matches the API it talks to. The module is ``clients/js/token-broker.js`` in the
repository; the wheel carries a copy inside the package (pyproject's ``force-include``),
because an installed broker has no repository next to it.

The file is read once, at the first request, and answered from memory with a strong
``ETag`` (its SHA-256) so a browser revalidates it with a ``304`` after ``max-age``.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

CLIENT_FILE = "token-broker.js"
# Inside an installed wheel: app/api/static/ (pyproject force-include).
PACKAGED_DIR = Path(__file__).parent / "static"
# In a source checkout (and an editable install): clients/js/ at the repository root.
SOURCE_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"
MEDIA_TYPE = "text/javascript; charset=utf-8"
CACHE_CONTROL = "public, max-age=300"

router = APIRouter(tags=["browser client"])


@dataclass(frozen=True, slots=True)
class ClientScript:
    body: bytes
    etag: str


def client_script_path() -> Path:
    for directory in (PACKAGED_DIR, SOURCE_DIR):
        candidate = directory / CLIENT_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{CLIENT_FILE} is in neither {PACKAGED_DIR} nor {SOURCE_DIR}")


@functools.cache
def client_script() -> ClientScript:
    body = client_script_path().read_bytes()
    return ClientScript(body=body, etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _etag_matches(header: str, etag: str) -> bool:
    """``If-None-Match`` (a list, ``*``, or weak forms of our tag) matches ``etag``."""
    candidates = (part.strip() for part in header.split(","))
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


@router.get(
    "/v1/client.js",
    operation_id="getClientScript",
    summary="The browser client as an ES module (no credentials)",
    response_class=Response,
    responses={
        200: {
            "description": "clients/js/token-broker.js",
            "content": {"text/javascript": {"schema": {"type": "string"}}},
            "headers": {
                "ETag": {"description": "strong validator", "schema": {"type": "string"}},
                "Cache-Control": {"schema": {"type": "string"}},
            },
        },
        304: {"description": "the client is unchanged (If-None-Match)"},
    },
)
async def get_client_js(request: Request) -> Response:
    script = client_script()
    headers = {"ETag": script.etag, "Cache-Control": CACHE_CONTROL}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, script.etag):
        return Response(status_code=304, headers=headers)
    return Response(script.body, media_type=MEDIA_TYPE, headers=headers)
