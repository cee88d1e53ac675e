"""``/openapi.json`` and the interactive reference at ``/docs`` (Swagger UI).

The document is built per policy (the session cookie's name is part of it) and per
``root_path``, and kept as bytes until either changes. Swagger UI's assets come from the
``swagger-ui-bundle-v2`` package and are served by the broker itself: it runs in
networks that reach nothing outside, so no CDN. The page loads only same-origin
scripts and styles (``DOCS_CSP``); the initializer is a file, not an inline script.
``BROKER_DOCS_ENABLED=false`` removes ``/docs`` (the document stays: clients are
generated from it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from app.api.openapi import build_document
from app.api.routing import TokenRoute
from app.runtime import Runtime

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# Only this origin: Swagger UI's icons are data: images inside its own stylesheet.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

# Relative URLs, so the page works below any root path: /docs -> docs/assets/...
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>token-broker API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"""
DOCS_INIT = """window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: false,
  withCredentials: false,
});
"""


class OpenAPIDocument:
    """The serialized document for the current policy, rebuilt when it changes."""

    def __init__(
        self,
        version: str,
        framework_routes: Callable[[], Iterable[BaseRoute]],
        token_routes: Sequence[TokenRoute],
    ) -> None:
        self._version = version
        self._framework_routes = framework_routes
        self._token_routes = token_routes
        self._cache: dict[tuple[str | None, str], bytes] = {}

    def render(self, cookie_name: str | None, root_path: str = "") -> bytes:
        key = (cookie_name, root_path)
        if key not in self._cache:
            document = build_document(
                version=self._version,
                framework_routes=self._framework_routes(),
                token_routes=self._token_routes,
                cookie_name=cookie_name,
                root_path=root_path,
            )
            self._cache.clear()  # one policy at a time
            self._cache[key] = orjson.dumps(document)
        return self._cache[key]


def install_docs(
    app: FastAPI, version: str, token_routes: Sequence[TokenRoute], *, docs_enabled: bool
) -> None:
    document = OpenAPIDocument(version, lambda: app.routes, token_routes)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(request: Request) -> Response:
        runtime: Runtime = request.state.runtime
        cookie = runtime.active.config.session.cookie
        body = document.render(cookie, request.scope.get("root_path", ""))
        return Response(body, media_type="application/json")

    if not docs_enabled:
        return

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs_page() -> Response:
        return HTMLResponse(DOCS_PAGE, headers={"Cache-Control": "no-cache"})

    @app.get(f"{DOCS_PATH}/init.js", include_in_schema=False)
    async def docs_init() -> Response:
        return Response(DOCS_INIT, media_type="text/javascript")

    app.mount(ASSETS_PATH, StaticFiles(directory=Path(swagger_ui_path)), name="docs-assets")
