"""The peer of `bench/service_load.py`: the same two reads as the service's `GET /v1/jobs/{id}` and
`GET /v1/jobs?limit=20`, with the same queries on the same store (the key by its hash, the team,
the job, its queue position; the page, its total), in bare FastAPI routes: no middleware, no dependencies, no
response models. What it serves per second is the framework's own limit on the machine.

    FLYWHEEL_DATABASE_URL=sqlite:///runs/load.db uvicorn bare_app:create_app --factory --app-dir bench
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from service.core.auth import hash_secret
from service.core.store import ApiKey, Job, Team, make_engine, session_factory
from service.jobs import logic


def _row(job: Job, position: int | None) -> dict:
    return {"id": job.id, "name": job.name, "state": job.state, "priority": job.priority, "queue_position": position,
            "step": job.step, "steps": job.steps, "created_at": job.created_at.isoformat()}


def create_app() -> FastAPI:
    sessions = session_factory(make_engine(os.environ["FLYWHEEL_DATABASE_URL"]))
    app = FastAPI()

    def team_of(session, authorization: str | None) -> Team | None:
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret((authorization or "")[7:])))
        return session.get(Team, key.team_id) if key is not None else None

    @app.get("/v1/jobs/{job_id}")
    def get(job_id: str, authorization: str | None = Header(None)):
        with sessions() as session:
            team = team_of(session, authorization)
            job = session.get(Job, job_id)
            if team is None or job is None or job.team_id != team.id:
                return JSONResponse({"error": "not found"}, status_code=404)
            return _row(job, logic.queue_position(session, job))

    @app.get("/v1/jobs")
    def list_jobs(limit: int = 50, authorization: str | None = Header(None)):
        with sessions() as session:
            team = team_of(session, authorization)
            if team is None:
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            query = select(Job).where(Job.team_id == team.id)
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(query.order_by(Job.created_at.desc()).limit(limit)).all()
            positions = logic.queue_positions(session)
            return {"jobs": [_row(j, positions.get(j.id)) for j in rows], "total": total}

    return app
