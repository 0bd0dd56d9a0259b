"""Where trainers report back, with their job's own token. Each report carries a sequence
number; a retried report is acknowledged and stored once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select

from service.api.deps import ReportingJobDep, SessionDep
from service.core.store import JobEvent
from service.jobs import logic
from trainer.spec.reports import Report

router = APIRouter(prefix="/v1/jobs/{job_id}/report", tags=["reporting"])


@router.post("")
def report(body: Report, session: SessionDep, job: ReportingJobDep) -> dict[str, Any]:
    stored = logic.record_report(session, job, body)
    return {"stored": stored, "seq": body.seq}


@router.get("")
def last_seq(session: SessionDep, job: ReportingJobDep) -> dict[str, int]:
    """The highest sequence number stored, so a restarted trainer continues after it, and the
    last step stored, so a run resumed from an earlier checkpoint does not report again the
    steps it replays."""
    top = session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job.id))
    return {"last_seq": max(top or 0, 0), "last_step": job.step}
