"""What a chat-completions request may hold, as this server reads it: OpenAI's message shape
(other keys accepted and ignored), the parameters it acts on, and the strings a trace could not
carry (`unstorable`)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from environments.messages import unstorable_text


class _Part(BaseModel):
    type: Literal["text"]
    text: str


class _Function(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    arguments: str
    """A JSON object, as text (OpenAI's shape)."""

    @field_validator("arguments")
    @classmethod
    def _an_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value or "{}")
        except ValueError:
            raise ValueError("must be a JSON object, as text") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object, as text")
        return value


class _ToolCall(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: _Function


class ChatMessage(BaseModel):
    """One message of the request, as OpenAI's chat format has it (its other keys are ignored)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=200)


class ChatRequest(BaseModel):
    """The chat-completions parameters this server acts on; OpenAI's others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=1.0, gt=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    logprobs: bool = False
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16)
    """`conversation_id` ties a caller's requests into one conversation (one trace)."""


def unstorable(value: Any, where: str) -> tuple[str, str] | None:
    """(field, why) for the first string a trace cannot carry (the control plane refuses NUL
    characters and lone UTF-16 surrogates); None when every one is fine."""
    if isinstance(value, str):
        if (why := unstorable_text(value)) is not None:
            return where, why
    elif isinstance(value, dict | list):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            if (found := unstorable(v, f"{where}.{k}")) is not None:
                return found
    return None


def printable(text: str) -> str:
    """The model's text as a reply and a trace carry it: a NUL it sampled (a byte-level vocabulary
    has one) shown as U+FFFD, as undecodable bytes are, since the control plane stores no NUL."""
    return text.replace("\x00", "\ufffd")
