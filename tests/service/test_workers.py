"""Several service processes on one store: exactly one schedules (it holds the store's `scheduler`
lease), and when it is killed mid-run another takes over and tracks the job to success."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from sqlalchemy import select

from service.core.store import Lease, hold_lease, release_lease
from tests.conftest import ROOT
from tests.service.conftest import Teams, auth, free_port
from tests.service.test_service_e2e import spec, wait_for


def test_a_lease_has_one_holder_until_it_expires_or_is_released(teams):
    with teams.sessions() as s:
        assert hold_lease(s, "scheduler", "a", 60) and hold_lease(s, "scheduler", "a", 60)  # taken, renewed
        assert not hold_lease(s, "scheduler", "b", 60)
        release_lease(s, "scheduler", "b")  # not b's to release
        assert not hold_lease(s, "scheduler", "b", 60)
        release_lease(s, "scheduler", "a")
        assert hold_lease(s, "scheduler", "b", 0.2) and not hold_lease(s, "scheduler", "a", 60)
        time.sleep(0.3)
        assert hold_lease(s, "scheduler", "a", 60)  # b's expired


def _holder_pid(teams: Teams) -> int | None:
    with teams.sessions() as s:
        lease = s.scalar(select(Lease).where(Lease.name == "scheduler"))
        return int(lease.holder.split(":")[1]) if lease is not None else None


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.25)
    return value


@pytest.mark.slow
def test_two_workers_one_scheduler_and_the_other_takes_over_when_it_dies(tiny_model, tmp_path):
    import ray

    ray.shutdown()
    port = free_port()
    db = f"sqlite:///{tmp_path / 'fw.db'}"
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": db, "FLYWHEEL_RUNS_DIR": str(tmp_path / "runs"),
           "FLYWHEEL_RAY_DASHBOARD_PORT": str(free_port()), "FLYWHEEL_SCHEDULER_INTERVAL_S": "0.5",
           "FLYWHEEL_SCHEDULER_LEASE_S": "3"}
    env.pop("FLYWHEEL_RAY_ADDRESS", None)
    teams = Teams(db)
    key = teams.key("alice")[0]
    service = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"],
                               env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                return httpx.get(f"{base}/readyz", timeout=2).json().get("ready")
            except httpx.HTTPError:
                return False

        _wait(ready, 120, "the service did not become ready")
        def workers() -> set[int]:
            """The live worker processes (a killed one stays a zombie until the server reaps it)."""
            alive = set()
            for p in psutil.Process(service.pid).children():
                try:
                    if "spawn" in " ".join(p.cmdline()):
                        alive.add(p.pid)
                except psutil.Error:  # a zombie or gone
                    pass
            return alive

        first = _wait(lambda: _holder_pid(teams) in workers() and _holder_pid(teams), 30, "no worker holds the lease")
        assert len(workers()) == 2
        with httpx.Client(base_url=base, headers=auth(key), timeout=30) as c:
            job = c.post("/v1/jobs", json=spec(tiny_model, steps=6, checkpoint_interval=3), timeout=180).json()
            wait_for(c, job["id"], lambda j: j["state"] == "running" and j["step"] >= 1)
            os.kill(first, signal.SIGKILL)  # the scheduling process dies mid-run
            second = _wait(lambda: (pid := _holder_pid(teams)) != first and pid in workers() and pid, 30,
                           "no other worker took the scheduler over")
            assert second != first
            done = wait_for(c, job["id"], lambda j: j["state"] in ("succeeded", "failed", "cancelled"), timeout=400)
            assert done["state"] == "succeeded" and done["step"] == 6, done
            events = c.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["events"]
            trainer_seqs = [e["seq"] for e in events if e["seq"] > 0]
            assert trainer_seqs == list(range(1, len(trainer_seqs) + 1))
            assert [e["kind"] for e in events].count("step") == 6
            # /metrics adds up every process's counts.
            for _ in range(20):
                assert c.get("/v1/jobs/does-not-exist").status_code == 404
            text = httpx.get(f"{base}/metrics").text
            line = 'flywheel_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 20.0'
            assert line in text, [x for x in text.splitlines() if "404" in x]
    finally:
        service.send_signal(signal.SIGTERM)  # no live job: the workers stop, then the head
        service.wait(90)
    assert service.returncode == 0
