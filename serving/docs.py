"""/docs that works offline: Swagger UI's page with its script, stylesheet and icon served by
the service itself. FastAPI's own /docs loads them from a CDN, so on an air-gapped machine (a
bank's, or these test machines) the page renders blank.

The files are the Swagger UI 5 build that BentoML ships for its own index page: bentoml is
pinned in the serving set, so every bento and container has them and nothing is vendored
here. They are served under /docs/, which the gateway leaves open like the page itself
(serving/security.py EXEMPT). FastAPI's /redoc (also CDN-only) is turned off by the caller.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = Path(str(files("bentoml"))) / "_internal/server/static_content"
SCRIPT, STYLE, ICON = "swagger-ui-bundle.js", "swagger-ui.css", "favicon-light-32x32.png"


def mount(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI at `path` and its assets under `path`/assets. The app must be built
    with `docs_url=None` (else FastAPI's CDN page keeps the route)."""
    missing = [name for name in (SCRIPT, STYLE, ICON) if not (ASSETS / name).is_file()]
    if missing:  # a BentoML upgrade that moves them must fail here, not as a blank page
        raise RuntimeError(f"Swagger UI assets {missing} not found in {ASSETS}")
    assets = f"{path}/assets"
    app.mount(assets, StaticFiles(directory=ASSETS), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        # behind a proxy that strips a prefix, every URL the page loads carries it back
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{assets}/{SCRIPT}",
            swagger_css_url=f"{root}{assets}/{STYLE}",
            swagger_favicon_url=f"{root}{assets}/{ICON}",
            oauth2_redirect_url=None,  # API keys, no OAuth2 flow
            # never hand the API's document to swagger.io's online validator
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    app.add_route(path, swagger_ui, include_in_schema=False)
