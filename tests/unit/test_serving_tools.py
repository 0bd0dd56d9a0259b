"""Tool calls between the OpenAI API and a model that writes them as `name(arg=value)` lines."""

import json

from serving.conversations import Conversation
from serving.tools import as_model_text, reply_message


def test_a_call_line_is_an_openai_tool_call_and_renders_back_to_the_same_line():
    text = "lookup_order(order_id=A123, email=ann@example.com)"
    reply = reply_message(text, "call")
    assert reply["content"] is None
    call = reply["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "lookup_order"
    assert json.loads(call["function"]["arguments"]) == {"order_id": "A123", "email": "ann@example.com"}
    assert as_model_text(reply, "call") == {"role": "assistant", "content": text}
    assert reply_message("Your refund is on its way.", "call") == {"role": "assistant",
                                                                   "content": "Your refund is on its way."}
    assert reply_message(text, "none") == {"role": "assistant", "content": text}
    assert reply_message("lookup_order(order_id", "call")["content"] == "lookup_order(order_id"  # malformed: text


def read_as(messages: list[dict]) -> list[dict]:
    """The messages as the model read them (the server's `texts`)."""
    return [as_model_text(m, "call") for m in messages]


def test_a_logged_conversation_keeps_the_logprobs_of_the_replies_sent_back_unchanged():
    conversation = Conversation("conv-1", "mdl_0000000000000001")
    sampled = {"token_ids": [5, 6, 2], "logprobs": [-0.5, -0.25, -0.1]}
    first = reply_message("verify_identity(email=a@b.c)", "call")
    opening = [{"role": "user", "content": "Reset my password"}]
    conversation.record(opening, read_as(opening), first, "verify_identity(email=a@b.c)", sampled["token_ids"],
                        sampled["logprobs"])
    request = [*opening, first, {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "verified"}]
    conversation.record(request, read_as(request), {"role": "assistant", "content": "Done."}, "Done.", [9, 2],
                        [-0.3, -0.01])
    trace = conversation.trace("support-agent", "call")
    assert trace["trace_id"] == "conv-1" and trace["model_version"] == "mdl_0000000000000001"
    assert [m["role"] for m in trace["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert trace["messages"][1]["logprobs"] == sampled and trace["messages"][1]["tool_calls"] == first["tool_calls"]
    assert trace["messages"][3]["logprobs"] == {"token_ids": [9, 2], "logprobs": [-0.3, -0.01]}
