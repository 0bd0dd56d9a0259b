"""A job's reports are trusted only as far as its own run folder: an export elsewhere (`/usr`, a
link out of the folder) is refused with 422 and never registered; the export's files are hashed
when the report arrives, before anything is written, and the registered model carries the hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.core.auth import new_job_token
from service.core.states import JobState
from service.core.store import Job, Team
from service.jobs import logic
from tests.conftest import DIGITS
from tests.service.conftest import auth
from trainer.spec import parse_spec

pytestmark = pytest.mark.one_store


@pytest.fixture
def job(client, teams, tmp_path, tiny_model):
    """A running job of alice's, with its report token: (id, token, run folder)."""
    teams.key("alice")
    spec = parse_spec({"name": "t", "model": {"path": str(tiny_model)},
                       "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
                       "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}]})
    with teams.sessions() as s:
        team = s.query(Team).filter_by(name="alice").one()
        created, _ = logic.create_job(s, team, spec, str(tmp_path / "runs"))
        token, token_hash = new_job_token()
        created.report_token_hash = token_hash
        for state in (JobState.starting, JobState.running):
            logic.transition(s, created, state)
        s.commit()
        return created.id, token, Path(created.run_dir)


def finished(client, job_id: str, token: str, export: str, seq: int = 1):
    return client.post(f"/v1/jobs/{job_id}/report", headers=auth(token),
                       json={"seq": seq, "kind": "finished", "data": {"export_dir": export}})


def test_an_export_outside_the_run_folder_is_refused(client, job, tmp_path):
    job_id, token, run_dir = job
    for outside in ("/usr", str(run_dir / ".." / "elsewhere"), str(tmp_path)):
        r = finished(client, job_id, token, outside)
        assert r.status_code == 422 and r.json()["error"]["field"] == "data.export_dir", r.text
    model = run_dir / "model"
    model.mkdir(parents=True)
    (model / "weights.bin").symlink_to("/etc/hostname")
    r = finished(client, job_id, token, str(model))
    assert r.status_code == 422 and "link" in r.json()["error"]["message"]


def test_an_export_in_the_run_folder_is_hashed_and_registered_with_its_hashes(client, teams, job):
    job_id, token, run_dir = job
    model = run_dir / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\1" * 5000)
    assert finished(client, job_id, token, str(model)).json()["stored"] is True
    with teams.sessions() as s:
        row = s.get(Job, job_id)
        logic.transition(s, row, JobState.succeeded, "Ray reports the job succeeded")
        s.commit()
    key = teams.key("alice")[0]
    files = client.get("/v1/models", headers=auth(key)).json()["models"][0]["files"]
    assert files == [{"name": "config.json", "bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
                     {"name": "sub/weights.bin", "bytes": 5000,
                      "sha256": hashlib.sha256(b"\1" * 5000).hexdigest()}]
