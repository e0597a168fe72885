"""The OpenAPI schema, made to say what the server really answers and takes.

FastAPI documents a 422 ``HTTPValidationError`` on every operation with parameters, but our validation
errors are 400s in the API's own error format (``api/errors.py``), already declared per route; the 422s
and their models are dropped so clients and schema-driven fuzzers are not told of a status that never comes.
JSON bodies are parsed by ``api/bodies.py`` rather than by FastAPI; the schemas their routes carry under
``x-components`` are moved into the components here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from qwen_image_server.api.bodies import COMPONENTS_EXTENSION

_FASTAPI_VALIDATION_MODELS = ("HTTPValidationError", "ValidationError")


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
                    components.update(operation.pop(COMPONENTS_EXTENSION, {}))
            for name in _FASTAPI_VALIDATION_MODELS:
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
