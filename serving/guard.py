"""What stands between a caller and the model: the deployment's keys, and a cap on request bodies.

Keys, as OpenAI's clients send them (`Authorization: Bearer <key>`, the `openai` client's
`api_key`; vLLM's `--api-key` works the same way). The control plane issues a deployment's keys
(`POST /v1/deployments/{name}/keys`, `flywheel deploy keys create NAME`) and stores only their
SHA-256 hashes; the model server reads the hashes of the live ones with its team's key
(`GET /v1/deployments/{name}/keys`) and reads them again every `--poll-s`, so a revoked key is
refused from the next poll on. While the control plane does not answer, the keys last read stay
in force. A key's id names its caller in every trace id the server logs (`dk_...:conversation`).

The body cap answers 413 before anything parses the body, whether the client declares its length
or streams it.
"""

from __future__ import annotations

import hashlib
import logging

from fastapi.responses import JSONResponse

log = logging.getLogger("flywheel.serving")


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(self.status, "invalid_request_error")
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}},
                            status_code=self.status, headers=self.headers)


class DeploymentKeys:
    """The live keys of the deployment, by hash: who may call, and under which key id."""

    def __init__(self, deployment: str):
        self.deployment = deployment
        self._ids: dict[str, str] = {}

    def update(self, rows: list[dict]) -> None:
        """Take `GET /v1/deployments/{name}/keys`'s rows as the keys in force (revoked ones left out)."""
        ids = {r["key_sha256"]: r["id"] for r in rows if r.get("revoked_at") is None}
        if set(ids.values()) != set(self._ids.values()):
            log.info("%d live key(s) for %r", len(ids), self.deployment)
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def caller(self, authorization: str | None) -> str:
        """The id of the key the request presents; 401 for none, or one that is unknown or revoked."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise OpenAIError(401, "You didn't provide an API key: send a key of this deployment as "
                                   "`Authorization: Bearer <key>` (flywheel deploy keys create "
                                   f"{self.deployment})", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        key_id = self._ids.get(hashlib.sha256(key.strip().encode()).hexdigest())
        if key_id is None:
            raise OpenAIError(401, f"Incorrect API key provided: not a live key of deployment {self.deployment!r}",
                              None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        return key_id


class BodyLimit:
    """413 for a request body over `limit` bytes, answered before the app parses it: the body is
    read (up to the limit) and then replayed to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        too_large = OpenAIError(413, f"the request body is over the server's limit of {self.limit:,} bytes "
                                     "(--max-body-bytes)", None, "request_too_large").response()
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await too_large(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
