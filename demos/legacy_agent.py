"""Demonstrations from a "legacy agent": the scripted desk procedure with configurable mistakes.

The conversations are real episodes — every tool result and customer answer comes from the
simulator — written as chat-format JSONL (`{"messages": [...], "outcome": ...}`) for the warm
start. The mistakes make the warm-started model imperfect, so RL has something real to fix.

    python -m demos.legacy_agent runs/demos.jsonl --count 800 --refund-outside-window 0.5
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from environments.support_desk.simulator import SYSTEM_PROMPT, Ticket, make_ticket, replay

DEMO_SEED_OFFSET = 5_000_000  # disjoint from the environment's train and eval tickets


@dataclass(frozen=True)
class Mistakes:
    refund_outside_window: float = 0.5
    """Share of closed-window refund tickets the agent refunds anyway (a violation)."""
    skip_verification: float = 0.3
    """Share of account changes done without verifying identity first (a violation)."""
    needless_escalation: float = 0.2
    """Share of tickets handed to a human that the agent could have resolved."""


def legacy_turns(ticket: Ticket, mistakes: Mistakes, rng: random.Random) -> list[str]:
    """The agent's turns for one ticket."""
    key = ticket.key
    turns = ["What is your order number?" if key == "order_id" else "What is your email?"]
    ident = f"order_id={ticket.order_id}" if key == "order_id" else f"email={ticket.email}"
    if key == "order_id":
        turns.append(f"lookup_order({ident})")
    elif rng.random() >= mistakes.skip_verification:
        turns.append(f"verify_identity({ident})")
    if rng.random() < mistakes.needless_escalation:
        return [*turns, "escalate(reason=customer)"]
    if ticket.intent == "refund":
        refund = ticket.window_open or rng.random() < mistakes.refund_outside_window
        return [*turns, f"{'refund' if refund else 'deny_refund'}({ident})"]
    if ticket.intent == "address_change" and ticket.shipped:
        return [*turns, "escalate(reason=shipped)"]
    action = {"password_reset": "reset_password", "shipping_delay": "send_tracking",
              "cancellation": "cancel_subscription", "address_change": "update_address"}[ticket.intent]
    return [*turns, f"{action}({ident})"]


def conversation(ticket: Ticket, turns: list[str], system: str | None) -> tuple[list[dict[str, str]], str]:
    state = replay(ticket, turns, max_turns=len(turns), max_errors=len(turns) + 1)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": ticket.opening})
    last = len(state.replies) - 1
    for i, (text, (role, reply)) in enumerate(zip(turns, state.replies, strict=False)):
        messages.append({"role": "assistant", "content": text})
        if i < last or state.outcome is None:  # the reply to the closing call is not part of the chat
            messages.append({"role": role, "content": reply})
    return messages, state.outcome.outcome if state.outcome else "open"


def write_demonstrations(path: str | Path, count: int, mistakes: Mistakes, seed: int = 0,
                         system_prompt: bool = True) -> dict[str, int]:
    """Write `count` conversations; returns how many ended in each outcome."""
    rng = random.Random(seed)
    tally: dict[str, int] = {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(count):
            ticket = make_ticket(DEMO_SEED_OFFSET + seed * 10**6 + i)
            messages, outcome = conversation(ticket, legacy_turns(ticket, mistakes, rng),
                                             SYSTEM_PROMPT if system_prompt else None)
            tally[outcome] = tally.get(outcome, 0) + 1
            f.write(json.dumps({"messages": messages, "intent": ticket.intent, "outcome": outcome}) + "\n")
    return tally


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--count", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refund-outside-window", type=float, default=Mistakes.refund_outside_window)
    p.add_argument("--skip-verification", type=float, default=Mistakes.skip_verification)
    p.add_argument("--needless-escalation", type=float, default=Mistakes.needless_escalation)
    p.add_argument("--no-system-prompt", action="store_true", help="leave the tool manual out (match the env config)")
    a = p.parse_args()
    tally = write_demonstrations(a.out, a.count, Mistakes(a.refund_outside_window, a.skip_verification,
                                                          a.needless_escalation), a.seed, not a.no_system_prompt)
    print(f"wrote {a.count} demonstrations to {a.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))


if __name__ == "__main__":
    main()
