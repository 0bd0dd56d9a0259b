"""Stop the service while a job runs on its embedded Ray head — killed (SIGKILL, no shutdown), then
stopped gracefully (SIGTERM: running jobs outlive the service) — and start it again each time: it adopts
the head, reconciles, and tracks the job to `succeeded` with no event or metric lost or stored
twice. At the end a graceful stop with no live job stops the embedded head: its own processes,
no other Ray on the machine (tests/service/test_ray_head.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT
from tests.service.conftest import Teams, auth, free_port
from tests.service.test_service_e2e import spec, wait_for

pytestmark = pytest.mark.slow


def serve(env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the service exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("ready"):
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "service did not become ready"
        time.sleep(0.5)


def test_a_stopped_service_restarts_and_tracks_the_job_to_success(tiny_model, tmp_path):
    """Killed once, then stopped gracefully, in the same job."""
    import ray

    ray.shutdown()
    port = free_port()
    db = f"sqlite:///{tmp_path / 'fw.db'}"
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": db, "FLYWHEEL_RUNS_DIR": str(tmp_path / "runs"),
           "FLYWHEEL_RAY_DASHBOARD_PORT": str(free_port()), "FLYWHEEL_SCHEDULER_INTERVAL_S": "0.5"}
    env.pop("FLYWHEEL_RAY_ADDRESS", None)
    key = Teams(db).key("alice")[0]
    steps = 12
    service = serve(env, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth(key), timeout=30) as c:
            # The first create on a head that has just started waits for its job agent, then runs
            # the spec's checks as the cluster's first job.
            job = c.post("/v1/jobs", json=spec(tiny_model, steps=steps, checkpoint_interval=4), timeout=180).json()
        for stop in (signal.SIGKILL, signal.SIGTERM):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth(key), timeout=30) as c:
                wait_for(c, job["id"], lambda j: j["state"] == "running" and j["step"] >= 1)
            service.send_signal(stop)
            assert service.wait(60) is not None
            time.sleep(3)  # the trainer keeps going and buffers its reports
            service = serve(env, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth(key), timeout=30) as c:
            done = wait_for(c, job["id"], lambda j: j["state"] in ("succeeded", "cancelled"), timeout=400)
            assert done["state"] == "succeeded" and done["step"] == steps
            events = c.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["events"]
            trainer_seqs = [e["seq"] for e in events if e["seq"] > 0]
            assert trainer_seqs == list(range(1, len(trainer_seqs) + 1))
            kinds = [e["kind"] for e in events]
            assert kinds.count("step") == steps and kinds.count("checkpoint") == 3 and kinds.count("finished") == 1
            metrics = c.get(f"/v1/jobs/{job['id']}/metrics").json()["metrics"]
            assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    finally:
        service.send_signal(signal.SIGTERM)  # a graceful stop with no live job: the head is stopped too
        service.wait(60)
