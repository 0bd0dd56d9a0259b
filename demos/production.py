"""A deployed support agent's production log. The agent (the scripted legacy agent, with its
mistakes, or a model folder with `--agent-model`, whose turns are logged with their sampled token
ids and logprobs) answers the simulator's customers on tickets that no job trains or evaluates on, and
each conversation is logged the way a deployment logs it: OpenAI's chat format, each tool call an
assistant message's `tool_calls` with its result as a `tool` message, the agent's name and
version, and no outcome. The outcomes follow in a second pass, one `POST
/v1/traces/{id}/outcome` each, as resolution is known hours after the chat. What is logged is
all a job learns from: training never calls the simulator.

    python -m demos.production --count 2000 --url $FLYWHEEL_URL --key $FLYWHEEL_API_KEY
    python -m demos.production --count 2000 --out logs.jsonl   # for `flywheel traces import`
    python -m demos.production --count 200 --agent-model runs/desk-model --out logs.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from demos.legacy_agent import Mistakes, legacy_turns
from environments.messages import Call, MalformedCall, parse_turn
from environments.support_desk.simulator import SYSTEM_PROMPT, make_ticket, replay

PRODUCTION_SEED_OFFSET = 7_000_000
"""Ticket seeds of the production log: disjoint from the environment's train and eval tickets and
from the demonstrations'."""
PRODUCTION_START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
"""When the logged conversations happened (a fixed time, so the same log is the same snapshot)."""


def _logged_turn(text: str, call_id: str) -> dict[str, Any]:
    """An agent turn as logged: a tool call in OpenAI's shape, or a message to the customer."""
    try:
        parsed = parse_turn(text)
    except MalformedCall:
        return {"role": "assistant", "content": text}
    if isinstance(parsed, Call):
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": parsed.name, "arguments": json.dumps(parsed.args)}}]}
    return {"role": "assistant", "content": text}


def _conversation(i: int, ticket, turns: list[str], behaviours: list[dict | None], state, system_prompt: bool,
                  agent: str, version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A played ticket as logged (without its outcome), and the outcome labels reported later."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}] if system_prompt else []
    messages.append({"role": "user", "content": ticket.opening})
    last = len(state.replies) - 1
    for k, (text, behaviour, (role, reply)) in enumerate(zip(turns, behaviours, state.replies, strict=False)):
        turn = _logged_turn(text, f"call_{k}")
        messages.append({**turn, "logprobs": behaviour} if behaviour else turn)
        if k < last or state.outcome is None:  # the reply to the closing call is not part of the chat
            called = bool(turn.get("tool_calls"))  # a malformed call's error reaches the agent as a user message
            messages.append({"role": "tool", "tool_call_id": f"call_{k}", "content": reply} if called
                            else {"role": "user" if role == "tool" else role, "content": reply})
    outcome = {"outcome": state.outcome.outcome if state.outcome else "unfinished", "turns": len(turns)}
    at = PRODUCTION_START + timedelta(minutes=3 * i)  # a conversation every three minutes
    trace = {"trace_id": f"desk-{i:07d}", "model": agent, "model_version": version, "messages": messages,
             "metadata": {"intent": ticket.intent, "channel": "chat"}, "created_at": at.isoformat()}
    return trace, outcome


def production_trace(i: int, mistakes: Mistakes, rng: random.Random, system_prompt: bool, agent: str,
                     version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One conversation of the scripted legacy agent (which logs no logprobs)."""
    ticket = make_ticket(PRODUCTION_SEED_OFFSET + i)
    turns = legacy_turns(ticket, mistakes, rng)
    state = replay(ticket, turns, max_turns=len(turns), max_errors=len(turns) + 1)
    return _conversation(i, ticket, turns, [None] * len(turns), state, system_prompt, agent, version)


def model_trace(i: int, agent, system_prompt: bool, name: str, version: str, max_turns: int = 5,
                max_errors: int = 2) -> tuple[dict[str, Any], dict[str, Any]]:
    """One conversation of a model agent (`model_agent.ModelAgent`), each turn logged with its
    sampled token ids and logprobs, under the simulator's turn and error limits."""
    ticket = make_ticket(PRODUCTION_SEED_OFFSET + i)
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}] if system_prompt else []
    history.append({"role": "user", "content": ticket.opening})
    turns, behaviours = [], []
    while True:
        text, behaviour = agent.turn(history)
        turns.append(text)
        behaviours.append(behaviour)
        state = replay(ticket, turns, max_turns, max_errors)
        if state.outcome is not None:
            return _conversation(i, ticket, turns, behaviours, state, system_prompt, name, version)
        history += [{"role": "assistant", "content": text}, {"role": state.replies[-1][0], "content": state.replies[-1][1]}]


def production_log(count: int, mistakes: Mistakes, seed: int = 0, system_prompt: bool = False, agent: str = "legacy-agent",
                   version: str = "v1", agent_model=None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """`count` conversations of the legacy agent, or of `agent_model` (a `ModelAgent`) when given."""
    if agent_model is not None:
        return [model_trace(i, agent_model, system_prompt, agent, version) for i in range(count)]
    rng = random.Random(seed)
    return [production_trace(i, mistakes, rng, system_prompt, agent, version) for i in range(count)]


def send(log: list[tuple[dict, dict]], url: str, key: str, batch: int = 500) -> dict[str, int]:
    """The conversations in batches, then each outcome, through the traces API."""
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        for start in range(0, len(log), batch):
            r = c.post("/v1/traces", json={"traces": [t for t, _ in log[start:start + batch]]})
            if r.status_code >= 400:
                raise SystemExit(f"POST /v1/traces: {r.status_code} {r.text}")
        tally: dict[str, int] = {}
        for trace, outcome in log:
            r = c.post(f"/v1/traces/{trace['trace_id']}/outcome", json={"outcome": outcome})
            if r.status_code >= 400:
                raise SystemExit(f"POST /v1/traces/{trace['trace_id']}/outcome: {r.status_code} {r.text}")
            tally[outcome["outcome"]] = tally.get(outcome["outcome"], 0) + 1
    return tally


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--url", help="the control plane (with --key): traces, then their outcomes, through its API")
    p.add_argument("--key", help="a team's API key")
    p.add_argument("--out", type=Path, help="instead, a JSON Lines file with the outcomes in (for `flywheel traces "
                                            "import`)")
    p.add_argument("--agent-model", help="a model folder as the deployed agent (instead of the scripted legacy "
                                         "agent): it samples every turn and logs its token ids and logprobs")
    p.add_argument("--agent-name", default=None, help="the `model` the traces name (default: legacy-agent, or the "
                                                      "folder's name)")
    p.add_argument("--temperature", type=float, default=1.0, help="the model agent's sampling temperature")
    p.add_argument("--system-prompt", action="store_true", help="the deployment sends the tool manual as a system "
                                                                "message")
    p.add_argument("--refund-outside-window", type=float, default=Mistakes.refund_outside_window)
    p.add_argument("--skip-verification", type=float, default=Mistakes.skip_verification)
    p.add_argument("--needless-escalation", type=float, default=Mistakes.needless_escalation)
    a = p.parse_args()
    if (a.out is None) == (a.url is None):
        p.error("give either --url (with --key) or --out")
    agent_model = None
    if a.agent_model:
        from demos.model_agent import ModelAgent

        agent_model = ModelAgent(a.agent_model, a.temperature, seed=a.seed)
    name = a.agent_name or (Path(a.agent_model).name if a.agent_model else "legacy-agent")
    log = production_log(a.count, Mistakes(a.refund_outside_window, a.skip_verification, a.needless_escalation),
                         a.seed, a.system_prompt, name, agent_model=agent_model)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("".join(json.dumps({**t, "outcome": o}) + "\n" for t, o in log))
        print(f"wrote {len(log)} production traces to {a.out}")
        return
    tally = send(log, a.url, a.key)
    print(f"logged {len(log)} conversations, then their outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))


if __name__ == "__main__":
    main()
