"""Simulated customers of a served support agent: each plays one ticket of the simulator through
the official `openai` client against an OpenAI-compatible endpoint (`flywheel serve-model
DEPLOYMENT --tool-format call`), the way a support front end would: the agent's tool calls come
back as OpenAI `tool_calls`, their results go back as `tool` messages, the customer's answers as
`user` messages, and the conversation is closed when the ticket ends. The customers present a key
of the deployment (`POST /v1/deployments/{name}/keys`). The simulator decides the outcome, which
the caller reports later through the traces API, under the trace id the server answered with
(`metadata.trace_id`): the served model never sees it.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from environments.messages import message_text
from environments.support_desk.simulator import make_ticket, replay


@dataclass
class Served:
    """One played ticket: its trace id, outcome labels and the version that answered it."""

    trace_id: str
    outcome: dict[str, Any]
    version: str


def play(client, base_url: str, deployment: str, seed: int, max_turns: int = 5, max_errors: int = 2,
         max_tokens: int = 24) -> Served:
    """One ticket, turn by turn, through the chat-completions API."""
    ticket = make_ticket(seed)
    cid = f"ticket-{seed}-{uuid.uuid4().hex[:8]}"
    messages: list[dict[str, Any]] = [{"role": "user", "content": ticket.opening}]
    turns: list[str] = []
    while True:
        out = client.chat.completions.create(model=deployment, messages=messages, max_tokens=max_tokens,
                                             metadata={"conversation_id": cid})
        reply = out.choices[0].message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})
        messages.append(reply)
        turns.append(message_text(reply, "call"))  # the agent's turn as the simulator reads it
        state = replay(ticket, turns, max_turns, max_errors)
        if state.outcome is not None:
            break
        answer = state.replies[-1][1]
        calls = reply.get("tool_calls") or []
        messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": answer} if calls
                        else {"role": "user", "content": answer})
    httpx.post(f"{base_url}/conversations/{cid}/close", headers={"Authorization": f"Bearer {client.api_key}"},
               timeout=60).raise_for_status()
    return Served(out.metadata["trace_id"], {"outcome": state.outcome.outcome, "turns": len(turns)},
                  out.system_fingerprint)


def serve_customers(base_url: str, deployment: str, api_key: str, seeds: list[int], concurrency: int = 16,
                    **play_args) -> list[Served]:
    """Many customers at once (the server batches their turns), with a key of the deployment."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=300)
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda s: play(client, base_url, deployment, s, **play_args), seeds))


def rates(served: list[Served]) -> dict[str, float]:
    outcomes = [s.outcome["outcome"] for s in served]
    return {o: outcomes.count(o) / len(outcomes) for o in ("resolved", "escalated", "violation")}
