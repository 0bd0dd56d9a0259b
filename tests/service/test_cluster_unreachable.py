"""The Ray head goes away under a live job: the job is marked once with the reason (not failed,
not duplicated on every tick), and once a cluster answers again it is reconciled: its Ray job is
gone, so without restarts left it fails with the reason."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.core.config import Settings
from service.core.store import Job
from service.jobs.launcher import LocalRayHead
from service.jobs.scheduler import Scheduler
from service.main import create_app
from tests.conftest import DIGITS
from tests.service.conftest import Teams, auth, free_port

pytestmark = pytest.mark.slow


def kinds(client, job_id, headers) -> list[str]:
    return [e["kind"] for e in client.get(f"/v1/jobs/{job_id}/events", headers=headers).json()["events"]]


def test_a_live_job_is_marked_while_the_cluster_is_away(tiny_model, tmp_path):
    head = LocalRayHead(free_port())
    head.start()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'fw.db'}", launch=False, runs_dir=tmp_path / "runs",
                        ray_address=head.address)
    alice = auth(Teams(settings.database_url).key("alice")[0])
    spec = {"name": "away", "model": {"path": str(tiny_model)},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
            "rewards": [{"name": "regex", "config": {"pattern": "[0-9]"}}]}
    try:
        with TestClient(create_app(settings)) as client:
            job = client.post("/v1/jobs", json=spec, headers=alice).json()
            app = client.app
            with app.state.sessions() as s:  # as if launched: a running job with its Ray job
                row = s.get(Job, job["id"])
                row.state, row.ray_job_id = "running", "raysubmit_gone"
                s.commit()
            scheduler = Scheduler(app.state.sessions, app.state.launcher, settings)
            head.stop()
            scheduler.reconcile()
            scheduler.reconcile()
            got = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
            assert got["state"] == "running"
            assert kinds(client, job["id"], alice).count("cluster_unreachable") == 1
            head.start()  # a cluster answers again, without that Ray job
            scheduler.reconcile()
            got = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
            assert got["state"] == "failed" and "no longer exists" in got["error"]
            assert kinds(client, job["id"], alice)[-2:] == ["cluster_reachable", "failed"]
    finally:
        head.stop()
