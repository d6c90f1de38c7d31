"""The server's OpenAPI document with its request bodies (GET /openapi.json).

The generating endpoints read their JSON themselves (to answer every malformed body with an
OpenAI-shaped 400), so FastAPI cannot see their body models; `document_bodies` adds them:
each path's `requestBody` refers to its pydantic model's JSON schema under
`components/schemas`. Clients and the fuzz tests (tests/api_fuzz.py) read the API from here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


def document_bodies(app: Any, bodies: dict[str, type[BaseModel]]) -> None:
    """Make `app.openapi()` describe the JSON body of each POST path in `bodies`."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base()
        keyed, defs = models_json_schema([(m, "validation") for m in bodies.values()], ref_template=REF)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.get("$defs", {}))
        for path, model in bodies.items():
            post = schema["paths"][path]["post"]
            post["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": keyed[(model, "validation")]}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
