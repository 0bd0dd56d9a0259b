"""What every request body must be before a route sees it: within its size limit, and JSON that
the store and every reader can keep.

Python's `json` takes `NaN`, `Infinity`, integers of any length, lone UTF-16 surrogates
(`"\\ud800"`) and NUL characters; the store cannot keep them all (SQLite writes `NaN` into a JSON
column that no reader can parse again; Postgres refuses `\\u0000`), and some broke readers for a
whole team. They are refused here, for every route at once, with a 422 that names the field. So
is nesting deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.routing import Match

from environments.messages import unstorable_text
from service.core import errors

MAX_DEPTH = 32
"""Levels of arrays and objects a body may nest (a trace batch uses about eight)."""
INT64 = 2**63 - 1


class _Bad:
    """A value `json.loads` was told to leave in place so the walk can name its field."""

    def __init__(self, problem: str):
        self.problem = problem


def _parse_int(text: str) -> int | _Bad:
    if len(text.lstrip("-")) > 19 or abs(int(text)) > INT64:
        return _Bad(f"an integer of {len(text.lstrip('-'))} digits: integers are kept as 64-bit, "
                    f"from {-INT64} to {INT64}")
    return int(text)


def _parse_float(text: str) -> float | _Bad:
    value = float(text)
    return value if value not in (float("inf"), float("-inf")) else _Bad(f"{text} is beyond a 64-bit float")


def _parse_constant(text: str) -> _Bad:
    return _Bad(f"{text} is not a JSON number; send null for a missing value")


def problem(body: bytes) -> tuple[str, str] | None:
    """(field, what is wrong) for the first value in a JSON body the service cannot keep; None when
    every value is fine, or the body is not JSON at all (the route's own parser answers that)."""
    try:
        value = json.loads(body, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:
        return "body", f"nested deeper than {MAX_DEPTH} levels of arrays and objects"
    except (ValueError, UnicodeDecodeError):
        return None
    stack: list[tuple[list[str], Any, int]] = [([], value, 0)]
    while stack:
        path, node, depth = stack.pop()
        where = ".".join(path) or "body"
        if isinstance(node, _Bad):
            return where, node.problem
        if isinstance(node, str):
            if (bad := unstorable_text(node)) is not None:
                return where, bad
        elif isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                return where, f"nested deeper than {MAX_DEPTH} levels of arrays and objects"
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in reversed(list(items)):
                if isinstance(key, str) and (bad := unstorable_text(key)) is not None:
                    return ".".join([*path, repr(key)[1:-1]]), f"a key that {bad}"
                stack.append(([*path, str(key)], child, depth + 1))
    return None


def _nul_in_url(scope) -> str | None:
    """The first part of the URL (`path`, or `query.NAME`) holding a NUL: Postgres refuses it in
    a query, so it would fail there rather than be answered."""
    if "\x00" in scope["path"]:
        return "path"
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return f"query.{name.replace(chr(0), '')}"
    return None


def _routed(scope) -> bool:
    """Whether a route takes this method on this path: a body sent where none is taken gets the
    router's own 404 or 405, whatever it holds."""
    return any(route.matches(scope)[0] == Match.FULL for route in scope["app"].router.routes)


class BodyLimit:
    """413 for a request body over the limit, whether it declares its length or streams it: the
    body is read (up to the limit) before the app sees it, checked (`problem`), then replayed.
    `paths` gives some exact paths a limit of their own (trace batches are larger than specs)."""

    def __init__(self, app, limit: int, paths: dict[str, tuple[int, str]] | None = None):
        self.app, self.paths = app, paths or {}
        self.default = (limit, "FLYWHEEL_MAX_BODY_BYTES")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (field := _nul_in_url(scope)) is not None:
            refusal = errors.json_error(422, "invalid_request", f"{field}: contains a NUL character (%00), which "
                                        "no name or id here may hold", field)
            return await refusal(scope, receive, send)
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit, setting = self.paths.get(scope["path"], self.default)
        too_large = errors.json_error(413, "body_too_large",
                                      f"the request body is over the limit of {limit:,} bytes ({setting})", "body")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return await too_large(scope, receive, send)
        body, replayed = b"".join(chunks), False
        if body and _routed(scope) and (found := problem(body)) is not None:
            field, what = found
            refusal = errors.json_error(422, "invalid_request", f"{field}: {what}", field,
                                        [{"field": field, "message": what}])
            return await refusal(scope, receive, send)

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
