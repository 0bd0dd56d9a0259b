"""A real service on a real store (SQLite file, or Postgres with FLYWHEEL_TEST_DATABASE_URL),
driven over HTTP with FastAPI's TestClient; launching is off, so jobs stay queued, but a spec's
checks run for real on a Ray head shared by the service tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import create_engine, select, text

from service.core.auth import new_api_key
from service.core.config import Settings
from service.core.states import JobState
from service.core.store import ApiKey, Job, Team, make_engine, migrate, session_factory
from service.jobs import logic
from service.main import create_app
from tests.conftest import ROOT
from trainer.spec import parse_spec
from trainer.spec.reports import Report

PG_URL = os.environ.get("FLYWHEEL_TEST_DATABASE_URL")
STORES = ["sqlite"] + (["postgres"] if PG_URL else [])
CANARY_DATABASE_URL = "postgresql://canary:must-not-leak@127.0.0.1:1/secret"
"""In the environment of the process that starts the shared Ray head, as the database URL is in
`flywheel serve`'s: nothing on the cluster may see it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head on loopback, started as the service starts its own (its processes are its own:
    stopping it leaves the integration tests' in-process Ray alone, and that one is shut down
    here only so that two clusters do not share these two cores)."""
    import ray

    from service.jobs.launcher import LocalRayHead

    ray.shutdown()  # the integration tests' in-process Ray
    head = LocalRayHead(free_port())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLYWHEEL_DATABASE_URL", CANARY_DATABASE_URL)
        head.start()
    yield head.address
    head.stop(grace_s=2)  # the end of the session: nothing of it is needed any more


def _fresh_postgres() -> str:
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return PG_URL


def pytest_generate_tests(metafunc):
    """Every test on a store runs on SQLite and, in CI, on PostgreSQL too; a test marked
    `one_store` (a refusal that happens before the store is touched) runs on SQLite alone."""
    if "database_url" in metafunc.fixturenames:
        one = metafunc.definition.get_closest_marker("one_store") is not None
        metafunc.parametrize("database_url", ["sqlite"] if one else STORES, indirect=True)


@pytest.fixture
def database_url(request, tmp_path) -> str:
    return _fresh_postgres() if request.param == "postgres" else f"sqlite:///{tmp_path / 'flywheel.db'}"


@pytest.fixture
def app(database_url, tmp_path, ray_head):
    return create_app(Settings(database_url=database_url, launch=False, runs_dir=tmp_path / "runs",
                               ray_address=ray_head))


@pytest.fixture
def settings(ray_head, tmp_path) -> Settings:
    """A launching service's settings on the shared Ray head (the end-to-end and fault tests)."""
    return Settings(database_url=f"sqlite:///{tmp_path / 'fw.db'}", port=free_port(), ray_address=ray_head,
                    runs_dir=tmp_path / "runs", scheduler_interval_s=0.5)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


class Teams:
    """Creates teams and keys straight in the store, as `flywheel admin` does."""

    def __init__(self, url: str):
        migrate(url)
        self.sessions = session_factory(make_engine(url))

    def key(self, team_name: str, quota: int = 2) -> tuple[str, str]:
        with self.sessions() as s:
            team = s.query(Team).filter_by(name=team_name).one_or_none()
            if team is None:
                team = Team(name=team_name, max_concurrent_jobs=quota)
                s.add(team)
                s.flush()
            key, key_hash, prefix = new_api_key()
            record = ApiKey(team_id=team.id, key_hash=key_hash, prefix=prefix)
            s.add(record)
            s.commit()
            return key, record.id

    def revoke(self, key_id: str) -> None:
        with self.sessions() as s:
            s.get(ApiKey, key_id).revoked = True
            s.commit()


@pytest.fixture
def teams(database_url) -> Teams:
    return Teams(database_url)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout_s: float) -> None:
    """Until `url` answers 200, failing if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"{what} exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} did not become ready"
        time.sleep(0.2)


class ServiceProcess:
    """`flywheel serve` in its own process, on the shared Ray head, recording its modules on exit."""

    def __init__(self, tmp_path, ray_head, **settings):
        self.port, self.record = free_port(), tmp_path / "server-modules.json"
        self.database_url = f"sqlite:///{tmp_path / 'fw.db'}"
        self.key = Teams(self.database_url).key("alice")[0]
        env = {**os.environ, "FLYWHEEL_DATABASE_URL": self.database_url, "FLYWHEEL_LAUNCH": "false",
               "FLYWHEEL_RAY_ADDRESS": ray_head, "FLYWHEEL_RUNS_DIR": str(tmp_path / "runs"),
               "RECORD_MODULES": str(self.record), **{f"FLYWHEEL_{k.upper()}": str(v) for k, v in settings.items()}}
        self.proc = subprocess.Popen([sys.executable, "tests/service/serve_recording_modules.py", str(self.port)],
                                     env=env, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(f"{self.url}/readyz", self.proc, "the service", 60)
        self.client = httpx.Client(base_url=self.url, headers=auth(self.key), timeout=300)

    def stop(self) -> dict:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(60)
        return json.loads(self.record.read_text())


DESK = {"name": "support_desk", "config": {"train_size": 100, "eval_size": 50, "max_turns": 5}}


class Trainer:
    """Jobs taken through what a trainer reports and what the scheduler does when Ray says a job
    succeeded, straight on the store (launching is off in these tests)."""

    def __init__(self, teams, tmp_path):
        self.sessions, self.tmp = teams.sessions, tmp_path

    def finish(self, team_name: str, name: str, base: str, metrics: dict | None, env: dict = DESK,
               state: JobState = JobState.succeeded, export: Path | None = None, **spec) -> str:
        """A job of the team's that ran to `state`, reported `metrics` as its evaluation and
        exported `export` (by default a stand-in folder of two files)."""
        if export is None:
            export = self.tmp / name / "model"
            export.mkdir(parents=True)
            (export / "config.json").write_text("{}")
            (export / "model.safetensors").write_bytes(b"\0" * 1000)
        with self.sessions() as s:
            team = s.scalar(select(Team).where(Team.name == team_name))
            job_spec = parse_spec({"name": name, "model": {"path": base}, "environment": env,
                                   "rewards": [{"name": "resolution"}], **spec}).model_dump(mode="json")
            job = Job(team_id=team.id, name=name, state=JobState.running, spec=job_spec, steps=1,
                      run_dir=str(export.parent))  # the export lies in the job's run folder
            s.add(job)
            s.commit()
            if metrics is not None:
                record(s, job, {"seq": 1, "kind": "evaluation", "data": {"phase": "after", "step": 1, "metrics": metrics}})
            record(s, job, {"seq": 2, "kind": "finished", "data": {"export_dir": str(export)}})
            logic.transition(s, job, state, f"Ray reports the job {state.value}")
            s.commit()
            return job.id

    def run(self, job_id: str, metrics: dict | None, state: JobState = JobState.succeeded) -> None:
        """A queued job of the service's own (an evaluation job) run to `state`, exporting nothing."""
        with self.sessions() as s:
            job = s.get(Job, job_id)
            for step in (JobState.starting, JobState.running):
                logic.transition(s, job, step)
            if metrics is not None:
                record(s, job, {"seq": 1, "kind": "evaluation", "data": {"phase": "after", "step": 0, "metrics": metrics}})
            record(s, job, {"seq": 2, "kind": "finished", "data": {"export_dir": None}})
            logic.transition(s, job, state, f"Ray reports the job {state.value}")
            s.commit()


def record(session, job: Job, report: dict) -> None:
    """Store a trainer's report (as `POST /v1/jobs/{id}/report` parses it)."""
    logic.record_report(session, job, TypeAdapter(Report).validate_python(report))


def rates(resolved: float, violation: float) -> dict:
    return {"eval/resolved_rate": resolved, "eval/escalated_rate": 1 - resolved - violation,
            "eval/violation_rate": violation}
