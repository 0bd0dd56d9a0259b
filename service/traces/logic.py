"""Production traces in the store: the rules a trace must keep beyond its schema, ingest (one
transaction per batch, idempotent by the client's trace id), late outcomes, filtered and paged
reads, and outcome rates by model version and day."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from service.api.trace_schemas import Message, TraceIn
from service.core.errors import ApiError
from service.core.store import Team, Trace, TraceOutcomeChange, now

NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
INSERT_CHUNK = 500
"""Rows per INSERT statement (SQLite binds at most 32,766 parameters to one)."""


# ── rules that span fields ────────────────────────────────────────────────────────────────────

def trace_problems(trace: TraceIn, where: str) -> list[dict[str, str]]:
    """What is wrong with a schema-valid trace, each as {field, message}; `where` is its path."""
    problems, call_ids = [], set()
    if not any(m.role == "assistant" for m in trace.messages):
        problems.append({"field": f"{where}.messages", "message": "a trace needs at least one assistant message "
                                                                    "(the turns its model wrote)"})
    for i, m in enumerate(trace.messages):
        at = f"{where}.messages.{i}"
        problems += _message_problems(m, at, call_ids)
        call_ids |= {c.id for c in m.tool_calls or []}
    return problems


def _message_problems(m: Message, at: str, call_ids: set[str]) -> list[dict[str, str]]:
    out = []

    def bad(field: str, message: str) -> None:
        out.append({"field": f"{at}.{field}", "message": message})

    if m.role != "assistant":
        for field in ("tool_calls", "logprobs"):
            if getattr(m, field) is not None:
                bad(field, f"only assistant messages carry {field}, this one is {m.role!r}")
        if m.content is None:
            bad("content", f"a {m.role} message needs content")
    elif m.content is None and not m.tool_calls:
        bad("content", "an assistant message needs content or tool_calls")
    if m.role == "tool":
        if m.tool_call_id is None:
            bad("tool_call_id", "a tool message needs the tool_call_id of the call it answers")
        elif m.tool_call_id not in call_ids:
            bad("tool_call_id", f"{m.tool_call_id!r} matches no tool call of an earlier assistant message")
    elif m.tool_call_id is not None:
        bad("tool_call_id", f"only tool messages carry tool_call_id, this one is {m.role!r}")
    if m.role == "assistant" and m.logprobs is not None:
        for field, message in logprob_problems(m):
            bad(f"logprobs{field}", message)
    return out


def logprob_problems(m: Message) -> list[tuple[str, str]]:
    lp = m.logprobs
    if (lp.content is None) == (lp.token_ids is None and lp.logprobs is None):
        return [("", "give either `content` (OpenAI's shape) or `token_ids` with `logprobs`, not both or neither")]
    if lp.content is None:
        if lp.token_ids is None or lp.logprobs is None:
            missing = "token_ids" if lp.token_ids is None else "logprobs"
            return [(f".{missing}", "token ids and logprobs come together: one logprob per token id")]
        if len(lp.token_ids) != len(lp.logprobs):
            return [(".logprobs", f"{len(lp.logprobs)} logprobs for {len(lp.token_ids)} token ids: "
                                  "expected one per token")]
        return []
    if not isinstance(m.content, str):
        return [(".content", "OpenAI-shaped logprobs score the message's text content, and this message "
                             "has none (send token_ids with logprobs)")]
    spelled = "".join(t.token for t in lp.content)
    if spelled != m.content:
        first = next((i for i, (a, b) in enumerate(zip(spelled, m.content, strict=False)) if a != b),
                     min(len(spelled), len(m.content)))
        return [(".content", f"the {len(lp.content)} tokens spell {len(spelled)} characters, the message content "
                             f"is {len(m.content)}; they differ from character {first}: one entry per token of "
                             "the content, in order")]
    return []


# ── writes ────────────────────────────────────────────────────────────────────────────────────

def _conversation(t: TraceIn) -> dict[str, Any]:
    """What makes a trace the trace it is: sending its id again with any of this different is a conflict."""
    return {"model": t.model, "model_version": t.model_version,
            "messages": [m.model_dump(exclude_none=True) for m in t.messages], "metadata": t.metadata}


def _conflict(t: TraceIn, stored: dict[str, Any], stored_outcome: dict | None, stored_at: datetime | None) -> str | None:
    """Why `t` is not a resend of the trace stored under its id; None when it is."""
    mine = _conversation(t)
    for key in ("model", "model_version", "messages", "metadata"):
        if mine[key] != stored[key]:
            return key
    if t.created_at is not None and stored_at is not None and t.created_at != stored_at:
        return "created_at"
    if t.outcome is not None and t.outcome != stored_outcome:
        return "outcome"
    return None


def _conflicts(session: Session, team_id: str, traces: list[TraceIn], inserted: set[str]) -> None:
    """409 naming the first trace whose id this team stored (or sent earlier in the batch) with a
    different body: a resend must be the same trace, or it would be silently dropped. Only the ids
    the batch did not insert just now are read back, so a batch of new traces costs no query."""
    ids = list({t.trace_id for t in traces} - inserted)
    stored: dict[str, tuple[dict, dict | None, datetime | None]] = {}
    for start in range(0, len(ids), INSERT_CHUNK):
        for row in session.scalars(select(Trace).where(Trace.team_id == team_id,
                                                       Trace.trace_id.in_(ids[start:start + INSERT_CHUNK]))):
            stored[row.trace_id] = ({"model": row.model, "model_version": row.model_version,
                                     "messages": row.messages, "metadata": row.meta}, row.outcome, row.created_at)
    for i, t in enumerate(traces):
        if t.trace_id in stored:
            field = _conflict(t, *stored[t.trace_id])
            if field is not None:
                raise ApiError(409, "trace_conflict", f"traces.{i}: trace {t.trace_id!r} was stored already with a "
                               f"different {field}; a resend must be the same trace (send an outcome that arrives "
                               "later with POST /v1/traces/{trace_id}/outcome)", f"traces.{i}.{field}")
        else:
            stored[t.trace_id] = (_conversation(t), t.outcome, t.created_at)


def trace_size(t: TraceIn) -> int:
    """The bytes a trace counts against its team's storage: its JSON."""
    return len(t.model_dump_json(exclude_none=True))


def ingest(session: Session, team_id: str, traces: list[TraceIn], quota: int | None = None) -> list[str]:
    """Store every trace whose id this team has not stored yet, in one transaction; returns the ids
    that were duplicates (already stored, or earlier in this batch). A resend with a different body
    is a 409; with `quota`, a batch that would take the team's stored bytes past it is a 413."""
    received, rows, seen, sizes = now(), [], set(), {}
    for t in traces:
        if t.trace_id in seen:
            continue
        seen.add(t.trace_id)
        sizes[t.trace_id] = trace_size(t)
        rows.append({"team_id": team_id, "trace_id": t.trace_id, "model": t.model, "model_version": t.model_version,
                     "messages": [m.model_dump(exclude_none=True) for m in t.messages], "outcome": t.outcome,
                     "metadata": t.metadata, "created_at": (t.created_at or received).astimezone(UTC),
                     "received_at": received, "outcome_at": received if t.outcome else None})
    insert = (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert
    stored: set[str] = set()
    for start in range(0, len(rows), INSERT_CHUNK):
        stmt = (insert(Trace).values(rows[start:start + INSERT_CHUNK])
                .on_conflict_do_nothing(index_elements=["team_id", "trace_id"]).returning(Trace.trace_id))
        stored.update(session.scalars(stmt))
    try:
        _conflicts(session, team_id, traces, stored)
    except ApiError:
        session.rollback()  # nothing of the batch is kept
        raise
    added = sum(sizes[i] for i in stored)
    used = session.scalar(update(Team).where(Team.id == team_id).values(trace_bytes=Team.trace_bytes + added)
                          .returning(Team.trace_bytes))
    if quota is not None and added and used > quota:
        session.rollback()
        raise ApiError(413, "trace_quota", f"traces: this batch adds {added:,} bytes of traces; the team would "
                       f"store {used:,}, over its limit of {quota:,} (FLYWHEEL_MAX_TRACE_BYTES_PER_TEAM, or the "
                       "team's own max_trace_bytes)", "traces")
    session.commit()
    duplicates, counted = [], set()
    for t in traces:
        if t.trace_id not in stored or t.trace_id in counted:
            duplicates.append(t.trace_id)
        counted.add(t.trace_id)
    return duplicates


def owned_trace(session: Session, team_id: str, trace_id: str) -> Trace:
    row = session.scalar(select(Trace).where(Trace.team_id == team_id, Trace.trace_id == trace_id))
    if row is None:  # another team's trace is indistinguishable from a missing one
        raise ApiError(404, "not_found", f"trace {trace_id!r} not found")
    return row


def set_outcome(session: Session, trace: Trace, outcome: dict[str, Any], replace: bool, by: str | None,
                quota: int | None = None) -> Trace:
    """Merge (or with `replace`, set) the trace's labels; the change is kept in its history, with
    the API key (its prefix) that made it, and its bytes count against the team's trace storage
    (`quota`: a change that would pass it is a 413)."""
    old = trace.outcome
    trace.outcome = dict(outcome) if replace else {**(old or {}), **outcome}
    trace.outcome_at = now()
    if trace.outcome != old:
        added = len(json.dumps(old)) + len(json.dumps(trace.outcome))  # the history row keeps both
        used = session.scalar(update(Team).where(Team.id == trace.team_id)
                              .values(trace_bytes=Team.trace_bytes + added).returning(Team.trace_bytes))
        if quota is not None and used > quota:
            session.rollback()
            raise ApiError(413, "trace_quota", f"outcome: this change adds {added:,} bytes to the team's traces, "
                           f"which would store {used:,}, over its limit of {quota:,} "
                           "(FLYWHEEL_MAX_TRACE_BYTES_PER_TEAM, or the team's own max_trace_bytes)", "outcome")
        session.add(TraceOutcomeChange(trace_row_id=trace.id, key_prefix=by, old=old, new=trace.outcome,
                                       changed_at=trace.outcome_at))
    session.commit()
    return trace


def outcome_history(session: Session, trace: Trace, latest: int = 100) -> list[TraceOutcomeChange]:
    """The trace's latest outcome changes, oldest first."""
    rows = session.scalars(select(TraceOutcomeChange).where(TraceOutcomeChange.trace_row_id == trace.id)
                           .order_by(TraceOutcomeChange.id.desc()).limit(latest))
    return list(reversed(list(rows)))


# ── reads ─────────────────────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class TraceFilter:
    """What `GET /v1/traces`, `/stats` and a job's trace selection may filter on."""
    model: str | None = None
    model_version: str | None = None
    outcome: tuple[str, ...] = ()
    """`KEY:VALUE` labels every trace must have (a bare VALUE means the `outcome` label);
    `true`/`false` and numbers match JSON booleans and numbers."""
    pending: bool | None = None
    """True: only traces without an outcome yet; false: only those with one."""
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, query: Select, team_id: str) -> Select:
        query = query.where(Trace.team_id == team_id)
        if self.model is not None:
            query = query.where(Trace.model == self.model)
        if self.model_version is not None:
            query = query.where(Trace.model_version == self.model_version)
        for key, value in map(parse_label, self.outcome):
            column = Trace.outcome[key]
            if isinstance(value, bool):
                query = query.where(column.as_boolean() == value)
            elif isinstance(value, float):
                query = query.where(column.as_float() == value)
            else:
                query = query.where(column.as_string() == value)
        if self.pending is not None:
            query = query.where(Trace.outcome.is_(None) if self.pending else Trace.outcome.is_not(None))
        if self.since is not None:
            query = query.where(Trace.created_at >= self.since.astimezone(UTC))
        if self.until is not None:
            query = query.where(Trace.created_at < self.until.astimezone(UTC))
        return query


def parse_label(text: str) -> tuple[str, str | bool | float]:
    key, colon, value = text.partition(":")
    if not colon:
        key, value = "outcome", text
    if not key or not value:
        raise ApiError(422, "invalid_request", f"outcome: {text!r} is not a label; expected KEY:VALUE, or VALUE "
                                               "for the `outcome` label", "outcome")
    if value in ("true", "false"):
        return key, value == "true"
    return key, float(value) if NUMBER.fullmatch(value) else value


def page(session: Session, team_id: str, where: TraceFilter, cursor: str | None, limit: int) -> tuple[list[Trace], str | None]:
    """Traces in the order they happened (then of arrival), `limit` at a time after `cursor`."""
    query = where.apply(select(Trace), team_id)
    if cursor is not None:
        at, row_id = decode_cursor(cursor)
        query = query.where(or_(Trace.created_at > at, and_(Trace.created_at == at, Trace.id > row_id)))
    rows = list(session.scalars(query.order_by(Trace.created_at, Trace.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more else None


def encode_cursor(row: Trace) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        at, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at).astimezone(UTC), int(row_id)
    except (ValueError, binascii.Error, UnicodeError) as e:
        raise ApiError(422, "invalid_request", "cursor: not a cursor this API gave out (pass `next_cursor` "
                                               "from the previous page)", "cursor") from e


def _mean(numbers: list[float]) -> float | None:
    """Their mean, as a JSON number: each term divided first, so no sum overflows a float."""
    return sum(float(v) / len(numbers) for v in numbers) if numbers else None


def stats(session: Session, team_id: str, where: TraceFilter, label: str) -> list[dict[str, Any]]:
    """Per model, version and UTC day: traces, how many carry `label`, and its value counts and
    rates (or its mean, for a number)."""
    query = where.apply(select(Trace.model, Trace.model_version, Trace.created_at, Trace.outcome), team_id)
    groups: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"traces": 0, "values": defaultdict(int), "numbers": []})
    for model, version, created, outcome in session.execute(query.execution_options(yield_per=5000)):
        g = groups[(model, version or "", created.astimezone(UTC).date().isoformat())]
        g["traces"] += 1
        value = (outcome or {}).get(label)
        if isinstance(value, bool | str):
            g["values"][str(value).lower() if isinstance(value, bool) else value] += 1
        elif isinstance(value, int | float):
            g["numbers"].append(value)
    rows = []
    for (model, version, day), g in sorted(groups.items()):
        labelled = sum(g["values"].values()) + len(g["numbers"])
        rows.append({"model": model, "model_version": version or None, "day": day, "traces": g["traces"],
                     "labelled": labelled, "values": dict(g["values"]),
                     "rates": {k: v / labelled for k, v in g["values"].items()},
                     "mean": _mean(g["numbers"])})
    return rows

