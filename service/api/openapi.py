"""The OpenAPI document, made to tell the truth where FastAPI cannot infer it: the job spec's
real JSON schema as the body of `POST /v1/jobs` and `:validate` (the routes take it as a plain
object, so that its errors name spec fields), the error shape on every failing status an
operation can answer, and `/metrics` as Prometheus text."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from trainer.spec import JobSpec

SPEC_BODIES = ("/v1/jobs", "/v1/jobs:validate")
ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message", "field"],
        "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "field": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "errors": {"type": "array", "items": {
                "type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
        }}},
}
ERRORS = {
    "401": "no API key, or an unknown or revoked one",
    "404": "no such resource for this team",
    "409": "the job's state does not allow it",
    "413": "the request body is over the limit",
    "422": "a field is invalid: `error.field` names it, `error.errors` lists every one",
    "429": "this team has too many checks in flight; see Retry-After",
}
PUBLIC = {"/healthz", "/readyz", "/metrics"}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(spec.pop("$defs", {}))
        schemas["JobSpec"], schemas["Error"] = spec, ERROR_SCHEMA
        for path in SPEC_BODIES:
            body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            body["schema"] = {"$ref": "#/components/schemas/JobSpec"}
        for path, operations in doc["paths"].items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)  # FastAPI's own shape, which this service never sends
                if path in PUBLIC:
                    continue
                for status, why in ERRORS.items():
                    responses[status] = {"description": why, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi
