"""The conversations a served deployment is having, and their delivery as traces.

A conversation is open from its first request until the client closes it (or it idles past a
limit); it is pinned to the model version that answered its first turn. Closed, it becomes one
trace: the messages as the last request sent them plus the last reply, each reply this server
wrote carrying its sampled token ids and logprobs, the deployment as `model` and the version as
`model_version`. The trace id is the conversation id, so a delivery retried after a timeout is
stored once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from serving.tools import as_model_text

log = logging.getLogger("flywheel.serving")

LOGGED_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


@dataclass
class Conversation:
    id: str
    version: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    messages: list[dict] = field(default_factory=list)
    replies: dict[int, tuple[str, dict]] = field(default_factory=dict)
    """Index in `messages` of each reply this server wrote: (its text, its token ids and logprobs)."""
    last_seen: float = field(default_factory=time.monotonic)

    def record(self, request: list[dict], reply: dict, text: str, token_ids: list[int], logprobs: list[float]) -> None:
        """The conversation is now the request's messages and the reply (`text` as the model wrote it)."""
        self.messages = [{k: m[k] for k in LOGGED_KEYS if m.get(k) is not None} for m in request]
        self.messages.append(reply)
        self.replies[len(self.messages) - 1] = (text, {"token_ids": token_ids, "logprobs": logprobs})
        self.last_seen = time.monotonic()

    def trace(self, deployment: str, tool_format: str = "none") -> dict:
        messages = []
        for i, m in enumerate(self.messages):
            served = self.replies.get(i)
            # A reply the client sent back unchanged keeps the logprobs it was sampled with.
            ok = (served is not None and m.get("role") == "assistant"
                  and as_model_text(m, tool_format)["content"] == served[0])
            messages.append({**m, "logprobs": served[1]} if ok else m)
        turns = sum(m["role"] == "assistant" for m in messages)
        return {"trace_id": self.id, "model": deployment, "model_version": self.version, "messages": messages,
                "metadata": {"served_by": "flywheel", "turns": turns}, "created_at": self.started.isoformat()}


class TraceSink:
    """Delivers traces to the control plane from a background thread, in batches, retrying until
    each batch is stored (idempotent by trace id); a batch the control plane refuses as invalid
    (4xx) is reported and dropped, since sending it again cannot succeed."""

    def __init__(self, url: str, key: str, batch: int = 100, interval_s: float = 0.5):
        self._client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self._pending: list[dict] = []
        self._lock, self._wake = threading.Lock(), threading.Event()
        self.batch, self.interval_s, self.delivered, self.refused = batch, interval_s, 0, 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="trace-sink")
        self._thread.start()

    def put(self, trace: dict) -> None:
        with self._lock:
            self._pending.append(trace)
        self._wake.set()

    def _run(self) -> None:
        backoff = self.interval_s
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            with self._lock:
                batch = self._pending[:self.batch]
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
            if r.status_code >= 500 or r.status_code == 429:
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if r.status_code >= 400:
                log.error("the control plane refused %d traces: %s %s", len(batch), r.status_code, r.text[:500])
                self.refused += len(batch)
            else:
                self.delivered += len(batch)
            backoff = self.interval_s
            with self._lock:
                del self._pending[:len(batch)]
            self._wake.set()

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is pending (up to the time limit), then stop."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout_s)
        self._client.close()
