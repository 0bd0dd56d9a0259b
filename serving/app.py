"""The OpenAI-compatible server of one deployment: `POST /v1/chat/completions` (with token
logprobs), `GET /v1/models`, `POST /v1/conversations/{id}/close`, each for a caller with a key of
the deployment (`guard.py`), and `GET /healthz`, open to all; and the background tasks: following
the deployment's promotions, reading its keys, and closing idle conversations.

Every request is bounded (`ServingConfig`): its body's size (413), its prompt and `max_tokens`
within the model's context (400), the requests waiting or running (429 with `Retry-After`), the
time to its reply (a 504 `timeout` error; in a stream, an error event), and the conversations
open, per key and in all (429), so no sequence of requests grows the server's memory without
bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPBearer

from serving.conversations import Conversation, TraceSink
from serving.engine import ModelRefused, ServedModel
from serving.guard import BodyLimit, DeploymentKeys, OpenAIError
from serving.schemas import ChatRequest, printable, unstorable
from serving.tools import as_model_text, reply_message
from trainer.types import SamplingParams

log = logging.getLogger("flywheel.serving")

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,179}$")
"""A client's conversation id: the characters of a trace id, at most 180 of them (the trace id,
`<key id>:<conversation id>`, may have 200)."""


@dataclass
class ServingConfig:
    deployment: str
    control_url: str
    key: str
    """The team's API key, with which the server reads the deployment and its keys and logs traces."""
    engine: str = "hf"
    dtype: str = "float32"
    poll_s: float = 2.0
    """How often the deployment is asked which version it serves, and which keys are live."""
    idle_close_s: float = 600.0
    """A conversation with no request for this long is closed and logged."""
    default_max_tokens: int = 256
    """A request without `max_tokens` gets this many at most (or what the context has left)."""
    tool_format: str = "none"
    """`call`: replies that are `name(arg=value)` lines are answered as OpenAI tool calls (`tools.py`)."""
    max_model_len: int | None = None
    """Prompt and reply tokens together, at most (as vLLM's `--max-model-len`); None: the model's
    context. A request past it is refused (400) naming `messages` or `max_tokens`."""
    max_body_bytes: int = 1 << 20
    """A request body over this is refused (413) before it is parsed."""
    max_queue: int = 64
    """Requests waiting or running at once; past it a request is refused with 429 and `Retry-After`."""
    request_timeout_s: float = 300.0
    """A reply not done within this is answered with a `timeout` error (504), not waited for."""
    max_conversations: int = 4096
    """Open conversations, every caller's together; a new one past it is refused with 429."""
    max_conversations_per_key: int = 512
    """Open conversations of one key; a new one past it is refused with 429."""


class Opened:
    """A request's place: its conversation, the version that answers it, its prompt and sampling."""

    def __init__(self, trace_id: str, cid: str, one_turn: bool, conversation: Conversation, served: ServedModel,
                 texts: list[dict], prompt_ids: list[int], sampling: SamplingParams):
        self.trace_id, self.cid, self.one_turn, self.conversation = trace_id, cid, one_turn, conversation
        self.served, self.texts, self.prompt_ids, self.sampling = served, texts, prompt_ids, sampling

    def metadata(self) -> dict[str, str]:
        return {"conversation_id": self.cid, "trace_id": self.trace_id, "model_version": self.served.version}


class Server:
    """What the routes share: the version new conversations go to, the versions still finishing
    theirs, the open conversations, the deployment's keys, and the trace sink."""

    def __init__(self, config: ServingConfig):
        self.config = config
        self.control = httpx.AsyncClient(base_url=config.control_url, timeout=30,
                                         headers={"Authorization": f"Bearer {config.key}"})
        self.current: ServedModel | None = None
        self.retiring: list[ServedModel] = []
        self.open: dict[str, tuple[Conversation, ServedModel]] = {}
        """By trace id."""
        self.per_key: Counter[str] = Counter()
        self.keys = DeploymentKeys(config.deployment)
        self.refused: dict[str, str] = {}
        """Versions the deployment named whose files did not match the registry's, and why."""
        self.sink = TraceSink(config.control_url, config.key)
        self.active = self.swaps = 0

    async def read_keys(self) -> None:
        r = await self.control.get(f"/v1/deployments/{self.config.deployment}/keys")
        r.raise_for_status()
        self.keys.update(r.json()["keys"])

    async def deployed_version(self) -> str:
        r = await self.control.get(f"/v1/deployments/{self.config.deployment}")
        r.raise_for_status()
        model = r.json()["model"]
        if model is None:
            raise RuntimeError(f"deployment {self.config.deployment!r} serves no model yet: promote one first")
        return model

    async def load(self, version: str) -> ServedModel:
        """The version, loaded if its files are the ones registered (else `ModelRefused`)."""
        r = await self.control.get(f"/v1/models/{version}")
        r.raise_for_status()
        model = r.json()
        served = await ServedModel.load(version, model["path"], model["files"], self.config.engine, self.config.dtype)
        if self.config.max_model_len is not None:
            served.context = min(served.context or self.config.max_model_len, self.config.max_model_len)
        return served

    async def follow(self) -> None:
        """Load the version a promotion or rollback names beside the one serving, then swap; a
        version whose files do not match the registry's is refused, and the old one serves on."""
        while True:
            await asyncio.sleep(self.config.poll_s)
            try:
                version = await self.deployed_version()
                if version != self.current.version and version not in self.refused:
                    loaded = await self.load(version)
                    self.retiring.append(self.current)
                    self.current, self.swaps = loaded, self.swaps + 1
                    log.info("now serving %s (%s); %d version(s) finishing", version, loaded.path, len(self.retiring))
            except ModelRefused as exc:
                self.refused[version] = str(exc)
                log.error("not serving %s: %s; %s serves on", version, exc, self.current.version)
            except (httpx.HTTPError, RuntimeError) as exc:
                log.warning("could not follow the deployment: %s", exc)
            self.retire()

    async def refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_s)
            try:
                await self.read_keys()
            except httpx.HTTPError as exc:
                log.warning("could not read the deployment's keys (%s); the last ones read stay in force", exc)

    def retire(self) -> None:
        for old in list(self.retiring):
            if not old.conversations and not old.in_flight:
                old.close()
                self.retiring.remove(old)

    async def close_idle(self) -> None:
        while True:
            await asyncio.sleep(min(self.config.idle_close_s / 4, 30))
            cutoff = time.monotonic() - self.config.idle_close_s
            for tid in [t for t, (conv, _) in self.open.items() if conv.last_seen < cutoff]:
                self.close(tid)

    def close(self, trace_id: str) -> bool:
        """Close the conversation and log it (one that never got a reply is let go unlogged)."""
        entry = self.open.pop(trace_id, None)
        if entry is None:
            return False
        conversation, served = entry
        served.conversations.discard(trace_id)
        if not conversation.one_turn:
            self.per_key[conversation.key_id] -= 1
            if self.per_key[conversation.key_id] <= 0:
                del self.per_key[conversation.key_id]
        if conversation.messages:
            self.sink.put(conversation.trace(self.config.deployment, self.config.tool_format))
        return True

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """A place among the requests waiting or running, or 429."""
        if self.active >= self.config.max_queue:
            raise OpenAIError(429, f"{self.active} requests are waiting or running, this server's limit "
                                   "(--max-queue): retry shortly", None, "rate_limit_exceeded", {"Retry-After": "1"})
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def _room_for(self, key_id: str) -> None:
        """429 unless a new conversation of this key fits under both caps."""
        if self.per_key[key_id] >= self.config.max_conversations_per_key:
            raise OpenAIError(429, f"this key has {self.per_key[key_id]} open conversations, the most one key may "
                                   "have (--max-conversations-per-key): close some (POST /v1/conversations/{id}/close)",
                              "metadata.conversation_id", "too_many_conversations", {"Retry-After": "1"})
        if sum(self.per_key.values()) >= self.config.max_conversations:
            raise OpenAIError(429, f"{sum(self.per_key.values())} conversations are open, this server's limit "
                                   "(--max-conversations): retry later", "metadata.conversation_id",
                              "too_many_conversations", {"Retry-After": "5"})

    def _open(self, body: ChatRequest, key_id: str) -> Opened:
        """The request's conversation (new ones go to the current version), its prompt and sampling."""
        cid = (body.metadata or {}).get("conversation_id")
        if cid is not None and not CONVERSATION_ID.fullmatch(cid):
            raise OpenAIError(400, "metadata.conversation_id: letters, digits and `._:-`, starting with a letter or "
                                   "digit, at most 180 characters", "metadata.conversation_id")
        one_turn = cid is None
        cid = cid or f"chat-{uuid.uuid4().hex}"
        trace_id = f"{key_id}:{cid}"
        entry = self.open.get(trace_id)
        if entry is None:
            if not one_turn:
                self._room_for(key_id)
            entry = Conversation(trace_id, self.current.version, cid, key_id, one_turn), self.current
        conversation, served = entry
        request = [m.model_dump(exclude_none=True) for m in body.messages]
        if (found := unstorable(request, "messages")) is not None:
            raise OpenAIError(400, f"{found[0]}: {found[1]}", found[0])
        texts = [as_model_text(m, self.config.tool_format) for m in request]
        try:
            prompt_ids = served.prompt_ids(texts)
        except Exception as exc:  # noqa: BLE001 - a chat template refusing the messages
            raise OpenAIError(400, f"the messages do not fit the model's chat template: {exc}", "messages") from None
        sampling = SamplingParams(self._max_tokens(body, served, len(prompt_ids)), body.temperature, body.top_p)
        if trace_id not in self.open:
            self.open[trace_id] = entry
            self.per_key[key_id] += not one_turn
        served.conversations.add(trace_id)
        return Opened(trace_id, cid, one_turn, conversation, served, texts, prompt_ids, sampling)

    def _max_tokens(self, body: ChatRequest, served: ServedModel, prompt: int) -> int:
        """The reply's token budget: what the request asks, within what the context leaves."""
        asked = body.max_completion_tokens or body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        if served.context is None:
            return asked or self.config.default_max_tokens
        if prompt >= served.context:
            raise OpenAIError(400, f"the messages are {prompt} tokens; the model's context is {served.context}",
                              "messages", "context_length_exceeded")
        if asked is not None and prompt + asked > served.context:
            raise OpenAIError(400, f"{param}: the messages are {prompt} tokens and {param} is {asked}, over the "
                                   f"model's context of {served.context} tokens (at most {served.context - prompt})",
                              param, "context_length_exceeded")
        return asked or min(self.config.default_max_tokens, served.context - prompt)

    def _abandon(self, opened: Opened) -> None:
        """A request that got no reply: a conversation it began is let go (it has nothing to log)."""
        if not opened.conversation.messages and self.open.get(opened.trace_id, (None,))[0] is opened.conversation:
            self.close(opened.trace_id)

    def _timeout(self) -> OpenAIError:
        return OpenAIError(504, f"the reply did not finish within {self.config.request_timeout_s:g} s "
                                "(--request-timeout-s): ask for fewer max_tokens, or retry", None, "timeout")

    def _finish(self, body: ChatRequest, opened: Opened, completion) -> dict:
        text = printable(completion.text)
        reply = reply_message(text, self.config.tool_format)
        opened.conversation.record([m.model_dump(exclude_none=True) for m in body.messages], opened.texts, reply,
                                   text, completion.token_ids, completion.logprobs)
        if opened.one_turn:
            self.close(opened.trace_id)
        return reply

    async def stream(self, body: ChatRequest, key_id: str) -> AsyncIterator[str]:
        """Server-sent chunks as OpenAI streams them: each token's text as it is sampled (with its
        logprob when asked), then the finish reason and `[DONE]`; past the deadline, an error event."""
        if self.config.tool_format != "none":
            raise OpenAIError(400, "streaming is not supported with --tool-format call (a reply is known to be a "
                                   "tool call only once it is complete); send stream=false", "stream")
        with self.admitted():
            opened = self._open(body, key_id)
            served = opened.served
            loop, tokens = asyncio.get_running_loop(), asyncio.Queue()
            deadline = loop.time() + self.config.request_timeout_s
            done = asyncio.ensure_future(served.complete(
                opened.prompt_ids, opened.sampling, lambda t, lp: loop.call_soon_threadsafe(tokens.put_nowait, (t, lp))))
            tok, ids, sent, next_token = served.engine.tokenizer(), [], "", None
            head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": self.config.deployment, "system_fingerprint": served.version,
                    "metadata": opened.metadata()}

            def chunk(delta: dict, logprobs=None, finish=None) -> str:
                return "data: " + json.dumps({**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                                                   "finish_reason": finish}]}) + "\n\n"

            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    next_token = next_token or asyncio.ensure_future(tokens.get())
                    await asyncio.wait({next_token, done}, timeout=max(0.0, deadline - loop.time()),
                                       return_when=asyncio.FIRST_COMPLETED)
                    if next_token.done():
                        token, logprob = next_token.result()
                        next_token = None
                        ids.append(token)
                        text = printable(tok.decode(ids, skip_special_tokens=True))
                        piece, sent = text[len(sent):], text
                        piece_lp = ({"content": [{"token": tok.decode([token]), "logprob": logprob, "top_logprobs": [],
                                                  "bytes": list(tok.decode([token]).encode())}]}
                                    if body.logprobs else None)
                        if piece or piece_lp:
                            yield chunk({"content": piece}, piece_lp)
                    elif done.done():
                        if tokens.empty():
                            break
                    else:  # the deadline
                        error = self._timeout()
                        yield "data: " + json.dumps({"error": {"message": error.message, "type": "timeout",
                                                               "param": None, "code": error.code}}) + "\n\n"
                        return
                completion = done.result()
                text = printable(completion.text)
                if not ids:  # an engine that does not stream (vLLM here): the whole reply in one chunk
                    yield chunk({"content": text},
                                self.logprobs(served, completion) if body.logprobs else None)
                elif text != sent:  # a decoding that settled late
                    yield chunk({"content": text[len(sent):] if text.startswith(sent) else ""})
                self._finish(body, opened, completion)
                yield chunk({}, None, "length" if completion.truncated else "stop")
                yield "data: [DONE]\n\n"
            finally:
                for pending in (next_token, done):
                    if pending is not None and not pending.done():
                        pending.cancel()
                self._abandon(opened)

    async def chat(self, body: ChatRequest, key_id: str) -> dict[str, Any]:
        with self.admitted():
            opened = self._open(body, key_id)
            try:
                completion = await asyncio.wait_for(opened.served.complete(opened.prompt_ids, opened.sampling),
                                                    self.config.request_timeout_s)
            except BaseException as exc:
                self._abandon(opened)
                if isinstance(exc, TimeoutError):
                    raise self._timeout() from None
                raise
            reply = self._finish(body, opened, completion)
            return self.response(body, opened, completion, reply)

    def response(self, body: ChatRequest, opened: Opened, completion, reply: dict) -> dict:
        finish = "tool_calls" if reply.get("tool_calls") else "length" if completion.truncated else "stop"
        choice: dict[str, Any] = {"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}
        if body.logprobs:
            choice["logprobs"] = self.logprobs(opened.served, completion)
        n, prompt = len(completion.token_ids), len(opened.prompt_ids)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.config.deployment, "system_fingerprint": opened.served.version, "choices": [choice],
                "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
                "metadata": opened.metadata()}

    @staticmethod
    def logprobs(served: ServedModel, completion) -> dict[str, Any]:
        """OpenAI's `logprobs` of a choice: each sampled token's text and logprob."""
        pieces = [served.engine.tokenizer().decode([t]) for t in completion.token_ids]
        return {"content": [{"token": p, "logprob": lp, "bytes": list(p.encode()), "top_logprobs": []}
                            for p, lp in zip(pieces, completion.logprobs, strict=True)]}

    async def shutdown(self) -> None:
        for tid in list(self.open):
            self.close(tid)
        await asyncio.to_thread(self.sink.close)
        await self.control.aclose()


_bearer = HTTPBearer(auto_error=False, description="a key of the deployment (flywheel deploy keys create NAME)")


def _caller(request: Request, _: Annotated[Any, Depends(_bearer)]) -> str:
    """The id of the deployment key the request presents (401 without a live one)."""
    return request.app.state.server.keys.caller(request.headers.get("authorization"))


Caller = Annotated[str, Depends(_caller)]


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for event in rest:
        yield event


def create_app(config: ServingConfig) -> FastAPI:
    server = Server(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.read_keys()
        version = await server.deployed_version()
        try:
            server.current = await server.load(version)
        except ModelRefused as exc:
            app.state.refused = f"refusing to serve {config.deployment!r}: {exc}"
            log.error("%s", app.state.refused)
            raise
        log.info("serving %r: %s (%s), %d live key(s)", config.deployment, version, server.current.path,
                 len(server.keys))
        if not len(server.keys):
            log.warning("deployment %r has no live key: every request is refused until one is created "
                        "(flywheel deploy keys create %s)", config.deployment, config.deployment)
        tasks = [asyncio.create_task(t()) for t in (server.follow, server.refresh_keys, server.close_idle)]
        yield
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await server.shutdown()

    app = FastAPI(title=f"Flywheel serving {config.deployment}", lifespan=lifespan)
    app.state.server, app.state.refused = server, None

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        return OpenAIError(400, f"{param}: {first['msg']}", param).response()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, key_id: Caller):
        if body.stream:
            events = server.stream(body, key_id)
            first = await anext(events)  # a refusal is an error answer, not a broken stream
            return StreamingResponse(_prepend(first, events), media_type="text/event-stream")
        return await server.chat(body, key_id)

    @app.post("/v1/conversations/{conversation_id}/close")
    async def close(conversation_id: str, key_id: Caller) -> dict[str, Any]:
        """Close one of the caller's conversations and log it; another caller's is a 404."""
        trace_id = f"{key_id}:{conversation_id}"
        if not server.close(trace_id):
            raise OpenAIError(404, f"no open conversation {conversation_id!r}", "conversation_id", "not_found")
        return {"closed": conversation_id, "trace_id": trace_id}

    @app.get("/v1/models")
    async def models(key_id: Caller) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": config.deployment, "object": "model", "created": 0,
                                            "owned_by": "flywheel"}]}

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {"deployment": config.deployment, "version": server.current.version if server.current else None,
                "finishing": [m.version for m in server.retiring], "refused": server.refused,
                "open_conversations": len(server.open), "active_requests": server.active, "swaps": server.swaps,
                "live_keys": len(server.keys), "traces_delivered": server.sink.delivered,
                "traces_refused": server.sink.refused, "traces_dropped": server.sink.dropped}

    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    return app
