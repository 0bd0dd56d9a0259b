"""The model registry and deployments over HTTP on a real store: every succeeded job's export is a
model version (with its lineage, files and evaluation), a deployment moves only through its gate
(a worse candidate is refused with the table that says why, and the deployment keeps serving the
old model), rollback, events for every change and refusal, team isolation, and bad input."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from service.core.states import JobState
from service.core.store import ModelVersion
from tests.service.conftest import DESK, Trainer, auth, rates


@pytest.fixture
def trainer(teams, tmp_path):
    return Trainer(teams, tmp_path)


def model_of(client, key, job_id) -> dict:
    models = client.get("/v1/models", headers=auth(key)).json()["models"]
    return next(m for m in models if m["job_id"] == job_id)


def test_every_succeeded_job_is_a_model_version_with_its_lineage(client, teams, trainer):
    alice, _ = teams.key("alice")
    bob, _ = teams.key("bob")
    first = model_of(client, alice, trainer.finish("alice", "warm", "runs/desk-model", rates(0.5, 0.1)))
    assert first["kind"] == "policy" and first["parent_id"] is None and first["lineage"] == []
    assert first["files"] == [
        {"name": "config.json", "bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
        {"name": "model.safetensors", "bytes": 1000, "sha256": hashlib.sha256(b"\0" * 1000).hexdigest()}]
    assert first["size_bytes"] == 1002 and first["rewards"] == [{"name": "resolution", "weight": 1.0}]
    assert first["evaluation"]["after"]["metrics"]["eval/resolved_rate"] == 0.5
    assert first["eval_environment"] == {"name": "support_desk", "config": {"eval_size": 50, "max_turns": 5}}
    second = model_of(client, alice, trainer.finish("alice", "round1", first["path"], rates(0.6, 0.1)))
    third = model_of(client, alice, trainer.finish("alice", "round2", second["path"], rates(0.7, 0.1)))
    assert third["parent_id"] == second["id"] and third["lineage"] == [second["id"], first["id"]]
    trainer.finish("alice", "broken", first["path"], None, state=JobState.failed)  # a failed job registers nothing
    listed = client.get("/v1/models", headers=auth(alice)).json()["models"]
    assert [m["name"] for m in listed] == ["round2", "round1", "warm"]
    assert client.get(f"/v1/models/{third['id']}", headers=auth(alice)).json() == third
    assert client.get(f"/v1/models/{third['id']}", headers=auth(bob)).status_code == 404  # another team's
    assert client.get("/v1/models", headers=auth(bob)).json()["models"] == []
    assert client.get("/v1/models", params={"kind": "outcome_model"}, headers=auth(alice)).json()["models"] == []
    r = client.get("/v1/models", params={"kind": "reward"}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "query.kind"


def test_a_deployment_moves_only_through_its_gate(client, teams, trainer):
    alice, _ = teams.key("alice")
    bob, _ = teams.key("bob")
    v1 = model_of(client, alice, trainer.finish("alice", "v1", "runs/desk-model", rates(0.55, 0.10)))["id"]
    worse = model_of(client, alice, trainer.finish("alice", "escalates-all", "runs/desk-model", rates(0.20, 0.0)))["id"]
    v2 = model_of(client, alice, trainer.finish("alice", "v2", "runs/desk-model", rates(0.70, 0.05)))["id"]
    other_env = {**DESK, "config": {**DESK["config"], "eval_size": 80}}
    elsewhere = model_of(client, alice, trainer.finish("alice", "other-eval", "runs/desk-model", rates(0.9, 0.0),
                                                       env=other_env))["id"]
    gate = {"rules": [{"metric": "resolved_rate", "min_gain": 0.02}, {"metric": "violation_rate", "better": "lower"}],
            "ceilings": {"violation_rate": 0.12}}
    r = client.post("/v1/deployments", json={"name": "support-agent", "model": v1, "gate": gate}, headers=auth(alice))
    assert r.status_code == 201 and r.json()["model"] == v1

    r = client.post("/v1/deployments/support-agent/promote", json={"model": worse}, headers=auth(alice))
    assert r.status_code == 409 and r.json()["error"]["code"] == "gate_refused"
    verdict = r.json()["error"]["verdict"]
    assert not verdict["passed"] and [row["passed"] for row in verdict["rows"]] == [False, True, True]
    assert verdict["rows"][0]["change"] == pytest.approx(-0.35)
    assert "eval/resolved_rate 0.55 → 0.2" in r.json()["error"]["message"]
    assert client.get("/v1/deployments/support-agent", headers=auth(alice)).json()["model"] == v1  # keeps serving

    r = client.post("/v1/deployments/support-agent/promote", json={"model": elsewhere}, headers=auth(alice))
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_comparable"

    r = client.post("/v1/deployments/support-agent/promote", json={"model": v2}, headers=auth(alice))
    assert r.status_code == 200 and r.json()["verdict"]["passed"]
    assert r.json()["deployment"]["model"] == v2 and r.json()["deployment"]["history"] == [v1]
    assert client.post("/v1/deployments/support-agent/promote", json={"model": v2},
                       headers=auth(alice)).json()["error"]["code"] == "already_serving"

    r = client.post("/v1/deployments/support-agent/rollback", headers=auth(alice))
    assert r.status_code == 200 and r.json()["model"] == v1 and r.json()["history"] == []
    r = client.post("/v1/deployments/support-agent/rollback", headers=auth(alice))
    assert r.status_code == 409 and r.json()["error"]["code"] == "nothing_to_roll_back"

    events = client.get("/v1/deployments/support-agent/events", headers=auth(alice)).json()["events"]
    assert [e["kind"] for e in events] == ["created", "refused", "refused", "promoted", "rolled_back"]
    assert events[1]["verdict"] == verdict and events[3]["previous_model"] == v1

    # Team isolation: bob sees neither the deployment nor alice's models.
    assert client.get("/v1/deployments/support-agent", headers=auth(bob)).status_code == 404
    assert client.post("/v1/deployments/support-agent/rollback", headers=auth(bob)).status_code == 404
    r = client.post("/v1/deployments", json={"name": "mine", "model": v1}, headers=auth(bob))
    assert r.status_code == 404 and r.json()["error"]["field"] == "model"
    assert client.get("/v1/deployments", headers=auth(bob)).json()["deployments"] == []


def test_a_gate_with_held_out_tasks_evaluates_the_models_that_lack_them(client, teams, trainer):
    """Neither model was evaluated on the deployment's held-out tasks: the promotion starts an
    evaluation job for each (queued like any job, exporting nothing), answers 202, and once they
    have succeeded compares their measures; a failed evaluation is started again."""
    alice, _ = teams.key("alice")
    elsewhere = {**DESK, "config": {**DESK["config"], "eval_size": 80}}
    v1 = model_of(client, alice, trainer.finish("alice", "v1", "runs/desk-model", rates(0.5, 0.1), env=elsewhere))
    v2 = model_of(client, alice, trainer.finish("alice", "v2", "runs/desk-model", rates(0.9, 0.0), env=elsewhere))
    held_out = {"environment": {"name": "support_desk", "config": {"eval_size": 200, "max_turns": 5}}}
    r = client.post("/v1/deployments", json={"name": "desk", "model": v1["id"], "gate": {"evaluation": held_out}},
                    headers=auth(alice))
    assert r.status_code == 201, r.json()
    r = client.post("/v1/deployments/desk/promote", json={"model": v2["id"]}, headers=auth(alice))
    assert r.status_code == 202 and r.json()["deployment"]["model"] == v1["id"] and r.json()["verdict"] is None
    jobs = r.json()["evaluating"]
    assert len(jobs) == 2
    specs = [client.get(f"/v1/jobs/{j}", headers=auth(alice)).json() for j in jobs]
    assert [s["name"] for s in specs] == [f"evaluate-{v1['id']}", f"evaluate-{v2['id']}"]
    assert all(s["state"] == "queued" and s["steps"] == 0 for s in specs)
    # Asked again while they run: the same jobs, none started twice.
    assert client.post("/v1/deployments/desk/promote", json={"model": v2["id"]},
                       headers=auth(alice)).json()["evaluating"] == jobs
    trainer.run(jobs[0], rates(0.55, 0.10))  # v1 on the held-out tasks
    trainer.run(jobs[1], None, JobState.failed)  # v2's evaluation failed: the next promotion starts another
    r = client.post("/v1/deployments/desk/promote", json={"model": v2["id"]}, headers=auth(alice))
    assert r.status_code == 202 and len(r.json()["evaluating"]) == 1 and r.json()["evaluating"][0] not in jobs
    trainer.run(r.json()["evaluating"][0], rates(0.40, 0.05))  # worse than v1 there, whatever its own job said
    r = client.post("/v1/deployments/desk/promote", json={"model": v2["id"]}, headers=auth(alice))
    assert r.status_code == 409 and r.json()["error"]["code"] == "gate_refused"
    assert r.json()["error"]["verdict"]["rows"][0]["current"] == 0.55
    assert len(client.get("/v1/models", headers=auth(alice)).json()["models"]) == 2  # evaluations export nothing
    kinds = [e["kind"] for e in client.get("/v1/deployments/desk/events", headers=auth(alice)).json()["events"]]
    assert kinds == ["created", "evaluating", "evaluating", "evaluating", "refused"]
    r = client.post("/v1/deployments", json={"name": "bad", "gate": {"evaluation": {
        "environment": {"name": "support_desk"}, "rewards": [{"name": "resolution", "import_path": "x:y"}]}}},
        headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("gate.evaluation"), r.json()


@pytest.mark.one_store  # refused before the store is touched
@pytest.mark.parametrize(("body", "field"), [
    ({"name": "has space"}, "name"),
    ({"name": "a", "model": "job_123"}, "model"),
    ({"name": "a", "gate": {"rules": [{"metric": "resolved rate"}]}}, "gate.rules.0.metric"),
    ({"name": "a", "gate": {"rules": [{"metric": "resolved_rate", "better": "more"}]}}, "gate.rules.0.better"),
    ({"name": "a", "gate": {"ceilings": {"violation_rate": "low"}}}, "gate.ceilings.violation_rate"),
    ({"name": "a", "gate": {"typo": 1}}, "gate.typo"),
])
def test_bad_deployment_input_names_the_field(client, teams, body, field):
    alice, _ = teams.key("alice")
    r = client.post("/v1/deployments", json=body, headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.json()


def test_an_outcome_model_is_not_served_and_names_cannot_repeat(client, teams, trainer, tmp_path):
    alice, _ = teams.key("alice")
    traces = {"name": "traces", "config": {"snapshot": str(tmp_path / "s.parquet")}}
    classifier = model_of(client, alice, trainer.finish("alice", "om", "runs/desk-model", {"eval/auc": 0.9}, env=traces,
                                                        rewards=[], algorithm={"type": "outcome_model"},
                                                        learner={"micro_batch": 2}))
    assert classifier["kind"] == "outcome_model"
    r = client.post("/v1/deployments", json={"name": "x", "model": classifier["id"]}, headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_a_policy"
    assert client.post("/v1/deployments", json={"name": "x"}, headers=auth(alice)).status_code == 201
    r = client.post("/v1/deployments", json={"name": "x"}, headers=auth(alice))
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"


def test_the_cli_lists_models_and_shows_why_the_gate_refused(tmp_path, ray_head):
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.service.conftest import ServiceProcess, Teams

    service = ServiceProcess(tmp_path, ray_head)
    trainer = Trainer(Teams(service.database_url), tmp_path / "jobs")
    env = {"FLYWHEEL_URL": service.url, "FLYWHEEL_API_KEY": service.key, "PATH": "", "COLUMNS": "200",
           "HOME": str(tmp_path)}

    def flywheel(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    try:
        trainer.finish("alice", "v1", "runs/desk-model", rates(0.55, 0.10))
        trainer.finish("alice", "escalates-all", "runs/desk-model", rates(0.20, 0.0))
        ids = {m["name"]: m["id"] for m in service.client.get("/v1/models").json()["models"]}
        listed = flywheel("models", "list")
        assert listed.returncode == 0 and "escalates-all" in listed.stdout and "resolved_rate 0.55" in listed.stdout
        assert flywheel("deploy", "create", "support-agent", "--model", ids["v1"]).returncode == 0
        refused = flywheel("deploy", "promote", "support-agent", ids["escalates-all"])
        assert refused.returncode == 1 and "gate_refused" in refused.stdout
        assert "resolved_rate" in refused.stdout and "FAIL" in refused.stdout and "-0.35" in refused.stdout
        assert f"serving {ids['v1']}" in flywheel("deploy", "list").stdout
        assert "refused" in flywheel("deploy", "events", "support-agent").stdout
    finally:
        service.stop()


def test_a_job_read_before_its_finished_report_still_registers_its_export(tmp_path, tiny_model):
    """The scheduler reads a live job, the trainer's `finished` report lands in another session,
    then the scheduler marks the job succeeded: the export it declared is registered."""
    from pydantic import TypeAdapter

    from service.core.store import Job, Team, make_engine, migrate, session_factory
    from service.jobs import logic
    from trainer.spec import parse_spec
    from trainer.spec.reports import Report

    url = f"sqlite:///{tmp_path / 'fw.db'}"
    migrate(url)
    sessions = session_factory(make_engine(url))
    export = tmp_path / "model"
    export.mkdir()
    (export / "config.json").write_text("{}")
    with sessions() as s:
        team = Team(name="alice", max_concurrent_jobs=1)
        s.add(team)
        s.flush()
        spec = parse_spec({"name": "j", "model": {"path": str(tiny_model)}, "environment": {"name": "support_desk"},
                           "rewards": [{"name": "resolution"}]}).model_dump(mode="json")
        s.add(Job(id="job_1", team_id=team.id, name="j", state=JobState.running, spec=spec, steps=1,
                  run_dir=str(tmp_path)))
        s.commit()
    with sessions() as scheduler:
        job = scheduler.get(Job, "job_1")                        # read at the start of a tick
        with sessions() as reporting:                              # the trainer reports meanwhile
            logic.record_report(reporting, reporting.get(Job, "job_1"), TypeAdapter(Report).validate_python(
                {"seq": 1, "kind": "finished", "data": {"export_dir": str(export)}}))
        logic.transition(scheduler, job, JobState.succeeded, "Ray reports the job succeeded")
        scheduler.commit()
        model = scheduler.scalar(select(ModelVersion).where(ModelVersion.job_id == "job_1"))
    assert model is not None and model.path == str(export.resolve())
