"""`/v1/traces`: production conversations and their outcomes — ingest in batches (idempotent by
trace id), outcomes that arrive later, filtered reads with a cursor, and outcome rates by model
version and day."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BeforeValidator, Field

from environments.snapshot import UtcTime
from service.api.deps import KeyDep, SessionDep, TeamDep
from service.api.trace_schemas import (
    TRACE_ID,
    IngestOut,
    OutcomeChange,
    OutcomeIn,
    TraceBatch,
    TraceOut,
    TracePage,
    TraceStats,
)
from service.core.errors import ApiError
from service.core.store import Team, Trace
from service.traces import logic

router = APIRouter(prefix="/v1/traces", tags=["traces"])

TraceId = Annotated[str, Path(min_length=1, max_length=200, pattern=TRACE_ID)]
Labels = Annotated[list[Annotated[str, Field(max_length=300, pattern=r"^[^:]+(:[\s\S]+)?$")]] | None,
                   Query(description="KEY:VALUE (repeatable; a bare VALUE is the `outcome` label); true/false and "
                                     "numbers match JSON ones")]


def _iso(value: object) -> object:
    """A query time is an ISO 8601 string (`2026-11-28T10:00:00Z`), not the seconds pydantic would also take."""
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected an ISO 8601 date-time with a time zone, such as 2026-11-28T10:00:00Z")
    return value


def _strict_bool(value: object) -> object:
    """A query flag is `true` or `false`, not the `0`/`yes`/`on` pydantic would also take."""
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("expected true or false")
    return value


Time = Annotated[UtcTime, BeforeValidator(_iso)]
Flag = Annotated[bool, BeforeValidator(_strict_bool)]


def trace_out(t: Trace) -> TraceOut:
    return TraceOut(trace_id=t.trace_id, model=t.model, model_version=t.model_version, messages=t.messages,
                    outcome=t.outcome, metadata=t.meta, created_at=t.created_at, received_at=t.received_at,
                    outcome_at=t.outcome_at)


def trace_filter(model: Annotated[str | None, Query(max_length=200)] = None,
                 model_version: Annotated[str | None, Query(max_length=100)] = None,
                 outcome: Labels = None, pending: Flag | None = None,
                 since: Time | None = None, until: Time | None = None) -> logic.TraceFilter:
    return logic.TraceFilter(model=model, model_version=model_version, outcome=tuple(outcome or ()), pending=pending,
                             since=since, until=until)


Filter = Annotated[logic.TraceFilter, Depends(trace_filter)]


@router.post("", status_code=201, response_model=IngestOut, responses={
    200: {"model": IngestOut, "description": "nothing new was stored: every trace was a duplicate"}})
def ingest(request: Request, response: Response, session: SessionDep, team: TeamDep, batch: TraceBatch) -> IngestOut:
    """Store a batch of traces, all or none: a batch with one bad trace writes nothing, and the
    error names the field. A trace id already stored is a duplicate, not an error (retries are
    safe); 200 instead of 201 when nothing new was stored. The same id with a different body is a
    409 naming it; a batch that would take the team past its storage quota is a 413."""
    settings = request.app.state.settings
    if len(batch.traces) > settings.max_trace_batch:
        raise ApiError(413, "batch_too_large", f"traces: {len(batch.traces)} traces in one batch, the limit is "
                                               f"{settings.max_trace_batch} (FLYWHEEL_MAX_TRACE_BATCH)", "traces")
    problems = []
    for i, trace in enumerate(batch.traces):
        size = len(trace.model_dump_json(exclude_none=True))
        if size > settings.max_trace_bytes:
            raise ApiError(413, "trace_too_large", f"traces.{i}: {size:,} bytes, the limit for one trace is "
                                                   f"{settings.max_trace_bytes:,} (FLYWHEEL_MAX_TRACE_BYTES)",
                           f"traces.{i}")
        problems += logic.trace_problems(trace, f"traces.{i}")
    if problems:
        raise ApiError(422, "invalid_trace", f"{problems[0]['field']}: {problems[0]['message']}",
                       problems[0]["field"], errors=problems)
    quota = team.max_trace_bytes if team.max_trace_bytes is not None else settings.max_trace_bytes_per_team
    duplicates = logic.ingest(session, team.id, batch.traces, quota)
    stored = len(batch.traces) - len(duplicates)
    if not stored:
        response.status_code = 200
    return IngestOut(received=len(batch.traces), stored=stored, duplicates=duplicates)


@router.get("", response_model=TracePage)
def list_traces(session: SessionDep, team: TeamDep, where: Filter,
                cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+=*$")] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> TracePage:
    rows, next_cursor = logic.page(session, team.id, where, cursor, limit)
    return TracePage(traces=[trace_out(t) for t in rows], next_cursor=next_cursor)


@router.get("/stats", response_model=TraceStats)
def stats(session: SessionDep, team: TeamDep, where: Filter,
          label: Annotated[str, Query(min_length=1, max_length=100)] = "outcome") -> TraceStats:
    """The production dashboard: per model, version and UTC day, the traces and the rates of each
    value of `label` among those that have it."""
    return TraceStats(label=label, rows=logic.stats(session, team.id, where, label))


@router.get("/{trace_id}", response_model=TraceOut)
def get(session: SessionDep, team: TeamDep, trace_id: TraceId) -> TraceOut:
    """One trace, with the history of its outcome."""
    trace = logic.owned_trace(session, team.id, trace_id)
    history = [OutcomeChange(old=c.old, new=c.new, by=c.key_prefix, at=c.changed_at)
               for c in logic.outcome_history(session, trace)]
    return trace_out(trace).model_copy(update={"outcome_history": history})


@router.post("/{trace_id}/outcome", response_model=TraceOut)
def outcome(request: Request, session: SessionDep, key: KeyDep, trace_id: TraceId, body: OutcomeIn) -> TraceOut:
    """Report (or correct) a trace's outcome once it is known: merged into its labels, or with
    `replace` instead of them. Every change is kept in the trace's `outcome_history`."""
    trace = logic.owned_trace(session, key.team_id, trace_id)
    team = session.get(Team, key.team_id)
    quota = team.max_trace_bytes if team.max_trace_bytes is not None else \
        request.app.state.settings.max_trace_bytes_per_team
    return trace_out(logic.set_outcome(session, trace, body.outcome, body.replace, key.prefix, quota))
