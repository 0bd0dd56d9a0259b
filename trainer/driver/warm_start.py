"""The warm start: supervised training on demonstration conversations before RL.

A conversation is laid out token for token the way a multi-turn rollout lays it out (the prompt,
then each assistant turn followed by the template tokens of the replies), with the loss mask on
the assistant's own tokens, so the model learns exactly the sequences it will later sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainer.learner import LearnBatch
from trainer.rollout.episodes import reply_ids
from trainer.rollout.worker import format_prompt

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


@dataclass
class Encoded:
    prompt_ids: list[int]
    token_ids: list[int]
    mask: list[bool]


def encode(tokenizer, messages: list[dict[str, str]]) -> Encoded:
    """Prompt = everything before the first assistant turn; mask = the assistant's tokens."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    out = Encoded(format_prompt(tokenizer, messages[:first]), [], [])
    i = first
    while i < len(messages):
        if messages[i]["role"] == "assistant":
            ids = tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.token_ids += ids
            out.mask += [True] * len(ids)
            i += 1
            continue
        j = i
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        if j == len(messages):
            break  # nothing follows to learn from
        ids = reply_ids(tokenizer, messages[:i], messages[i:j], eos_sampled=True)
        out.token_ids += ids
        out.mask += [False] * len(ids)
        i = j
    return out


def learn_batch(rows: list[Encoded]) -> LearnBatch:
    """The learner's batch type; supervised steps use neither old logprobs nor advantages."""
    return LearnBatch([r.prompt_ids for r in rows], [r.token_ids for r in rows],
                      [[0.0] * len(r.token_ids) for r in rows], [0.0] * len(rows), [r.mask for r in rows])
