"""Job logic shared by the routes, the scheduler and the reporting endpoint: creation, state
changes (checked in `service.core.states`), queue positions, recording reports."""

from __future__ import annotations

import logging

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.errors import ApiError
from service.core.states import LIVE, JobState, check_transition
from service.core.store import Job, JobCheckpoint, JobEvent, JobMetric, Team, new_id, now
from service.models import registry
from service.traces import snapshot
from trainer.spec import JobSpec
from trainer.spec.reports import (
    CheckpointReport,
    EvaluationReport,
    FinishedReport,
    Report,
    StartedReport,
    StepReport,
)

log = logging.getLogger("flywheel.jobs")

def _same_request(job: Job, spec: JobSpec, priority: int) -> bool:
    def as_sent(s: dict) -> dict:  # the stored spec has the job's run folder
        return {k: v for k, v in s.items() if k != "output_dir"}

    return as_sent(job.spec) == as_sent(spec.model_dump(mode="json")) and job.priority == priority


def launch_spec(job: Job) -> dict:
    """The spec the job's trainer runs: as stored, with the trace snapshot it was frozen into."""
    return snapshot.attach(job.spec, job.traces_snapshot)


def replay(session: Session, team: Team, spec: JobSpec, priority: int, idempotency_key: str | None) -> Job | None:
    """The job this team created with this Idempotency-Key, for the same request (another request
    with the key is a 422); None when the key is new."""
    if not idempotency_key:
        return None
    existing = session.scalar(select(Job).where(Job.team_id == team.id, Job.idempotency_key == idempotency_key))
    return _replay(existing, spec, priority)[0] if existing is not None else None


def _replay(existing: Job, spec: JobSpec, priority: int) -> tuple[Job, bool]:
    # As the IETF idempotency-key draft has it: the same key with another payload is an error,
    # not a silent answer about the first request.
    if not _same_request(existing, spec, priority):
        raise ApiError(422, "idempotency_key_reused", f"this Idempotency-Key was used for job {existing.id} with a "
                       "different request body; send a new key for a new job", "Idempotency-Key")
    return existing, False


def create_job(session: Session, team: Team, spec: JobSpec, runs_dir: str, priority: int = 0,
               idempotency_key: str | None = None, traces: snapshot.Frozen | None = None) -> tuple[Job, bool]:
    """Persist a queued job; with an Idempotency-Key already used by this team for the same
    request, return that job (for another request, a 422). `traces`: the trace snapshot the job's
    selection was frozen into."""
    if idempotency_key:
        existing = session.scalar(select(Job).where(Job.team_id == team.id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _replay(existing, spec, priority)
    job_id = new_id("job")
    spec = spec.model_copy(update={"output_dir": f"{runs_dir}/{job_id}"})
    job = Job(id=job_id, team_id=team.id, name=spec.name, state=JobState.queued, priority=priority,
              spec=spec.model_dump(mode="json"), idempotency_key=idempotency_key, steps=spec.schedule.steps,
              run_dir=str(spec.run_dir), traces_sha256=traces.sha256 if traces else None,
              traces_count=traces.count if traces else None, traces_snapshot=traces.path if traces else None)
    session.add(job)
    add_event(session, job, "queued", f"job {job.name!r} queued")
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        session.rollback()
        existing = session.scalar(select(Job).where(Job.team_id == team.id, Job.idempotency_key == idempotency_key))
        return _replay(existing, spec, priority)
    return job, True


def next_service_seq(session: Session, job: Job) -> int:
    # Service-written events take negative sequence numbers, so they never collide with the
    # trainer's own (positive, its retries deduplicated by the unique constraint).
    lowest = session.scalar(select(func.min(JobEvent.seq)).where(JobEvent.job_id == job.id))
    return min(lowest or 0, 0) - 1


def add_event(session: Session, job: Job, kind: str, message: str, data: dict | None = None) -> None:
    session.flush()
    session.add(JobEvent(job_id=job.id, seq=next_service_seq(session, job), kind=kind, message=message, data=data))


def transition(session: Session, job: Job, target: JobState, message: str = "", error: str | None = None) -> None:
    """Move a job to `target` (checked), stamp the times, and record an event."""
    check_transition(job.state, target)
    log.log(logging.WARNING if target == JobState.failed else logging.INFO, "job %s (team %s): %s -> %s: %s",
            job.id, job.team_id, JobState(job.state).value, target.value,
            message or error or "")
    job.state = target
    if target == JobState.running and job.started_at is None:
        job.started_at = now()
    if target.terminal:
        job.finished_at = now()
    if error is not None:
        job.error = error
    add_event(session, job, target.value, message or f"job {target.value}")
    if target == JobState.succeeded:
        model = registry.register(session, job)
        if model is not None:
            add_event(session, job, "registered", f"model {model.id} registered", {"model": model.id})
        registry.record_evaluation(session, job)


def queue_position(session: Session, job: Job) -> int | None:
    """1 for the team's next job to start, by its own priorities then age; None once started.
    Among the team's own queued jobs only: other teams' queues are theirs (and the scheduler
    shares the cluster between teams, so a global place in line would not hold anyway)."""
    if job.state != JobState.queued:
        return None
    ahead = session.scalar(select(func.count()).select_from(Job).where(
        Job.team_id == job.team_id, Job.state == JobState.queued,
        or_(Job.priority > job.priority, (Job.priority == job.priority) & (Job.created_at < job.created_at)),
    ))
    return ahead + 1


def queue_positions(session: Session, team_id: str) -> dict[str, int]:
    """Every queued job's position in its team's queue, in one query (for listings)."""
    ids = session.scalars(select(Job.id).where(Job.team_id == team_id, Job.state == JobState.queued)
                          .order_by(Job.priority.desc(), Job.created_at)).all()
    return {job_id: i + 1 for i, job_id in enumerate(ids)}


def check_queue_room(session: Session, team: Team, default_cap: int) -> None:
    """429 when the team already has as many jobs waiting as it may."""
    cap = team.max_queued_jobs if team.max_queued_jobs is not None else default_cap
    waiting = session.scalar(select(func.count()).select_from(Job).where(Job.team_id == team.id,
                                                                        Job.state == JobState.queued))
    if waiting >= cap:
        raise ApiError(429, "too_many_queued", f"this team already has {waiting} jobs waiting, its limit "
                       "(FLYWHEEL_MAX_QUEUED_JOBS_PER_TEAM, or the team's own max_queued_jobs); submit more "
                       "when some have started", None, headers={"Retry-After": "60"})


def live_count(session: Session, team_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.team_id == team_id, Job.state.in_([s.value for s in LIVE])))


def record_report(session: Session, job: Job, report: Report) -> bool:
    """Store one trainer report; False when its sequence number was stored already (a retry)."""
    if session.scalar(select(JobEvent.id).where(JobEvent.job_id == job.id, JobEvent.seq == report.seq)) is not None:
        return False
    files = None
    if isinstance(report, FinishedReport) and report.data is not None and report.data.export_dir:
        try:  # hashed before anything is written: no store lock is held meanwhile
            files = registry.export_files(job.run_dir, report.data.export_dir)
        except registry.ExportRefused as exc:
            raise ApiError(422, "export_refused", f"data.export_dir: {exc}", "data.export_dir") from None
    data = report.model_dump(mode="json")["data"]
    session.add(JobEvent(job_id=job.id, seq=report.seq, kind=report.kind, message=report.message, data=data))
    match report:
        case StartedReport():
            if job.state == JobState.starting:
                transition(session, job, JobState.running, "trainer started")
                job.wandb = report.data.wandb if report.data else None
        case StepReport():
            job.step = report.data.step
            job.latest_metrics = report.data.metrics
            session.add(JobMetric(job_id=job.id, step=job.step, values=report.data.metrics))
        case EvaluationReport():
            # A new dict, so the JSON column sees the change.
            job.result = {**(job.result or {}),
                          report.data.phase: {"step": report.data.step, "metrics": report.data.metrics}}
        case CheckpointReport():
            session.add(JobCheckpoint(job_id=job.id, step=report.data.step, path=report.data.path))
        case FinishedReport():
            if report.data is not None:
                job.wandb = report.data.wandb or job.wandb
                job.export_dir = report.data.export_dir
                job.export_files = files
    try:
        session.commit()
    except IntegrityError:  # a concurrent retry of the same report
        session.rollback()
        return False
    return True
