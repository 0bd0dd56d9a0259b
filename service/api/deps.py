"""Request dependencies: a store session, the calling team (bearer API key), a job it owns, and
the cluster-side checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.auth import hash_secret
from service.core.errors import ApiError, not_found
from service.core.store import ApiKey, Job, Team
from service.jobs.checks import ClusterChecks


async def get_session(request: Request) -> AsyncIterator[Session]:
    # Opening a session does no I/O, so it needs no worker thread; the queries run in the sync
    # dependencies and routes, which FastAPI runs in its thread pool.
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def bearer(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "unauthorized", "missing bearer token: send `Authorization: Bearer <key>`",
                       "Authorization")
    return authorization.split(" ", 1)[1].strip()


def current_key(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> ApiKey:
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(bearer(authorization))))
    if key is None or key.revoked:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", "Authorization")
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]


def current_team(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Team:
    return session.get(Team, current_key(session, authorization).team_id)


TeamDep = Annotated[Team, Depends(current_team)]


def owned_job(job_id: str, session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Job:
    # The team is looked up here rather than as a dependency of its own: one trip to the request
    # thread pool for both, not two.
    team = current_team(session, authorization)
    job = session.get(Job, job_id)
    # Another team's job is indistinguishable from a missing one.
    if job is None or job.team_id != team.id:
        raise not_found(f"job {job_id!r}")
    return job


JobDep = Annotated[Job, Depends(owned_job)]


def reporting_job(job_id: str, session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Job:
    """The job a trainer reports for, authorised by that job's own token."""
    job = session.get(Job, job_id)
    if job is None or job.report_token_hash != hash_secret(bearer(authorization)):
        raise ApiError(401, "unauthorized", "invalid job token", "Authorization")
    return job


ReportingJobDep = Annotated[Job, Depends(reporting_job)]


def cluster_checks(request: Request) -> ClusterChecks:
    return request.app.state.checks


ChecksDep = Annotated[ClusterChecks, Depends(cluster_checks)]
