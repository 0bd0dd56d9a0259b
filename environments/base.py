"""The environment contract: where tasks come from and, for multi-turn work, who answers.

    class Environment(Protocol):
        def tasks(self, split: str) -> Iterable[Task]: ...
        async def step(self, episode: Episode) -> Step: ...

A single-turn environment's `step` ends the episode at once. Every column of a task, and every
outcome field a step records, reaches the reward modules as a keyword list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rewards.base import DATA_PATH, path_fields  # noqa: F401 - the path marker, shared with reward configs

Message = dict[str, str]


@dataclass(frozen=True)
class LoggedReply:
    """What a deployed model said after a task's prompt, as production logged it (the `traces`
    environment): the rest of the conversation, and for each of its messages the behaviour
    policy's logprobs where an assistant message has them (`token_ids` or OpenAI's `tokens`, with
    `logprobs`), else None."""

    messages: list[Message]
    behaviour: list[dict[str, list] | None]
    model: str | None = None
    model_version: str | None = None


@dataclass(frozen=True)
class Task:
    """One prompt: chat messages plus the row's other columns."""

    id: str
    prompt: list[Message]
    columns: dict[str, Any] = field(default_factory=dict)
    prompt_text: str | None = None
    """Set when the data gave a plain-string prompt: reward modules then see strings, as in TRL's
    standard (non-conversational) format; otherwise prompts and completions are message lists."""
    logged: LoggedReply | None = None
    """A logged trace's reply, to learn from instead of rolling out (the `traces` environment)."""


@dataclass
class Episode:
    """A task in progress: the conversation so far (the task's prompt first)."""

    task: Task
    messages: list[Message]
    turn: int = 0


@dataclass
class Step:
    """The environment's answer to the policy's last message."""

    done: bool
    reply: list[Message] = field(default_factory=list)
    outcome: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
    def tasks(self, split: str) -> Iterable[Task]: ...

    async def step(self, episode: Episode) -> Step: ...


class EnvironmentConfigError(ValueError):
    """Bad environment config or data; `field` is the dotted path under `environment.config`."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"environment.config.{field}: {message}")
