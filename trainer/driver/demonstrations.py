"""Demonstration conversations for the warm start: JSONL, one `{"messages": [...]}` chat per line.
Reading them checks every line, so a bad file is refused before a job starts (the cluster-side
checks read them too) with the line and the problem named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool")


class DemonstrationError(ValueError):
    """A demonstrations file that cannot be used; the message names the line and the problem."""


def iter_demonstrations(path: str | Path, limit_mb: int | None = None) -> Iterator[list[dict[str, str]]]:
    """Each conversation in turn, read one line at a time (a reader holds one conversation, not the
    file) after the file's size is checked against `limit_mb` (`warm_start.max_file_mb`)."""
    path = Path(path)
    if not path.is_file():
        raise DemonstrationError(f"no such file: {path}")
    size = path.stat().st_size
    if limit_mb is not None and size > limit_mb << 20:
        raise DemonstrationError(f"{path} is {size / 2**20:,.1f} MiB, over the demonstrations limit of "
                                 f"{limit_mb:,} MiB (warm_start.max_file_mb): raise it where the trainer's "
                                 "machines hold them in memory, or use a smaller file")
    chats = 0
    with path.open("rb") as lines:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                row = json.loads(line)
            except ValueError as exc:  # not JSON, or not UTF-8
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                raise DemonstrationError(f"{where}: not JSON ({reason})") from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DemonstrationError(f"{where}: expected an object with a non-empty `messages` list")
            for i, m in enumerate(messages):
                if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                    raise DemonstrationError(f"{where}: messages.{i} must be {{role: {'|'.join(ROLES)}, content: str}}")
            if messages[0]["role"] == "assistant" or not any(m["role"] == "assistant" for m in messages):
                raise DemonstrationError(f"{where}: expected context messages, then at least one assistant message")
            chats += 1
            yield messages
    if not chats:
        raise DemonstrationError(f"{path} holds no conversations")


def read_demonstrations(path: str | Path, limit_mb: int | None = None) -> list[list[dict[str, str]]]:
    return list(iter_demonstrations(path, limit_mb))
