"""Tool calls between the OpenAI API and a model that writes them as text.

A model that learned the support desk writes a tool call as a line, `lookup_order(order_id=A12)`.
With `tool_format = "call"` the server answers such a reply as OpenAI does, an assistant message
with `tool_calls` (so a client executes it and sends the result back as a `tool` message with
its `tool_call_id`), and renders the `tool_calls` of the messages it is sent back into those
lines for the model: the same rendering the `traces` environment uses (`tool_calls = "call"`), so
what production logs reads back token for token. With `"none"` replies are always plain text.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from environments.messages import Call, MalformedCall, message_text, parse_turn

TOOL_FORMATS = ("none", "call")


def as_model_text(message: dict[str, Any], tool_format: str) -> dict[str, str]:
    """A message of the request as the model reads it: role and text."""
    return {"role": message.get("role"), "content": message_text(message, "call" if tool_format == "call" else "json")}


def reply_message(text: str, tool_format: str) -> dict[str, Any]:
    """The model's reply in OpenAI's shape: a tool call when it parses as one, else the text."""
    if tool_format == "call":
        try:
            parsed = parse_turn(text)
        except MalformedCall:
            parsed = None
        if isinstance(parsed, Call):
            return {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                 "function": {"name": parsed.name, "arguments": json.dumps(parsed.args)}}]}
    return {"role": "assistant", "content": text}
