"""One error shape for every failure: `{"error": {"code", "message", "field"}}` (plus `errors`
listing every bad field when a request fails validation)."""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from service.core.states import IllegalTransition
from trainer.spec import SpecError

log = logging.getLogger("flywheel.api")

UNION_MEMBER = re.compile(r"str|int|float|bool|none|[a-z_-]+\[.*\]|[A-Z][A-Za-z0-9]*")
"""A location part that names which member of a union pydantic tried (`str`, `list[TextPart]`,
`TextPart`), not a field: the API's fields are snake_case."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None, errors: list[dict[str, str]] | None = None,
                 extra: dict | None = None):
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers, self.errors, self.extra = headers, errors, extra


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def _body(code: str, message: str, field: str | None, errors: list | None = None, extra: dict | None = None) -> dict:
    body = {"error": {"code": code, "message": message, "field": field, **(extra or {})}}
    if errors:
        body["error"]["errors"] = errors
    return body


def json_error(status: int, code: str, message: str, field: str | None = None,
               errors: list[dict[str, str]] | None = None) -> JSONResponse:
    """The error shape as a response, for code outside the exception handlers (middleware)."""
    return JSONResponse(_body(code, message, field, errors), status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return JSONResponse(_body(exc.code, exc.message, exc.field, exc.errors, exc.extra), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError):
        first = exc.errors[0]
        return JSONResponse(_body("invalid_spec", f"{first['field'] or 'spec'}: {first['message']}",
                                  first["field"] or None, exc.errors), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError):
        rows = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if loc[:1] == ["body"]:
                # A body that is one of several kinds (a trainer report) has its kind in the
                # location ("body.step.data.step"): the field is "data.step".
                kind = exc.body.get("kind") if isinstance(exc.body, dict) else None
                loc = loc[2:] if len(loc) > 2 and loc[1] == kind else loc[1:]
            message = "malformed JSON: " + err["msg"] if err["type"] == "json_invalid" else err["msg"]
            field = ".".join(p for p in loc if not UNION_MEMBER.fullmatch(p))
            if not any(r["field"] == field for r in rows):  # one row per field, not one per union member
                rows.append({"field": field, "message": message})
        first = rows[0]
        return JSONResponse(_body("invalid_request", f"{first['field'] or 'body'}: {first['message']}",
                                  first["field"] or None, rows), status_code=422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _store(request: Request, exc: Exception):
        # The database is down or restarting: a clean, retryable answer (the pool reconnects by
        # itself once it is back; the trainers' reporters retry every 5xx).
        return JSONResponse(_body("store_unavailable", "the store is unreachable right now; retry shortly", None),
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(IllegalTransition)
    async def _transition(request: Request, exc: IllegalTransition):
        return JSONResponse(_body("illegal_transition", str(exc), "state"), status_code=409)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 400:  # FastAPI's answer to a body that is not JSON text at all
            return JSONResponse(_body("invalid_request", "body: malformed JSON (not UTF-8 JSON text)", "body"),
                                status_code=422)
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return JSONResponse(_body(code, str(exc.detail), None), status_code=exc.status_code, headers=headers)


    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # Nothing of the failure reaches the client (no traceback, no path): an id to quote to the
        # operators, whose log has the rest.
        error_id = uuid.uuid4().hex[:12]
        log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse(_body("internal_error", f"the service failed on this request (error id {error_id}); "
                                                    "the operators' log has the details", None), status_code=500)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)
