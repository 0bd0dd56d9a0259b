"""The message codec that the support desk, the traces environment, the model server and the demos
share: how an OpenAI-format message reads as the text a model sees and writes (`message_text`),
and how a model's turn reads back as a tool call or a message to the customer (`parse_turn`).

Tool calls are written one of two ways: as OpenAI's JSON (`[{"name", "arguments"}]` after the
content), or, the support desk's own format, as `name(arg=value, ...)` lines.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

CALL = re.compile(r"^\s*(\w+)\((.*)\)\s*$", re.S)
CALL_ATTEMPT = re.compile(r"^\s*\w+\(")
ARG = re.compile(r"^\s*(\w+)\s*=\s*\"?([^\"]*?)\"?\s*$")


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, str]


class MalformedCall(ValueError):
    pass


def parse_turn(text: str) -> Call | str:
    """A tool call, or the text itself when it is a message to the customer."""
    text = text.strip()
    if not CALL_ATTEMPT.match(text):
        return text
    m = CALL.match(text)
    if m is None:
        raise MalformedCall("could not parse the call; write it as name(arg=value)")
    name, body = m.group(1), m.group(2).strip()
    args: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        a = ARG.match(part)
        if a is None:
            raise MalformedCall(f"could not parse the argument {part!r} of {name}; write arg=value")
        args[a.group(1)] = a.group(2).strip()
    return Call(name, args)


def message_text(message: dict[str, Any], tool_calls: str = "json") -> str:
    """A message's content as the model reads and writes it; an assistant's tool calls as their
    JSON, or (`"call"`) as `name(arg=value, ...)` lines, the support desk's own format."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content)
    calls = [c["function"] for c in message.get("tool_calls") or []]
    if calls and tool_calls == "call":
        lines = []
        for c in calls:
            args = json.loads(c["arguments"] or "{}")
            lines.append(f"{c['name']}({', '.join(f'{k}={v}' for k, v in args.items())})")
        content = "\n".join(([content] if content else []) + lines)
    elif calls:
        content = (content or "") + json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls])
    return content or ""


def unstorable_text(text: str) -> str | None:
    """Why `text` cannot be kept in a trace (the store refuses a NUL, and a lone UTF-16 surrogate is
    not Unicode text); None when it can. The control plane refuses such a request body, the model
    server such a request."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which the store cannot keep"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate (such as \\ud800): not valid Unicode text"
    return None
