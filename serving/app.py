"""The OpenAI-compatible server of one deployment: `POST /v1/chat/completions` (with token
logprobs), `GET /v1/models`, `POST /v1/conversations/{id}/close`, `GET /healthz`; and the two
background tasks, following the deployment's promotions and closing idle conversations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.conversations import Conversation, TraceSink
from serving.engine import ServedModel
from serving.tools import as_model_text, reply_message
from trainer.types import SamplingParams

log = logging.getLogger("flywheel.serving")


@dataclass
class ServingConfig:
    deployment: str
    control_url: str
    key: str
    engine: str = "hf"
    dtype: str = "float32"
    poll_s: float = 2.0
    """How often the deployment is asked which version it serves."""
    idle_close_s: float = 600.0
    """A conversation with no request for this long is closed and logged."""
    default_max_tokens: int = 256
    tool_format: str = "none"
    """`call`: replies that are `name(arg=value)` lines are answered as OpenAI tool calls (`tools.py`)."""


class ChatRequest(BaseModel):
    """The chat-completions parameters this server acts on; OpenAI's others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=1.0, gt=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    logprobs: bool = False
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    metadata: dict[str, str] | None = None


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code = status, message, param, code


def _error(status: int, message: str, param: str | None, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": code, "param": param, "code": code}}, status_code=status)


class Server:
    """What the routes share: the version new conversations go to, the versions still finishing
    theirs, the open conversations, and the trace sink."""

    def __init__(self, config: ServingConfig):
        self.config = config
        self.control = httpx.AsyncClient(base_url=config.control_url, timeout=30,
                                         headers={"Authorization": f"Bearer {config.key}"})
        self.current: ServedModel | None = None
        self.retiring: list[ServedModel] = []
        self.open: dict[str, tuple[Conversation, ServedModel]] = {}
        self.sink = TraceSink(config.control_url, config.key)
        self.swaps = 0

    async def deployed_version(self) -> tuple[str, str]:
        r = await self.control.get(f"/v1/deployments/{self.config.deployment}")
        r.raise_for_status()
        model = r.json()["model"]
        if model is None:
            raise RuntimeError(f"deployment {self.config.deployment!r} serves no model yet: promote one first")
        if self.current is not None and model == self.current.version:
            return model, self.current.path
        r = await self.control.get(f"/v1/models/{model}")
        r.raise_for_status()
        return model, r.json()["path"]

    async def follow(self) -> None:
        """Load the version a promotion or rollback names beside the one serving, then swap."""
        while True:
            await asyncio.sleep(self.config.poll_s)
            try:
                version, path = await self.deployed_version()
                if version != self.current.version:
                    loaded = await ServedModel.load(version, path, self.config.engine, self.config.dtype)
                    self.retiring.append(self.current)
                    self.current, self.swaps = loaded, self.swaps + 1
                    log.info("now serving %s (%s); %d version(s) finishing", version, path, len(self.retiring))
            except (httpx.HTTPError, RuntimeError) as exc:
                log.warning("could not follow the deployment: %s", exc)
            self.retire()

    def retire(self) -> None:
        for old in list(self.retiring):
            if not old.conversations and not old.in_flight:
                old.close()
                self.retiring.remove(old)

    async def close_idle(self) -> None:
        while True:
            await asyncio.sleep(min(self.config.idle_close_s / 4, 30))
            cutoff = time.monotonic() - self.config.idle_close_s
            for cid in [c for c, (conv, _) in self.open.items() if conv.last_seen < cutoff]:
                self.close(cid)

    def close(self, cid: str) -> bool:
        entry = self.open.pop(cid, None)
        if entry is None:
            return False
        conversation, served = entry
        served.conversations.discard(cid)
        self.sink.put(conversation.trace(self.config.deployment, self.config.tool_format))
        return True

    def _open(self, body: ChatRequest) -> tuple[str, bool, Conversation, ServedModel, list[int], SamplingParams]:
        """The request's conversation (new ones go to the current version), its prompt and sampling."""
        cid = (body.metadata or {}).get("conversation_id")
        one_turn = cid is None
        cid = cid or f"chat-{uuid.uuid4().hex}"
        conversation, served = self.open.get(cid) or (Conversation(cid, self.current.version), self.current)
        messages = [as_model_text(m, self.config.tool_format) for m in body.messages]
        try:
            prompt_ids = served.prompt_ids(messages)
        except Exception as exc:  # noqa: BLE001 - a chat template refusing the messages
            raise OpenAIError(400, f"the messages do not fit the model's chat template: {exc}", "messages") from None
        self.open[cid] = (conversation, served)
        served.conversations.add(cid)
        tokens = body.max_completion_tokens or body.max_tokens or self.config.default_max_tokens
        return cid, one_turn, conversation, served, prompt_ids, SamplingParams(tokens, body.temperature, body.top_p)

    async def stream(self, body: ChatRequest) -> AsyncIterator[str]:
        """Server-sent chunks as OpenAI streams them: each token's text as it is sampled (with its
        logprob when asked), then the finish reason and `[DONE]`."""
        if self.config.tool_format != "none":
            raise OpenAIError(400, "streaming is not supported with --tool-format call (a reply is known to be a "
                                   "tool call only once it is complete); send stream=false", "stream")
        cid, one_turn, conversation, served, prompt_ids, sampling = self._open(body)
        loop, tokens = asyncio.get_running_loop(), asyncio.Queue()
        done = asyncio.ensure_future(served.complete(
            prompt_ids, sampling, lambda t, lp: loop.call_soon_threadsafe(tokens.put_nowait, (t, lp))))
        tok, ids, sent = served.engine.tokenizer(), [], ""
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.config.deployment, "system_fingerprint": served.version}

        def chunk(delta: dict, logprobs=None, finish=None) -> str:
            return "data: " + json.dumps({**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                                               "finish_reason": finish}]}) + "\n\n"

        yield chunk({"role": "assistant", "content": ""})
        next_token = None
        while True:
            next_token = next_token or asyncio.ensure_future(tokens.get())
            await asyncio.wait({next_token, done}, return_when=asyncio.FIRST_COMPLETED)
            if next_token.done():
                token, logprob = next_token.result()
                next_token = None
                ids.append(token)
                text = tok.decode(ids, skip_special_tokens=True)
                piece, sent = text[len(sent):], text
                piece_lp = ({"content": [{"token": tok.decode([token]), "logprob": logprob, "top_logprobs": [],
                                          "bytes": list(tok.decode([token]).encode())}]} if body.logprobs else None)
                if piece or piece_lp:
                    yield chunk({"content": piece}, piece_lp)
            elif tokens.empty():
                break
        next_token.cancel()
        completion = done.result()
        if not ids:  # an engine that does not stream (vLLM here): the whole reply in one chunk
            yield chunk({"content": completion.text}, self.logprobs(served, completion) if body.logprobs else None)
        elif completion.text != sent:  # a decoding that settled late
            yield chunk({"content": completion.text[len(sent):] if completion.text.startswith(sent) else ""})
        reply = reply_message(completion.text, self.config.tool_format)
        conversation.record(body.messages, reply, completion.text, completion.token_ids, completion.logprobs)
        if one_turn:
            self.close(cid)
        yield chunk({}, None, "length" if completion.truncated else "stop")
        yield "data: [DONE]\n\n"

    async def chat(self, body: ChatRequest) -> dict[str, Any]:
        cid, one_turn, conversation, served, prompt_ids, sampling = self._open(body)
        completion = await served.complete(prompt_ids, sampling)
        reply = reply_message(completion.text, self.config.tool_format)
        conversation.record(body.messages, reply, completion.text, completion.token_ids, completion.logprobs)
        if one_turn:
            self.close(cid)
        return self.response(body, served, completion, reply, len(prompt_ids), cid)

    def response(self, body: ChatRequest, served: ServedModel, completion, reply: dict, prompt_tokens: int,
                 cid: str) -> dict:
        finish = "tool_calls" if reply.get("tool_calls") else "length" if completion.truncated else "stop"
        choice: dict[str, Any] = {"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}
        if body.logprobs:
            choice["logprobs"] = self.logprobs(served, completion)
        n = len(completion.token_ids)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.config.deployment, "system_fingerprint": served.version, "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n},
                "metadata": {"conversation_id": cid, "model_version": served.version}}

    @staticmethod
    def logprobs(served: ServedModel, completion) -> dict[str, Any]:
        """OpenAI's `logprobs` of a choice: each sampled token's text and logprob."""
        pieces = [served.engine.tokenizer().decode([t]) for t in completion.token_ids]
        return {"content": [{"token": p, "logprob": lp, "bytes": list(p.encode()), "top_logprobs": []}
                            for p, lp in zip(pieces, completion.logprobs, strict=True)]}

    async def shutdown(self) -> None:
        for cid in list(self.open):
            self.close(cid)
        await asyncio.to_thread(self.sink.close)
        await self.control.aclose()


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for event in rest:
        yield event


def create_app(config: ServingConfig) -> FastAPI:
    server = Server(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        version, path = await server.deployed_version()
        server.current = await ServedModel.load(version, path, config.engine, config.dtype)
        log.info("serving %r: %s (%s)", config.deployment, version, path)
        tasks = [asyncio.create_task(server.follow()), asyncio.create_task(server.close_idle())]
        yield
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await server.shutdown()

    app = FastAPI(title=f"Flywheel serving {config.deployment}", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError):
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        return _error(400, f"{param}: {first['msg']}", param, "invalid_request_error")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        if body.stream:
            events = server.stream(body)
            first = await anext(events)  # a refusal is an error answer, not a broken stream
            return StreamingResponse(_prepend(first, events), media_type="text/event-stream")
        return await server.chat(body)

    @app.post("/v1/conversations/{conversation_id}/close")
    async def close(conversation_id: str) -> dict[str, Any]:
        if not server.close(conversation_id):
            raise OpenAIError(404, f"no open conversation {conversation_id!r}", "conversation_id", "not_found")
        return {"closed": conversation_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": config.deployment, "object": "model", "created": 0,
                                            "owned_by": "flywheel"}]}

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {"deployment": config.deployment, "version": server.current.version if server.current else None,
                "finishing": [m.version for m in server.retiring], "open_conversations": len(server.open),
                "swaps": server.swaps, "traces_delivered": server.sink.delivered}

    return app
