"""The browsable API page: Swagger UI at /docs, reading /api/openapi.json.

Swagger UI's files come from the `swagger-ui-bundle` package (its `vendor` folder), served
by this process under /docs/assets, so the page works without any network beyond this
server. `/` redirects here until a web editor is served there.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

PAGE = "/docs"
ASSETS = "/docs/assets"
SPEC = "/api/openapi.json"

# validatorUrl: null keeps Swagger UI from sending the description to validator.swagger.io;
# BaseLayout needs no standalone preset (and no top bar to load other URLs).
_HTML = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Tandem API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "{SPEC}",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  validatorUrl: null,
  deepLinking: true
}});
</script>
</body>
</html>
"""


async def page(request: Request) -> Response:
    return HTMLResponse(_HTML)


async def home(request: Request) -> Response:
    return RedirectResponse(PAGE, status_code=307)


def routes() -> list[BaseRoute]:
    """`/`, `/docs` and its assets."""
    assets = StaticFiles(directory=Path(str(swagger_ui_path)))
    return [
        Route("/", home, methods=["GET", "HEAD"]),
        Route(PAGE, page, methods=["GET", "HEAD"]),
        Mount(ASSETS, app=assets),
    ]
