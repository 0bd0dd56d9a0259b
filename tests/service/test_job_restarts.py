"""Fault drills: a rollout worker, then a learner rank, is killed (SIGKILL) in the middle of a job.
The trainer exits as the cluster's failure, the service queues the job again after its backoff,
and the trainer resumes from its last checkpoint: the job succeeds, the restart is an event with
its reason, and every step is reported exactly once, the trainer's sequence numbers unbroken."""

from __future__ import annotations

import os
import signal
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import ROOT
from tests.service.conftest import Teams, auth
from tests.service.test_service_e2e import Service, spec, wait_for

pytestmark = pytest.mark.slow
STEPS = 16


def kill_one(actor: str) -> int:
    """SIGKILL one of the job's actors of this class; its pid."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            title = (proc.info["cmdline"] or [""])[0]
            if title.startswith(f"ray::{actor}"):
                os.kill(proc.pid, signal.SIGKILL)
                return proc.pid
        time.sleep(0.2)
    raise AssertionError(f"no {actor} process found")


def paced(job_spec: dict) -> dict:
    """Steps of 0.4 s: an actor is killed while the job still has steps to run, not after it."""
    job_spec["rewards"] = [{"import_path": "tests.fixtures.trl_rewards:paced_digit_share"}]
    return job_spec


def test_a_job_whose_actors_die_resumes_from_its_checkpoint_each_time(settings, tiny_model):
    """A rollout worker dies at step 3, then, in the resumed run, a learner rank at step 7."""
    service = Service(settings)
    key = Teams(settings.database_url).key("alice")[0]
    job_spec = paced(spec(tiny_model, steps=STEPS, checkpoint_interval=2))
    job_spec["schedule"].update(max_restarts=2, restart_backoff_s=1)
    try:
        with httpx.Client(base_url=service.url, headers=auth(key), timeout=120) as c:
            job = c.post("/v1/jobs", json=job_spec).json()
            for actor, at_step in (("RolloutWorker", 3), ("Learner", 7)):
                wait_for(c, job["id"], lambda j, at=at_step: j["state"] == "running" and j["step"] >= at)
                kill_one(actor)
            done = wait_for(c, job["id"], lambda j: j["state"] in ("succeeded", "cancelled"), timeout=400)
            assert done["state"] == "succeeded" and done["step"] == STEPS
            events = c.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["events"]
            metrics = c.get(f"/v1/jobs/{job['id']}/metrics").json()["metrics"]
    finally:
        service.stop()
    restarts = [e for e in events if e["kind"] == "restart"]
    assert [r["message"].count(f"restart {k} of 2") for k, r in enumerate(restarts, 1)] == [1, 1], restarts
    # A dead actor is usually what the driver sees first; a rank's death may also surface first as
    # another actor's call failing with it (a collective, a weight sync), so one reason is enough.
    assert any("ActorDiedError" in r["data"]["reason"] or "RayActorError" in r["data"]["reason"] for r in restarts)
    assert all(r["data"]["reason"] for r in restarts)
    assert [e["data"]["step"] for e in events if e["kind"] == "step"] == list(range(1, STEPS + 1))
    trainer_seqs = [e["seq"] for e in events if e["seq"] > 0]
    assert trainer_seqs == list(range(1, len(trainer_seqs) + 1))
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert [e["kind"] for e in events].count("started") == 3  # the first run and the two resumed ones


def test_a_job_past_its_restarts_fails_with_the_reason(settings, tiny_model):
    service = Service(settings)
    key = Teams(settings.database_url).key("alice")[0]
    job_spec = paced(spec(tiny_model, steps=200, checkpoint_interval=2))  # max_restarts stays 0
    try:
        with httpx.Client(base_url=service.url, headers=auth(key), timeout=120) as c:
            job = c.post("/v1/jobs", json=job_spec).json()
            wait_for(c, job["id"], lambda j: j["state"] == "running" and j["step"] >= 2)
            kill_one("RolloutWorker")
            deadline = time.monotonic() + 120
            while (got := c.get(f"/v1/jobs/{job['id']}").json())["state"] != "failed":
                assert time.monotonic() < deadline, got
                time.sleep(0.5)
    finally:
        service.stop()
    assert "the cluster failed under the run" in got["error"] and "exit code 3" in got["error"]
    # The tail of its own log, without where the service and its Python are installed.
    assert str(ROOT) not in got["error"] and sys.prefix not in got["error"], got["error"]
