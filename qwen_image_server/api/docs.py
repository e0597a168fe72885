"""``/docs``: Swagger UI over our OpenAPI schema, off unless ``api_docs`` is set.

The page shares its origin with the playground, which keeps an API key in ``localStorage``, so any script on
it could read the key. FastAPI's own docs pages load an unpinned Swagger UI from a CDN with an inline script
and no CSP. This page loads one pinned release with Subresource Integrity (the browser refuses any other
bytes), runs only our own start-up script from this origin, and carries a strict CSP that also forbids
framing. ``/openapi.json`` is served whether or not the page is.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response

SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.36.0"
# sha384 of the files in the npm package swagger-ui-dist 5.36.0, which jsDelivr serves unchanged.
SWAGGER_JS_INTEGRITY = "sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+"
SWAGGER_CSS_INTEGRITY = "sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc"

DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self' https://cdn.jsdelivr.net; "
                               "style-src https://cdn.jsdelivr.net 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>qwen-image-server API</title>
<link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css" integrity="{SWAGGER_CSS_INTEGRITY}" crossorigin="anonymous">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{SWAGGER_UI}/swagger-ui-bundle.js" integrity="{SWAGGER_JS_INTEGRITY}" crossorigin="anonymous"></script>
<script src="/docs/start.js"></script>
</body>
</html>
"""

START_SCRIPT = 'SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});\n'

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=DOCS_HEADERS)


@router.get("/docs/start.js")
async def docs_start_script() -> Response:
    return Response(START_SCRIPT, media_type="text/javascript", headers=DOCS_HEADERS)


def install_docs(app: FastAPI) -> None:
    app.include_router(router)
