"""Sharing one service fairly: a team's priorities order its own jobs only, the cluster is shared
between teams by live jobs, each team's first check never waits for other teams' checks, a job
Ray never got (the service stopped between recording and submitting) is queued again under the
same Ray id, and a job past its wall-clock limit is stopped."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from service.core.states import JobState
from service.core.store import Job, JobEvent, Team
from service.jobs import logic
from service.jobs.launcher import RayJobsLauncher
from service.jobs.scheduler import SUBMIT_GRACE_S, Scheduler, next_job, submission_id
from service.main import PROJECT_DIR
from tests.conftest import DIGITS
from tests.service.conftest import auth
from trainer.spec import parse_spec

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def queued(team: str, priority: int, minute: int, job_id: str) -> Job:
    return Job(id=job_id, team_id=team, priority=priority, state="queued", created_at=T0 + timedelta(minutes=minute))


def test_priority_orders_a_teams_own_jobs_and_the_cluster_is_shared_between_teams():
    jobs = [queued("a", 1000, 0, "a-urgent"), queued("a", 1000, 1, "a-urgent-2"), queued("a", 0, 2, "a-low"),
            queued("b", 0, 5, "b-first"), queued("b", 5, 6, "b-own-priority")]
    order = sorted(jobs, key=lambda j: (-j.priority, j.created_at))  # as the scheduler reads the queue
    quotas, live, started = {"a": 3, "b": 3}, {}, []
    while (job := next_job(order, live, quotas, T0)) is not None:
        order.remove(job)
        live[job.team_id] = live.get(job.team_id, 0) + 1
        started.append(job.id)
    # a's priority 1000 does not jump b's queue: the teams alternate; b's own priority orders b's jobs.
    assert started == ["a-urgent", "b-own-priority", "a-urgent-2", "b-first", "a-low"]
    assert next_job([queued("a", 0, 0, "x")], {"a": 3}, quotas, T0) is None  # at its quota
    waiting = queued("a", 0, 0, "y")
    waiting.not_before = T0 + timedelta(seconds=5)
    assert next_job([waiting], {}, quotas, T0) is None  # in its restart backoff


@pytest.mark.one_store
def test_two_teams_slow_checks_do_not_hold_a_third_teams_validation(app, client, teams, tiny_model):
    app.state.checks._shared = __import__("asyncio").Semaphore(2)
    slow = {"name": "slow", "model": {"path": str(tiny_model)},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
            "rewards": [{"import_path": "tests.fixtures.slow_import_reward:score"}]}
    quick = {**slow, "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}]}
    keys = {team: teams.key(team)[0] for team in ("a", "b", "c")}
    finished: dict[str, float] = {}
    start = time.monotonic()

    def validate(name: str, team: str, spec: dict) -> None:
        r = client.post("/v1/jobs:validate", json=spec, headers=auth(keys[team]))
        assert r.status_code == 200, r.text
        finished[name] = time.monotonic() - start

    threads = [threading.Thread(target=validate, args=(f"{t}{i}", t, slow)) for t in "ab" for i in (1, 2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    validate("c", "c", quick)
    for t in threads:
        t.join()
    assert finished["c"] < min(v for k, v in finished.items() if k != "c"), finished


@pytest.mark.one_store
def test_a_job_ray_never_got_is_queued_again_under_the_same_id_and_a_long_one_is_stopped(
        app, client, teams, tiny_model, ray_head):
    teams.key("alice")
    spec = parse_spec({"name": "crash", "model": {"path": str(tiny_model)},
                       "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
                       "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}],
                       "schedule": {"steps": 50, "max_wall_clock_s": 60}})
    launcher = RayJobsLauncher(ray_head, PROJECT_DIR)
    settings = app.state.settings.model_copy(update={"max_running_jobs": 1})
    scheduler = Scheduler(teams.sessions, launcher, settings)
    with teams.sessions() as s:
        team = s.query(Team).filter_by(name="alice").one()
        crashed, legacy = (logic.create_job(s, team, spec, str(settings.runs_dir))[0] for _ in range(2))
        # The service recorded the launch, then stopped before Ray was asked; an older store's
        # job was left starting with no Ray id at all.
        for job in (crashed, legacy):
            logic.transition(s, job, JobState.starting, "submitted to Ray")
        crashed.ray_job_id = submission_id(crashed)
        s.commit()
        ids = crashed.id, legacy.id
    scheduler.reconcile()  # within the grace a submission may take: left alone
    with teams.sessions() as s:
        assert [s.get(Job, i).state for i in ids] == ["starting", "starting"]
        for event in s.query(JobEvent).filter(JobEvent.job_id.in_(ids), JobEvent.kind == "starting"):
            event.created_at -= timedelta(seconds=SUBMIT_GRACE_S + 1)
        s.commit()
    assert launcher.status(ids[0]).state == "MISSING"
    scheduler.reconcile()
    with teams.sessions() as s:
        assert [s.get(Job, i).state for i in ids] == ["queued", "queued"]
    scheduler.start_queued()  # one at a time: the crashed job, the older of the two
    try:
        assert launcher.status(ids[0]).state in ("PENDING", "RUNNING")  # submitted under its own id
        assert launcher.submit(ids[0], {"output_dir": str(settings.runs_dir / "x")}, "http://127.0.0.1:1",
                               "fwj_x", ids[0]) == ids[0]  # submitted again: adopted, not a second run
        with teams.sessions() as s:
            job = s.get(Job, ids[0])
            job.started_at = datetime.now(UTC) - timedelta(seconds=61)
            s.commit()
        scheduler.reconcile()
        with teams.sessions() as s:
            job = s.get(Job, ids[0])
            assert job.state == "failed" and "wall-clock limit of 60 s" in job.error
        deadline = time.monotonic() + 30
        while launcher.status(ids[0]).state not in ("STOPPED", "FAILED", "SUCCEEDED"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        launcher.stop(ids[0])


@pytest.mark.one_store
def test_a_teams_queue_is_capped_and_its_positions_are_its_own(client, teams, tiny_model):
    keys = {team: teams.key(team)[0] for team in ("a", "b")}
    spec = {"name": "waits", "model": {"path": str(tiny_model)},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
            "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}]}
    with teams.sessions() as s:
        a, b = (s.query(Team).filter_by(name=n).one() for n in ("a", "b"))
        a.max_queued_jobs = 3
        for _ in range(3):
            logic.create_job(s, a, parse_spec(spec), "runs")
        s.commit()
        mine = logic.create_job(s, b, parse_spec(spec), "runs")[0].id
    refused = client.post("/v1/jobs", json=spec, headers=auth(keys["a"]))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_queued"
    assert "MAX_QUEUED_JOBS_PER_TEAM" in refused.json()["error"]["message"]
    # b's first job is first in b's queue: a's three waiting jobs are not counted, nor shown.
    assert client.get(f"/v1/jobs/{mine}", headers=auth(keys["b"])).json()["queue_position"] == 1
    assert [j["queue_position"] for j in client.get("/v1/jobs", headers=auth(keys["a"])).json()["jobs"]] == [3, 2, 1]
