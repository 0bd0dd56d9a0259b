"""Production traces as the API takes and gives them: one conversation in OpenAI's chat format, the
model that wrote its assistant turns (with their behaviour logprobs where the client has them), and
its outcome labels. The rules that span fields are in `service/traces/logic.py::trace_problems`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from environments.snapshot import UtcTime

TRACE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Name = Annotated[str, Field(min_length=1, max_length=200)]
LabelValue = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=200)] | None
MAX_LABELS = 64
Outcome = Annotated[dict[Annotated[str, Field(min_length=1, max_length=100)], LabelValue], Field(max_length=MAX_LABELS)]
"""Outcome labels: `{"outcome": "resolved"}`, `{"accepted": false}`, `{"csat": 4.5}`; at most 64."""


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenLogprob(_Closed):
    """OpenAI's `logprobs.content[i]`."""
    token: str
    logprob: float = Field(le=0, allow_inf_nan=False)
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] | None = None


class Logprobs(_Closed):
    """The behaviour policy's log-probabilities of an assistant turn's tokens: OpenAI's shape
    (`content`: one entry per token, which together spell the message's content), or token ids
    with one logprob each (`token_ids`, `logprobs`)."""
    content: list[TokenLogprob] | None = None
    token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    logprobs: list[Annotated[float, Field(le=0, allow_inf_nan=False)]] | None = None


class FunctionCall(_Closed):
    name: Name
    arguments: str


class ToolCall(_Closed):
    id: Name
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Closed):
    type: Literal["text"]
    text: str


class Message(_Closed):
    """One chat message as OpenAI's chat-completions API has it."""
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Name | None = None
    tool_calls: list[ToolCall] | None = None
    """Assistant messages only."""
    tool_call_id: Name | None = None
    """Tool messages only: the assistant tool call this answers."""
    logprobs: Logprobs | None = None
    """Assistant messages only: the behaviour logprobs of this turn's tokens."""
    refusal: str | None = None
    annotations: list[Any] | None = None


class TraceIn(_Closed):
    trace_id: Annotated[str, Field(min_length=1, max_length=200, pattern=TRACE_ID)]
    """The client's id (letters, digits, `.`, `_`, `:`, `-`): sending it again stores nothing new."""
    model: Name
    """The model that wrote the assistant turns."""
    model_version: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    messages: list[Message] = Field(min_length=1)
    outcome: Outcome | None = None
    """Known at ingest, or later through `POST /v1/traces/{trace_id}/outcome`."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcTime | None = None
    """When the conversation happened (default: when it arrives)."""


class TraceBatch(_Closed):
    traces: list[TraceIn] = Field(min_length=1)
    """Up to `max_trace_batch` traces (FLYWHEEL_MAX_TRACE_BATCH); a larger batch is 413."""


class OutcomeIn(_Closed):
    outcome: Outcome = Field(min_length=1)
    replace: StrictBool = False
    """False: merge these labels into the trace's; true: they become its whole outcome."""


class IngestOut(BaseModel):
    received: int
    stored: int
    duplicates: list[str]
    """Trace ids already stored (or repeated in this batch): nothing was written for them."""


class TraceOut(BaseModel):
    trace_id: str
    model: str
    model_version: str | None
    messages: list[dict[str, Any]]
    outcome: dict[str, Any] | None
    metadata: dict[str, Any]
    created_at: datetime
    received_at: datetime
    outcome_at: datetime | None
    outcome_history: list[OutcomeChange] | None = None
    """The latest 100 changes to the outcome, oldest first (`GET /v1/traces/{trace_id}` only; the
    store keeps every one)."""


class OutcomeChange(BaseModel):
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    by: str | None
    """The prefix of the API key that made the change."""
    at: datetime


class TracePage(BaseModel):
    traces: list[TraceOut]
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last one."""


class StatsRow(BaseModel):
    model: str
    model_version: str | None
    day: str
    traces: int
    labelled: int
    """Traces with the label; the rest are pending or do not have it."""
    values: dict[str, int]
    """Count per value of the label (string and true/false labels)."""
    rates: dict[str, float]
    """Share of `labelled` per value."""
    mean: float | None
    """Mean of the label where it is a number."""


class TraceStats(BaseModel):
    label: str
    rows: list[StatsRow]
