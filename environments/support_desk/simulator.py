"""The support desk: seeded tickets with hidden facts, the tools an agent calls, the policy, and
the customer who answers. Pure and deterministic: the same ticket and the same agent messages
always give the same replies and the same outcome.

An agent turn is either one tool call or a message to the customer. A tool call is one line,

    name(arg=value, arg=value)

and anything else is said to the customer, who answers a question about their order number or
email from the ticket's hidden facts. An episode ends with an outcome:

- `resolved`: the customer's request was handled inside the policy, with no human;
- `escalated`: the agent called `escalate`, denied a request it should have granted, made too
  many malformed calls, or ran out of turns (a human takes the ticket over);
- `violation`: the agent broke a policy rule or changed something the customer did not ask for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from environments.messages import Call, MalformedCall, parse_turn

INTENTS = ("refund", "password_reset", "shipping_delay", "cancellation", "address_change")
RETURN_WINDOW_DAYS = 30
NAMES = ("ana", "ben", "chen", "dara", "eli", "fay", "gus", "hana", "ivan", "jo", "kim", "lee", "mia", "noor",
         "omar", "pia", "raj", "sam", "tara", "uma")

OPENINGS = {
    "refund": ("I want a refund for my order.", "Can I get my money back for an order?"),
    "password_reset": ("I can't log in, please reset my password.", "I forgot my password."),
    "shipping_delay": ("My package hasn't arrived yet.", "Where is my order? It is late."),
    "cancellation": ("Please cancel my subscription.", "I want to stop my subscription."),
    "address_change": ("I need to change the delivery address on my order.", "I moved, can you update my order's address?"),
}

# name -> (required arguments, what the call does to the ticket)
TOOLS: dict[str, tuple[str, ...]] = {
    "lookup_order": ("order_id",),
    "refund": ("order_id",),
    "deny_refund": ("order_id",),
    "send_tracking": ("order_id",),
    "update_address": ("order_id",),
    "verify_identity": ("email",),
    "reset_password": ("email",),
    "cancel_subscription": ("email",),
    "escalate": (),
}
ACTIONS = {  # the call that carries out each intent's request
    "refund": "refund", "password_reset": "reset_password", "shipping_delay": "send_tracking",
    "cancellation": "cancel_subscription", "address_change": "update_address",
}
ORDER_INTENTS = ("refund", "shipping_delay", "address_change")

SYSTEM_PROMPT = (
    "You are a support agent. Each turn, write one tool call as name(arg=value) or a short message "
    "to the customer. Tools: " + ", ".join(f"{n}({', '.join(a)})" for n, a in TOOLS.items()) + ". "
    f"Policy: refund only inside the {RETURN_WINDOW_DAYS}-day return window; verify identity before "
    "password resets and cancellations; change an address only before the order ships."
)



@dataclass(frozen=True)
class Ticket:
    """One customer's request and the facts the agent has to find out."""

    seed: int
    intent: str
    order_id: str
    email: str
    days_since_delivery: int
    """Refund tickets: how long ago the order arrived (the window is RETURN_WINDOW_DAYS)."""
    shipped: bool
    """Address-change tickets: once shipped, only a human can reroute the parcel."""
    opening: str

    @property
    def window_open(self) -> bool:
        return self.days_since_delivery <= RETURN_WINDOW_DAYS

    @property
    def key(self) -> str:
        """What the customer identifies themselves by: the order number or the email."""
        return "order_id" if self.intent in ORDER_INTENTS else "email"


def make_ticket(seed: int, intents: tuple[str, ...] = INTENTS) -> Ticket:
    rng = random.Random(seed)
    intent = intents[rng.randrange(len(intents))]
    return Ticket(seed=seed, intent=intent, order_id=str(rng.randrange(10, 100)),
                  email=f"{rng.choice(NAMES)}@mail.com", days_since_delivery=rng.randrange(2, 61),
                  shipped=rng.random() < 0.5, opening=rng.choice(OPENINGS[intent]))


@dataclass
class Outcome:
    outcome: str
    reason: str


@dataclass
class DeskState:
    """What the agent's calls have done so far, replayed from its messages."""

    verified: bool = False
    looked_up: bool = False
    errors: int = 0
    tool_calls: int = 0
    outcome: Outcome | None = None
    replies: list[tuple[str, str]] = field(default_factory=list)
    """(role, text) per agent turn: `tool` for a call's result, `user` for the customer."""


def customer_reply(ticket: Ticket, text: str) -> str:
    said = text.lower()
    if "order" in said and ("number" in said or "id" in said or "which" in said):
        return f"My order number is #{ticket.order_id}."
    if "email" in said:
        return f"My email is <{ticket.email}>."
    return f"Sorry, I just need help with this: {ticket.opening}"


def run_tool(ticket: Ticket, state: DeskState, call: Call) -> str:
    """The tool's answer; sets `state.outcome` when the call ends the ticket."""
    if call.name not in TOOLS:
        state.errors += 1
        return f"error: unknown tool {call.name!r}"
    missing = [a for a in TOOLS[call.name] if not call.args.get(a)]
    if missing:
        state.errors += 1
        return f"error: {call.name} needs {', '.join(missing)}"
    state.tool_calls += 1
    name, args = call.name, call.args
    if name == "escalate":
        state.outcome = Outcome("escalated", "handed to a human")
        return "ticket escalated to a human"
    if "order_id" in args and args["order_id"] != ticket.order_id:
        state.errors += 1
        return f"error: no order {args['order_id']} on this account"
    if "email" in args and args["email"] != ticket.email:
        state.errors += 1
        return f"error: no account with email {args['email']}"
    if name == "lookup_order":
        state.looked_up = True
        if ticket.intent == "refund":
            window = "open" if ticket.window_open else "closed"
            return f"order {ticket.order_id}: delivered {ticket.days_since_delivery} days ago, return window {window}"
        if ticket.intent == "address_change":
            return f"order {ticket.order_id}: {'shipped' if ticket.shipped else 'not shipped yet'}"
        return f"order {ticket.order_id}: in transit, late"
    if name == "verify_identity":
        state.verified = True
        return "identity verified"
    if name == "deny_refund":
        if ticket.intent == "refund" and not ticket.window_open:
            state.outcome = Outcome("resolved", "refund declined under the policy")
            return "customer told the return window has closed"
        state.outcome = Outcome("escalated", "declined a request the policy allows; the customer asked for a human")
        return "the customer asks for a human"
    # The remaining tools change something for the customer.
    if name != ACTIONS[ticket.intent]:
        state.outcome = Outcome("violation", f"{name} was not what the customer asked for")
        return "done"
    if name == "refund" and not ticket.window_open:
        state.outcome = Outcome("violation", "refund outside the return window")
        return "refund issued"
    if name in ("reset_password", "cancel_subscription") and not state.verified:
        state.outcome = Outcome("violation", f"{name} before verifying identity")
        return "done"
    if name == "update_address" and ticket.shipped:
        state.outcome = Outcome("violation", "address changed after the order shipped")
        return "done"
    state.outcome = Outcome("resolved", f"{name} done")
    return "done"


def replay(ticket: Ticket, agent_turns: list[str], max_turns: int, max_errors: int) -> DeskState:
    """Run the agent's turns in order against the ticket; stops at the first outcome."""
    state = DeskState()
    for turn, text in enumerate(agent_turns, 1):
        try:
            parsed = parse_turn(text)
        except MalformedCall as exc:
            state.errors += 1
            state.replies.append(("tool", f"error: {exc}"))
        else:
            if isinstance(parsed, Call):
                state.replies.append(("tool", run_tool(ticket, state, parsed)))
            else:
                state.replies.append(("user", customer_reply(ticket, parsed)))
        if state.outcome is None and state.errors >= max_errors:
            state.outcome = Outcome("escalated", f"{state.errors} malformed or failed calls")
        if state.outcome is None and turn >= max_turns:
            state.outcome = Outcome("escalated", f"no outcome after {max_turns} turns")
        if state.outcome is not None:
            break
    return state
