"""PostgreSQL restarted under a running service and a running job: while it is down requests get
a clean 503 (no 500, no hang), the pool reconnects once it is back, the trainer's reports wait and
are retried, and nothing is lost: every step reported once, sequence numbers unbroken."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.service.conftest import PG_URL, Teams, _fresh_postgres, auth
from tests.service.test_service_e2e import Service, spec, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PG_URL or not shutil.which("pg_ctlcluster"),
                                 reason="needs the CI PostgreSQL (FLYWHEEL_TEST_DATABASE_URL, pg_ctlcluster)")]
STEPS = 12


def cluster(action: str) -> None:
    version = subprocess.run("ls /usr/lib/postgresql | sort -n | tail -1", shell=True, capture_output=True,
                             text=True, check=True).stdout.strip()
    subprocess.run(["pg_ctlcluster", version, "main", action, *(["-m", "fast"] if action == "stop" else [])],
                   check=True, capture_output=True)


def test_a_postgres_restart_mid_job_loses_nothing(settings, tiny_model):
    settings = settings.model_copy(update={"database_url": _fresh_postgres()})
    service = Service(settings)
    key = Teams(settings.database_url).key("alice")[0]
    outage = []
    try:
        with httpx.Client(base_url=service.url, headers=auth(key), timeout=30) as c:
            job = c.post("/v1/jobs", json=spec(tiny_model, steps=STEPS, checkpoint_interval=4), timeout=180).json()
            wait_for(c, job["id"], lambda j: j["state"] == "running" and j["step"] >= 2)
            cluster("stop")
            try:
                for _ in range(5):
                    outage.append(c.get("/v1/jobs"))
                    time.sleep(0.5)
            finally:
                cluster("start")
            done = wait_for(c, job["id"], lambda j: j["state"] in ("succeeded", "cancelled"), timeout=400)
            events = c.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["events"]
    finally:
        service.stop()
    assert {r.status_code for r in outage} == {503}
    assert all(r.json()["error"]["code"] == "store_unavailable" and r.headers["Retry-After"] for r in outage)
    assert done["state"] == "succeeded" and done["step"] == STEPS
    assert [e["data"]["step"] for e in events if e["kind"] == "step"] == list(range(1, STEPS + 1))
    trainer_seqs = [e["seq"] for e in events if e["seq"] > 0]
    assert trainer_seqs == list(range(1, len(trainer_seqs) + 1))
