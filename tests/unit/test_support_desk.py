"""The support-desk simulator: intents, tools, policy rules, outcomes, determinism, bad calls."""

import asyncio
import dataclasses
import random

import pytest

from demos.legacy_agent import Mistakes, legacy_turns, write_demonstrations
from environments import build
from environments.base import Episode
from environments.messages import Call, MalformedCall, parse_turn
from environments.support_desk.simulator import INTENTS, TOOLS, Ticket, make_ticket, replay
from rewards.registry import load


def ticket(intent: str, **facts) -> Ticket:
    base = Ticket(seed=0, intent=intent, order_id="123", email="kim@mail.com", days_since_delivery=10,
                  shipped=False, opening="help")
    return dataclasses.replace(base, **facts)


def outcome(t: Ticket, *turns: str, max_turns: int = 6, max_errors: int = 2):
    state = replay(t, list(turns), max_turns, max_errors)
    return (state.outcome.outcome if state.outcome else None), state


# The policy-compliant path for every intent (and both sides of each policy rule).
RESOLVING = [
    (ticket("refund"), ["What is your order number?", "lookup_order(order_id=123)", "refund(order_id=123)"]),
    (ticket("refund", days_since_delivery=45), ["lookup_order(order_id=123)", "deny_refund(order_id=123)"]),
    (ticket("password_reset"), ["verify_identity(email=kim@mail.com)", "reset_password(email=kim@mail.com)"]),
    (ticket("shipping_delay"), ["lookup_order(order_id=123)", "send_tracking(order_id=123)"]),
    (ticket("cancellation"), ["verify_identity(email=kim@mail.com)", "cancel_subscription(email=kim@mail.com)"]),
    (ticket("address_change"), ["lookup_order(order_id=123)", "update_address(order_id=123)"]),
]


@pytest.mark.parametrize(("t", "turns"), RESOLVING, ids=lambda x: getattr(x, "intent", None))
def test_each_intent_resolves_on_the_policy_path(t, turns):
    result, state = outcome(t, *turns)
    assert result == "resolved", state.outcome
    assert state.tool_calls == sum(1 for x in turns if "(" in x)


@pytest.mark.parametrize(("t", "turns", "reason"), [
    (ticket("refund", days_since_delivery=31), ["refund(order_id=123)"], "return window"),
    (ticket("password_reset"), ["reset_password(email=kim@mail.com)"], "before verifying identity"),
    (ticket("cancellation"), ["cancel_subscription(email=kim@mail.com)"], "before verifying identity"),
    (ticket("address_change", shipped=True), ["update_address(order_id=123)"], "after the order shipped"),
    (ticket("shipping_delay"), ["refund(order_id=123)"], "not what the customer asked for"),
])
def test_each_policy_rule_makes_a_violation(t, turns, reason):
    result, state = outcome(t, *turns)
    assert result == "violation" and reason in state.outcome.reason


def test_the_return_window_boundary_is_inclusive():
    assert outcome(ticket("refund", days_since_delivery=30), "refund(order_id=123)")[0] == "resolved"
    assert outcome(ticket("refund", days_since_delivery=31), "refund(order_id=123)")[0] == "violation"


def test_escalation_outcomes():
    assert outcome(ticket("refund"), "escalate(reason=unsure)")[0] == "escalated"
    assert outcome(ticket("refund"), "escalate()")[0] == "escalated"  # escalate takes no required argument
    # Denying a refund the policy allows sends the customer to a human.
    assert outcome(ticket("refund"), "deny_refund(order_id=123)")[0] == "escalated"
    # Running out of turns hands the ticket over too.
    result, state = outcome(ticket("refund"), "hello", "hello", max_turns=2)
    assert result == "escalated" and "2 turns" in state.outcome.reason


def test_the_customer_answers_from_the_hidden_facts():
    _, state = outcome(ticket("refund"), "What is your order number?", "Which email is it?", "I see.")
    assert [r for _, r in state.replies] == ["My order number is #123.", "My email is <kim@mail.com>.",
                                              "Sorry, I just need help with this: help"]
    assert {role for role, _ in state.replies} == {"user"}


def test_tools_answer_with_the_facts():
    _, state = outcome(ticket("refund", days_since_delivery=45), "lookup_order(order_id=123)")
    assert state.replies == [("tool", "order 123: delivered 45 days ago, return window closed")]
    _, state = outcome(ticket("address_change", shipped=True), "lookup_order(order_id=123)")
    assert state.replies[0][1] == "order 123: shipped"
    _, state = outcome(ticket("cancellation"), "verify_identity(email=kim@mail.com)")
    assert state.replies[0][1] == "identity verified" and state.verified
    assert set(TOOLS) >= {"lookup_order", "refund", "reset_password", "cancel_subscription", "escalate"}


@pytest.mark.parametrize(("turn", "error"), [
    ("fly_to_moon(order_id=123)", "unknown tool 'fly_to_moon'"),
    ("refund()", "refund needs order_id"),
    ("refund(order=123)", "refund needs order_id"),
    ("refund(order_id=999)", "no order 999 on this account"),
    ("verify_identity(email=bob@mail.com)", "no account with email bob@mail.com"),
    ("refund(order_id=123", "could not parse the call"),
    ("refund(123)", "could not parse the argument '123'"),
])
def test_malformed_calls_get_an_error_reply_and_count(turn, error):
    result, state = outcome(ticket("refund"), turn)
    assert result is None and state.errors == 1
    assert state.replies[0][0] == "tool" and error in state.replies[0][1]
    # Past max_errors the ticket goes to a human: a defined outcome, never a crash.
    result, state = outcome(ticket("refund"), turn, turn)
    assert result == "escalated" and "malformed or failed" in state.outcome.reason


def test_parse_turn():
    assert parse_turn(" refund(order_id=12, note=\"x y\") ") == Call("refund", {"order_id": "12", "note": "x y"})
    assert parse_turn("Hello there (how are you)") == "Hello there (how are you)"
    with pytest.raises(MalformedCall):
        parse_turn("refund(order_id=1")


def test_tickets_are_deterministic_by_seed_and_cover_every_intent():
    assert make_ticket(7) == make_ticket(7)
    assert {make_ticket(s).intent for s in range(200)} == set(INTENTS)
    assert len({make_ticket(s) for s in range(50)}) == 50


def test_environment_splits_are_disjoint_and_steps_are_deterministic():
    env = build("support_desk", {"train_size": 30, "eval_size": 10})
    train, held_out = list(env.tasks("train")), list(env.tasks("eval"))
    assert len(train) == 30 and len(held_out) == 10
    assert not {t.columns["ticket_seed"] for t in train} & {t.columns["ticket_seed"] for t in held_out}
    task = held_out[0]
    t = make_ticket(task.columns["ticket_seed"])
    messages = [*task.prompt, {"role": "assistant", "content": f"lookup_order(order_id={t.order_id})"}]
    first = asyncio.run(env.step(Episode(task, messages, 1)))
    again = asyncio.run(env.step(Episode(task, messages, 1)))
    assert first == again
    if t.key == "order_id":
        assert not first.done and first.reply[0]["role"] == "tool"
    else:  # lookup_order on an email ticket: the id is the wrong one
        assert first.reply[0]["content"].startswith("error")
    closing = [*task.prompt, {"role": "assistant", "content": "escalate()"}]
    step = asyncio.run(env.step(Episode(task, closing, 1)))
    assert step.done and step.outcome["outcome"] == "escalated" and step.outcome["turns"] == 1


def test_bad_environment_config_names_the_field():
    with pytest.raises(ValueError, match="intents"):
        build("support_desk", {"intents": ["teleport"]})


def test_legacy_agent_makes_its_configured_mistakes(tmp_path):
    perfect = write_demonstrations(tmp_path / "a.jsonl", 300, Mistakes(0.0, 0.0, 0.0))
    assert perfect.get("violation", 0) == 0 and perfect["resolved"] > 240
    sloppy = write_demonstrations(tmp_path / "b.jsonl", 300, Mistakes(1.0, 1.0, 0.0))
    assert sloppy["violation"] > 60
    t = ticket("refund", days_since_delivery=50)
    assert legacy_turns(t, Mistakes(1.0, 0.0, 0.0), random.Random(0))[-1] == "refund(order_id=123)"


def test_resolution_reward_scores_outcomes_with_a_turn_cost():
    module = load("resolution", None, {"violation": -2.0, "per_turn_cost": 0.1}, 1.0, 5.0, "resolution")
    values = module.fn([None] * 3, [None] * 3, outcome=["resolved", "escalated", "violation"], turns=[2, 1, 3])
    assert values == pytest.approx([0.8, -0.1, -2.3])
    with pytest.raises(KeyError, match="multi-turn environment"):
        module.fn(["p"], ["c"], answer=["x"])
