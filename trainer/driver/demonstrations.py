"""Demonstration conversations for the warm start: JSONL, one `{"messages": [...]}` chat per line.
Reading them checks every line, so a bad file is refused before a job starts (the cluster-side
checks read them too) with the line and the problem named."""

from __future__ import annotations

import json
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool")


class DemonstrationError(ValueError):
    """A demonstrations file that cannot be used; the message names the line and the problem."""


def read_demonstrations(path: str | Path) -> list[list[dict[str, str]]]:
    path = Path(path)
    if not path.is_file():
        raise DemonstrationError(f"no such file: {path}")
    chats = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DemonstrationError(f"{where}: not JSON ({exc.msg})") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise DemonstrationError(f"{where}: expected an object with a non-empty `messages` list")
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise DemonstrationError(f"{where}: messages.{i} must be {{role: {'|'.join(ROLES)}, content: str}}")
        if messages[0]["role"] == "assistant" or not any(m["role"] == "assistant" for m in messages):
            raise DemonstrationError(f"{where}: expected context messages, then at least one assistant message")
        chats.append(messages)
    if not chats:
        raise DemonstrationError(f"{path} holds no conversations")
    return chats
