"""`/v1/jobs`: create, validate, list, get, cancel, and each job's events, metrics, checkpoints."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from service.api.deps import ChecksDep, JobDep, SessionDep, TeamDep, bearer, owned_job
from service.api.schemas import JobOut, JobPage, TracesSnapshot
from service.core.auth import hash_secret
from service.core.errors import ApiError
from service.core.states import JobState
from service.core.store import Job, JobCheckpoint, JobEvent, JobMetric
from service.jobs import logic
from service.traces import snapshot
from trainer.spec import parse_spec
from trainer.spec.checks import PreflightRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
STREAM_POLL_S = 0.5


def job_out(session, job: Job, positions: dict[str, int] | None = None) -> JobOut:
    position = positions.get(job.id) if positions is not None else logic.queue_position(session, job)
    return JobOut(id=job.id, name=job.name, state=job.state, priority=job.priority,
                  queue_position=position, step=job.step, steps=job.steps,
                  progress=job.step / job.steps if job.steps else 0.0, latest_metrics=job.latest_metrics,
                  result=job.result,
                  wandb=job.wandb, run_dir=job.run_dir, error=job.error, created_at=job.created_at,
                  traces=TracesSnapshot(sha256=job.traces_sha256, count=job.traces_count or 0)
                  if job.traces_sha256 else None,
                  started_at=job.started_at, finished_at=job.finished_at)


SpecBody = Annotated[dict[str, Any], Body(description="a job spec (trainer/spec/job.py)")]
INT64 = 2**63 - 1
"""Bound on every integer the store keeps or compares (SQLite and Postgres BIGINT)."""
Priority = Annotated[int, Query(ge=-1000, le=1000, description="higher runs first among the team's own jobs")]
Cursor = Annotated[int, Query(ge=0, le=INT64)]
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                                              description="printable ASCII, up to 200 characters")]


@router.post("", status_code=201, response_model=JobOut)
async def create(request: Request, response: Response, session: SessionDep, team: TeamDep, checks: ChecksDep,
                 spec: SpecBody, priority: Priority = 0, idempotency_key: IdempotencyKey = None) -> JobOut:
    """Validate the spec (its schema here, its code and data on the cluster), persist it, queue it."""
    settings = request.app.state.settings
    checks.admit(team.id, settings.check_timeout_s)
    valid = parse_spec(spec)
    replay = await run_in_threadpool(logic.replay, session, team, valid, priority, idempotency_key)
    if replay is not None:
        response.status_code = 200
        return await run_in_threadpool(job_out, session, replay)
    await run_in_threadpool(request.app.state.launcher.fits, valid)  # 422 where the cluster could never hold it
    await run_in_threadpool(logic.check_queue_room, session, team, settings.max_queued_jobs_per_team)
    # A selection of the team's traces is frozen now, so the checks read the data the job trains on.
    frozen = await run_in_threadpool(snapshot.freeze, session, team.id, valid, settings.runs_dir)
    roots = request.app.state.data_roots + ([str(snapshot.folder(settings.runs_dir))] if frozen else [])
    checked = snapshot.attach(valid.model_dump(mode="json"), frozen.path if frozen else None)
    await checks.run(PreflightRequest(spec=checked, data_roots=roots),
                     settings.check_timeout_s, team.id)
    job, created = await run_in_threadpool(logic.create_job, session, team, valid, str(settings.runs_dir),
                                           priority, idempotency_key, frozen)
    if not created:
        response.status_code = 200
    return await run_in_threadpool(job_out, session, job)


@router.post(":validate")
async def validate(request: Request, team: TeamDep, checks: ChecksDep, spec: SpecBody,
                   dry_run: Annotated[int, Query(ge=0, le=64, description="tasks to roll out and score; "
                                                 "0: checks only")] = 0) -> dict[str, Any]:
    """Check a spec without launching anything. With `dry_run=N`, also roll N sampled tasks out
    with the base model (group_size each), score them with every reward module, and report the
    reward distribution per component, failures and timeouts, and the share of tied groups.
    Everything but the schema runs on the cluster."""
    settings = request.app.state.settings
    checks.admit(team.id, settings.dry_run_timeout_s if dry_run else settings.check_timeout_s)
    valid = parse_spec(spec)
    await run_in_threadpool(request.app.state.launcher.fits, valid)  # 422 where the cluster could never hold it
    result = await checks.run(PreflightRequest(spec=valid.model_dump(mode="json"), dry_run=dry_run,
                                               data_roots=request.app.state.data_roots),
                              settings.dry_run_timeout_s if dry_run else settings.check_timeout_s, team.id)
    return {"valid": True, "spec": valid.model_dump(mode="json"), **result}


@router.get("", response_model=JobPage)
def list_jobs(session: SessionDep, team: TeamDep, state: JobState | None = None, name: str | None = None,
              offset: Cursor = 0, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> JobPage:
    query = select(Job).where(Job.team_id == team.id)
    if state is not None:
        query = query.where(Job.state == state)
    if name is not None:
        query = query.where(Job.name == name)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(Job.created_at.desc()).offset(offset).limit(limit)).all()
    positions = logic.queue_positions(session, team.id) if any(j.state == JobState.queued for j in rows) else {}
    return JobPage(jobs=[job_out(session, j, positions) for j in rows], total=total, offset=offset, limit=limit)


@router.get("/{job_id}", response_model=JobOut)
def get(session: SessionDep, job: JobDep) -> JobOut:
    return job_out(session, job)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(request: Request, session: SessionDep, job: JobDep) -> JobOut:
    if job.ray_job_id and job.state in (JobState.starting, JobState.running):
        request.app.state.launcher.stop(job.ray_job_id)
    logic.transition(session, job, JobState.cancelled, "cancelled by the team")
    session.commit()
    return job_out(session, job)


def _event_rows(session, job_id: str, after_id: int, limit: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
                           .order_by(JobEvent.id).limit(limit)).all()
    return [{"id": e.id, "seq": e.seq, "kind": e.kind, "message": e.message, "data": e.data,
             "created_at": e.created_at.isoformat()} for e in rows]


class StreamSlots:
    """Open event streams, bounded per API key and overall: each holds a response open and polls
    the store twice a second (from a worker thread, a connection only for the poll's length)."""

    def __init__(self, total: int, per_key: int):
        self.total, self.per_key = total, per_key
        self.open: dict[str, int] = {}

    def take(self, key: str) -> None:
        mine, everyone = self.open.get(key, 0), sum(self.open.values())
        if mine >= self.per_key or everyone >= self.total:
            limit = (f"this API key already follows {mine} event streams, the limit per key "
                     "(FLYWHEEL_MAX_EVENT_STREAMS_PER_KEY)" if mine >= self.per_key else
                     f"the service already serves {everyone} event streams, its limit (FLYWHEEL_MAX_EVENT_STREAMS)")
            raise ApiError(429, "too_many_streams", f"{limit}; close one, or page with `after` instead", None,
                           headers={"Retry-After": "5"})
        self.open[key] = mine + 1

    def give_back(self, key: str) -> None:
        self.open[key] -= 1
        if not self.open[key]:
            del self.open[key]


def _stream_poll(sessions, job_id: str, cursor: int) -> tuple[list[dict[str, Any]], bool]:
    with sessions() as s:
        rows = _event_rows(s, job_id, cursor, 500)
        return rows, JobState(s.get(Job, job_id).state).terminal


@router.get("/{job_id}/events")
async def events(request: Request, job_id: str, after: Cursor = 0,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 accept: Annotated[str | None, Header()] = None,
                 last_event_id: Annotated[str | None, Header()] = None,
                 authorization: Annotated[str | None, Header()] = None):
    """Paged JSON by default; server-sent events with `Accept: text/event-stream` (resumable
    with `Last-Event-ID`), ending once the job is finished and every event was sent. A stream
    holds no store connection between its polls; streams are bounded per API key and overall
    (429 beyond)."""
    sessions = request.app.state.sessions

    def lookup() -> list[dict[str, Any]] | None:
        with sessions() as s:  # closed before the stream starts: a long stream holds no connection
            owned_job(job_id, s, authorization)
            return None if streaming else _event_rows(s, job_id, after, limit)

    streaming = bool(accept and "text/event-stream" in accept)
    rows = await run_in_threadpool(lookup)
    if not streaming:
        return {"events": rows, "next_after": rows[-1]["id"] if rows else after}
    cursor = int(last_event_id) if last_event_id and last_event_id.isdigit() and len(last_event_id) < 19 else after
    slots, key = request.app.state.streams, hash_secret(bearer(authorization))
    slots.take(key)

    async def stream():
        nonlocal cursor
        try:
            while True:
                rows, finished = await asyncio.to_thread(_stream_poll, sessions, job_id, cursor)
                for row in rows:
                    cursor = row["id"]
                    yield f"id: {row['id']}\nevent: {row['kind']}\ndata: {json.dumps(row)}\n\n"
                if (not rows and finished) or await request.is_disconnected():
                    return
                await asyncio.sleep(STREAM_POLL_S)
        finally:
            slots.give_back(key)

    return StreamingResponse(stream(), media_type="text/event-stream")


@router.get("/{job_id}/metrics")
def metrics(session: SessionDep, job: JobDep, after_step: Cursor = 0,
            limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> dict[str, Any]:
    rows = session.scalars(select(JobMetric).where(JobMetric.job_id == job.id, JobMetric.step > after_step)
                           .order_by(JobMetric.step).limit(limit)).all()
    return {"metrics": [{"step": m.step, "values": m.values} for m in rows]}


@router.get("/{job_id}/checkpoints")
def checkpoints(session: SessionDep, job: JobDep) -> dict[str, Any]:
    rows = session.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job.id)
                           .order_by(JobCheckpoint.step)).all()
    return {"checkpoints": [{"step": c.step, "path": c.path, "created_at": c.created_at.isoformat()} for c in rows]}
