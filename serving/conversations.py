"""The conversations a served deployment is having, and their delivery as traces.

A conversation is one caller's (one deployment key's): its id is the client's
`metadata.conversation_id` within that key, and its trace id is `<key id>:<conversation id>`, so
two callers that pick the same conversation id have two conversations and two traces. It is open
from its first request until the caller closes it (or it idles past a limit), pinned to the model
version that answered its first turn. Closed, it becomes one trace: the messages as the last
request sent them plus the last reply, the deployment as `model` and the version as
`model_version`. A delivery retried after a timeout is stored once (the trace id).

What the model wrote, and what the client wrote. A client sends the whole history with each
request, so it may send assistant turns this server never sampled (made up, or edited). Only the
turns the server sampled, after exactly the context it sampled them from, carry their token ids
and logprobs and are listed in the trace's `metadata.sampled_messages` (their indices in
`messages`); the `traces` environment learns from those alone and reads the others as context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from serving.tools import as_model_text

log = logging.getLogger("flywheel.serving")

LOGGED_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")
REFUSED_TRACE = re.compile(r"^traces\.(\d+)(?:\.|$)")
"""A field of the control plane's refusal that names one trace of the batch (`traces.3.messages.1.content`)."""


def _digest(texts: list[dict]) -> str:
    return hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()


@dataclass
class Sampled:
    """A reply this server sampled: its text as the model wrote it, its token ids and logprobs,
    and a digest of the messages (as the model read them) it was sampled after."""

    text: str
    behaviour: dict
    context: str


@dataclass
class Conversation:
    id: str
    """The trace id: `<key id>:<conversation id>`."""
    version: str
    conversation_id: str = ""
    key_id: str = ""
    one_turn: bool = False
    """A request without a conversation id: closed with its reply, not counted among the open ones."""
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    messages: list[dict] = field(default_factory=list)
    replies: dict[int, Sampled] = field(default_factory=dict)
    """Index in `messages` of each reply this server sampled."""
    last_seen: float = field(default_factory=time.monotonic)

    def record(self, request: list[dict], texts: list[dict], reply: dict, text: str, token_ids: list[int],
               logprobs: list[float]) -> None:
        """The conversation is now the request's messages and the reply (`text` as the model wrote
        it, after `texts`, the request as the model read it)."""
        self.messages = [{k: m[k] for k in LOGGED_KEYS if m.get(k) is not None} for m in request]
        self.messages.append(reply)
        self.replies[len(self.messages) - 1] = Sampled(text, {"token_ids": token_ids, "logprobs": logprobs},
                                                       _digest(texts))
        self.last_seen = time.monotonic()

    def trace(self, deployment: str, tool_format: str = "none") -> dict:
        texts = [as_model_text(m, tool_format) for m in self.messages]
        messages, sampled = [], []
        for i, m in enumerate(self.messages):
            s = self.replies.get(i)
            # A reply the client sent back unchanged, after the very messages it was sampled after.
            if (s is not None and m.get("role") == "assistant" and texts[i]["content"] == s.text
                    and _digest(texts[:i]) == s.context):
                messages.append({**m, "logprobs": s.behaviour})
                sampled.append(i)
            else:
                messages.append(m)
        turns = sum(m["role"] == "assistant" for m in messages)
        return {"trace_id": self.id, "model": deployment, "model_version": self.version, "messages": messages,
                "metadata": {"served_by": "flywheel", "turns": turns, "sampled_messages": sampled,
                             "conversation_id": self.conversation_id, "key_id": self.key_id},
                "created_at": self.started.isoformat()}


def refused_traces(response: httpx.Response, size: int) -> dict[int, str]:
    """The traces of a batch of `size` that the control plane's 4xx names, with its reasons: the
    fields `traces.N...` of `error.field` and `error.errors[*].field`."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return {}
    rows = [{"field": error.get("field"), "message": error.get("message")}, *(error.get("errors") or [])]
    bad: dict[int, str] = {}
    for row in rows:
        match = REFUSED_TRACE.match(str(row.get("field") or ""))
        if match and int(match[1]) < size:
            reason = f"{row['field']}: {str(row.get('message') or '').removeprefix(str(row['field']) + ': ')}"
            bad[int(match[1])] = "; ".join(filter(None, [bad.get(int(match[1])), reason]))
    return bad


class TraceSink:
    """Delivers traces to the control plane from a background thread, in batches, retrying until
    each is stored (idempotent by trace id). A trace the control plane refuses (a 4xx that names
    it, `traces.N...`: invalid, or a trace id already stored with another body) is logged with
    the refusal, counted in `refused` and dropped alone; the rest of its batch is sent again. A
    refusal that names no trace is narrowed down by halving the batch. At most `max_pending`
    traces wait (while the control plane is down); past that a closed conversation's trace is
    dropped and counted in `dropped`."""

    def __init__(self, url: str, key: str, batch: int = 100, interval_s: float = 0.5, max_pending: int = 10_000):
        self._client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self._pending: list[dict] = []
        self._lock, self._wake = threading.Lock(), threading.Event()
        self.batch, self.interval_s, self.max_pending = batch, interval_s, max_pending
        self.delivered = self.refused = self.dropped = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="trace-sink")
        self._thread.start()

    def put(self, trace: dict) -> None:
        try:
            json.dumps(trace, ensure_ascii=False, allow_nan=False).encode()
        except (ValueError, UnicodeEncodeError) as exc:  # refused here alone, not with its batch
            log.error("trace %r cannot be sent as JSON and is dropped: %s", trace["trace_id"], exc)
            self.refused += 1
            return
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                if self.dropped % 100 == 1:
                    log.error("%d traces wait for the control plane, the most kept: %d dropped so far",
                              len(self._pending), self.dropped)
                return
            self._pending.append(trace)
        self._wake.set()

    def _run(self) -> None:
        backoff, size = self.interval_s, self.batch
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            with self._lock:
                batch = self._pending[:size]
            if not batch:
                if self._stop:
                    return
                continue
            try:
                r = self._client.post("/v1/traces", json={"traces": batch})
            except httpx.TransportError as exc:
                log.warning("trace delivery failed (%s); retrying in %.1f s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if r.status_code >= 500 or r.status_code in (401, 403, 429):
                if r.status_code in (401, 403):
                    log.error("the control plane refuses the server's key (%s %s); traces wait",
                              r.status_code, r.text[:300])
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = self.interval_s
            if r.is_success:
                self.delivered += len(batch)
                size = self.batch
                self._remove(batch)
                continue
            bad = refused_traces(r, len(batch))
            if not bad and len(batch) > 1:
                size = max(1, len(batch) // 2)  # which trace it is, the halves will say
                self._wake.set()
                continue
            for i, reason in (bad or {0: f"{r.status_code} {r.text[:500]}"}).items():
                log.error("the control plane refused trace %r, which is dropped: %s", batch[i]["trace_id"], reason)
            self.refused += len(bad or [0])
            self._remove([batch[i] for i in (bad or [0])])

    def _remove(self, traces: list[dict]) -> None:
        gone = {id(t) for t in traces}
        with self._lock:
            self._pending = [t for t in self._pending if id(t) not in gone]
        self._wake.set()

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is pending (up to the time limit), then stop."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout_s)
        self._client.close()
