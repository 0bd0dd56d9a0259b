"""The real thing: the service over HTTP, a Ray head, jobs launched through the Ray Jobs API,
the trainer reporting back, and the CLI following a job to its end, cancellation, and team quotas.

The Ray head is the service tests' shared one (tests/service/conftest.py), as an existing cluster
would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.conftest import DIGITS, ROOT
from tests.fixtures import snooping_reward as snooping
from tests.service.conftest import Teams, auth

pytestmark = pytest.mark.slow


class Service:
    def __init__(self, settings):
        from service.main import create_app

        self.url = f"http://{settings.host}:{settings.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "service did not start"
            time.sleep(0.2)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def spec(model, steps: int, checkpoint_interval: int) -> dict:
    return {"name": "e2e", "model": {"path": str(model)},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
            "rewards": [{"import_path": "tests.fixtures.trl_rewards:digit_share"}],
            "algorithm": {"type": "grpo", "group_size": 4},
            "rollout": {"prompts_per_step": 4, "max_new_tokens": 8},
            "learner": {"ranks": 2, "micro_batch": 8, "lr": 3e-3},
            "schedule": {"steps": steps, "checkpoint_interval": checkpoint_interval},
            "logging": {"wandb_mode": "offline"}}


def wait_for(client, job_id, predicate, timeout=300, headers=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if predicate(job):
            return job
        assert job["state"] not in ("failed",), job["error"]
        time.sleep(0.5)
    raise AssertionError(f"timed out; last seen {job}")


def test_job_runs_to_success_and_the_cli_follows_it(settings, tiny_model):
    """... and the team's reward code, which goes looking for the job's report token, finds none."""
    service = Service(settings)
    key = Teams(settings.database_url).key("alice")[0]
    snooping.FOUND.unlink(missing_ok=True)
    job_spec = spec(tiny_model, steps=4, checkpoint_interval=2)
    job_spec["rewards"].append({"import_path": "tests.fixtures.snooping_reward:look_for_the_token", "weight": 0.0})
    try:
        with httpx.Client(base_url=service.url, headers=auth(key), timeout=120) as c:
            job = c.post("/v1/jobs", json=job_spec).json()
            assert job["state"] == "queued"
            env = {**os.environ, "FLYWHEEL_URL": service.url, "FLYWHEEL_API_KEY": key}
            follow = subprocess.run([sys.executable, "-m", "service.cli", "follow", job["id"], "--interval", "0.5"],
                                    env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
            assert follow.returncode == 0, follow.stdout + follow.stderr
            assert f"{job['id']} succeeded" in follow.stdout
            done = c.get(f"/v1/jobs/{job['id']}").json()
            assert done["state"] == "succeeded" and done["step"] == 4 and done["wandb"]
            kinds = [e["kind"] for e in c.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["events"]]
            assert kinds[:3] == ["queued", "starting", "started"] and kinds[-2:] == ["succeeded", "registered"]
            assert kinds.count("step") == 4 and kinds.count("checkpoint") == 2 and "finished" in kinds
            model = c.get("/v1/models").json()["models"][0]  # its export is a model version
            assert model["job_id"] == job["id"] and Path(model["path"]) == Path(done["run_dir"]).resolve() / "model"
            assert {f["name"] for f in model["files"]} >= {"config.json", "model.safetensors"}
            assert [m["step"] for m in c.get(f"/v1/jobs/{job['id']}/metrics").json()["metrics"]] == [1, 2, 3, 4]
            assert [k["step"] for k in c.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]] == [2, 4]
        assert json.loads(snooping.FOUND.read_text())["found"] == []
    finally:
        service.stop()


def test_cancel_a_running_job_keeps_its_checkpoints(settings, tiny_model):
    from service.jobs.launcher import RayJobsLauncher

    service = Service(settings)
    key = Teams(settings.database_url).key("alice")[0]
    try:
        with httpx.Client(base_url=service.url, headers=auth(key), timeout=120) as c:
            job = c.post("/v1/jobs", json=spec(tiny_model, steps=500, checkpoint_interval=1)).json()
            running = wait_for(c, job["id"], lambda j: j["state"] == "running" and j["step"] >= 2)
            assert running["queue_position"] is None
            cancelled = c.post(f"/v1/jobs/{job['id']}/cancel").json()
            assert cancelled["state"] == "cancelled"
            launcher = RayJobsLauncher(settings.ray_address, ROOT)
            ray_job = _ray_job_id(settings, job["id"])
            deadline = time.monotonic() + 60
            while launcher.status(ray_job).state not in ("STOPPED", "FAILED"):
                assert time.monotonic() < deadline, "Ray job did not stop"
                time.sleep(0.5)
            time.sleep(2)  # the scheduler must not resurrect or re-mark it
            assert c.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
            assert len(c.get(f"/v1/jobs/{job['id']}/checkpoints").json()["checkpoints"]) >= 1
    finally:
        service.stop()


def _ray_job_id(settings, job_id):
    from service.core.store import Job, make_engine, session_factory

    with session_factory(make_engine(settings.database_url))() as s:
        return s.get(Job, job_id).ray_job_id


def test_team_quota_holds_a_job_back_while_other_teams_start(settings, tiny_model):
    settings = settings.model_copy(update={"max_running_jobs": 2})
    service = Service(settings)
    teams = Teams(settings.database_url)
    alice, bob = auth(teams.key("alice", quota=1)[0]), auth(teams.key("bob", quota=1)[0])
    small = spec(tiny_model, steps=500, checkpoint_interval=0)
    small["rollout"].update(workers=1, num_cpus=0.2)
    small["learner"].update(ranks=1, num_cpus=0.2, micro_batch=16)
    live = ("starting", "running")
    try:
        with httpx.Client(base_url=service.url, timeout=30) as c:
            a1 = c.post("/v1/jobs", json=small, headers=alice).json()
            a2 = c.post("/v1/jobs", json=small, headers=alice).json()
            b1 = c.post("/v1/jobs", json=small, headers=bob).json()
            wait_for(c, a1["id"], lambda j: j["state"] in live, 120, alice)
            wait_for(c, b1["id"], lambda j: j["state"] in live, 120, bob)  # bob starts although a2 is older
            held = c.get(f"/v1/jobs/{a2['id']}", headers=alice).json()
            assert held["state"] == "queued" and held["queue_position"] == 1
            c.post(f"/v1/jobs/{a1['id']}/cancel", headers=alice)
            wait_for(c, a2["id"], lambda j: j["state"] in live, 60, alice)
            for job, who in ((a2, alice), (b1, bob)):
                assert c.post(f"/v1/jobs/{job['id']}/cancel", headers=who).json()["state"] == "cancelled"
    finally:
        service.stop()
