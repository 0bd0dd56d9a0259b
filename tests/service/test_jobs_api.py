"""The REST surface against a real store: jobs, teams, errors, reporting, events."""

import json

import pytest

from tests.conftest import DIGITS, ROOT
from tests.service.conftest import auth


@pytest.fixture
def spec(tiny_model) -> dict:
    return {"name": "demo", "model": {"path": str(tiny_model)},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
            "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}],
            "schedule": {"steps": 3}}


@pytest.fixture
def alice(teams):
    return auth(teams.key("alice")[0])


def test_create_get_list_and_queue_positions(client, alice, spec):
    first = client.post("/v1/jobs", json=spec, headers=alice)
    assert first.status_code == 201
    job = first.json()
    assert job["state"] == "queued" and job["queue_position"] == 1 and job["steps"] == 3
    second = client.post("/v1/jobs", json={**spec, "name": "urgent"}, params={"priority": 5}, headers=alice).json()
    assert second["queue_position"] == 1  # a higher priority goes first
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["queue_position"] == 2
    page = client.get("/v1/jobs", params={"limit": 1}, headers=alice).json()
    assert page["total"] == 2 and len(page["jobs"]) == 1 and page["jobs"][0]["name"] == "urgent"
    assert client.get("/v1/jobs", params={"name": "demo"}, headers=alice).json()["total"] == 1
    assert client.get("/v1/jobs", params={"state": "running"}, headers=alice).json()["total"] == 0


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(client, alice, spec):
    headers = {**alice, "Idempotency-Key": "abc"}
    a = client.post("/v1/jobs", json=spec, headers=headers)
    b = client.post("/v1/jobs", json=spec, headers=headers)
    assert (a.status_code, b.status_code) == (201, 200) and a.json()["id"] == b.json()["id"]
    other = client.post("/v1/jobs", json={**spec, "name": "other"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["field"] == "Idempotency-Key" and a.json()["id"] in other.json()["error"]["message"]
    assert client.post("/v1/jobs", json=spec, params={"priority": 3}, headers=headers).status_code == 422
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 1


def test_validate_does_not_create(client, alice, spec):
    assert client.post("/v1/jobs:validate", json=spec, headers=alice).json()["valid"] is True
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 0


def test_keys_are_required_and_revoked_keys_refused(client, teams, spec):
    assert client.get("/v1/jobs").json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/jobs", headers=auth("fw_not_a_key")).status_code == 401
    key, key_id = teams.key("bob")
    assert client.get("/v1/jobs", headers=auth(key)).status_code == 200
    teams.revoke(key_id)
    refused = client.get("/v1/jobs", headers=auth(key))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_teams_cannot_see_follow_or_cancel_each_others_jobs(client, teams, alice, spec):
    job = client.post("/v1/jobs", json=spec, headers=alice).json()
    bob = auth(teams.key("bob")[0])
    for method, path in (("get", ""), ("get", "/events"), ("get", "/metrics"), ("get", "/checkpoints"),
                         ("post", "/cancel")):
        r = getattr(client, method)(f"/v1/jobs/{job['id']}{path}", headers=bob)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    assert client.get("/v1/jobs", headers=bob).json()["total"] == 0
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["state"] == "queued"


def test_cancel_then_illegal_transition_is_409(client, alice, spec):
    job = client.post("/v1/jobs", json=spec, headers=alice).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()["state"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    assert again.status_code == 409 and again.json()["error"] == {
        "code": "illegal_transition", "message": "a cancelled job cannot become cancelled", "field": "state"}


@pytest.mark.one_store  # refused (or scored) on the cluster, before the store is touched
@pytest.mark.parametrize(("mutate", "field", "fragment"), [
    (lambda s: {**s, "rewards": [{"name": "resolvd"}]}, "rewards.0.name", "unknown reward module 'resolvd'"),
    (lambda s: {**s, "environment": {"name": "chess"}}, "environment.name", "valid names: dataset"),
    (lambda s: {**s, "schedule": {"steps": -2}}, "schedule.steps", "greater than or equal to 0"),
    (lambda s: {**s, "model": {"path": str(ROOT / "runs" / "no-such-model")}}, "model.path", "no such model folder"),
    (lambda s: {**s, "environment": {"config": {"train": str(ROOT / "runs" / "no-data.jsonl")}}},
     "environment.config.train", "no such file"),
    (lambda s: {**s, "algorithm": {"type": "grpo", "group_size": 1}}, "algorithm.group_size", "greater than or equal to 2"),
])
def test_bad_specs_get_the_json_error_naming_the_field(client, alice, spec, mutate, field, fragment):
    r = client.post("/v1/jobs", json=mutate(spec), headers=alice)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_spec" and err["field"] == field and fragment in err["message"]


@pytest.mark.one_store  # refused (or scored) on the cluster, before the store is touched
def test_paths_outside_the_data_roots_get_one_answer_whatever_exists(client, alice, spec):
    """/etc/passwd exists and /etc/no-such-file does not: the service says the same of both, and
    the same for a model folder, demonstrations or a reward file out there."""
    answers = set()
    for path in ("/etc/passwd", "/etc/no-such-file", "/etc"):
        r = client.post("/v1/jobs:validate", json={**spec, "environment": {"name": "dataset", "config": {
            "train": path}}}, headers=alice)
        assert r.status_code == 422 and r.json()["error"]["field"] == "environment.config.train"
        answers.add(r.json()["error"]["message"])
    assert len(answers) == 1 and "data roots" in answers.pop()
    r = client.post("/v1/jobs:validate", json={**spec, "model": {"path": "/usr"},
                                                "rewards": [{"import_path": "/etc/reward.py:fn"}]}, headers=alice)
    fields = {e["field"] for e in r.json()["error"]["errors"]}
    assert fields == {"model.path", "rewards.0.import_path"}


@pytest.mark.one_store  # refused (or scored) on the cluster, before the store is touched
def test_malformed_json_is_a_422_naming_the_body(client, alice):
    r = client.post("/v1/jobs", content=b'{"model": ', headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_request" and "malformed JSON" in r.json()["error"]["message"]


def _job_token(app, job_id: str) -> str:
    from service.core.auth import new_job_token
    from service.core.store import Job

    token, token_hash = new_job_token()
    with app.state.sessions() as s:
        job = s.get(Job, job_id)
        job.report_token_hash, job.state = token_hash, "starting"
        s.commit()
    return token


def test_trainer_reports_are_stored_once_and_readable(app, client, alice, spec):
    job = client.post("/v1/jobs", json=spec, headers=alice).json()
    token = auth(_job_token(app, job["id"]))
    url = f"/v1/jobs/{job['id']}/report"
    assert client.post(url, json={"seq": 1, "kind": "step", "data": {}}, headers=alice).status_code == 401
    assert client.get(url, headers=token).json() == {"last_seq": 0, "last_step": 0}
    reports = [{"seq": 1, "kind": "started", "data": {"wandb": "runs/x/wandb"}},
               {"seq": 2, "kind": "step", "message": "step 1", "data": {"step": 1, "metrics": {"reward/mean": 0.5}}},
               {"seq": 3, "kind": "checkpoint", "data": {"step": 1, "path": "/ckpt/step_1"}}]
    for body in reports + reports:  # every report sent twice, as a retry would
        assert client.post(url, json=body, headers=token).status_code == 200
    assert client.get(url, headers=token).json() == {"last_seq": 3, "last_step": 1}
    # What a report's data holds depends on its kind: a step report without its step is refused.
    bad = client.post(url, json={"seq": 4, "kind": "step", "data": {"metrics": {}}}, headers=token)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "data.step"
    assert client.get(url, headers=token).json() == {"last_seq": 3, "last_step": 1}
    got = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert got["state"] == "running" and got["step"] == 1 and got["latest_metrics"] == {"reward/mean": 0.5}
    assert got["wandb"] == "runs/x/wandb"
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics", headers=alice).json()["metrics"]
    assert metrics == [{"step": 1, "values": {"reward/mean": 0.5}}]
    assert client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=alice).json()["checkpoints"][0]["path"] == "/ckpt/step_1"
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=alice).json()["events"]
    assert [e["kind"] for e in events] == ["queued", "started", "running", "step", "checkpoint"]
    page = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 2}, headers=alice).json()
    rest = client.get(f"/v1/jobs/{job['id']}/events", params={"after": page["next_after"]}, headers=alice).json()
    assert [e["kind"] for e in page["events"] + rest["events"]] == [e["kind"] for e in events]


def test_evaluations_become_the_jobs_before_after_result(app, client, alice, spec):
    from rich.console import Console

    from trainer.spec.results import result_table

    job = client.post("/v1/jobs", json=spec, headers=alice).json()
    assert job["result"] is None
    token = auth(_job_token(app, job["id"]))
    url = f"/v1/jobs/{job['id']}/report"
    before = {"eval/resolved_rate": 0.5, "eval/violation_rate": 0.1, "eval/turns_mean": 3.0}
    after = {"eval/resolved_rate": 0.8, "eval/violation_rate": 0.05, "eval/turns_mean": 2.5}
    for seq, (phase, step, metrics) in enumerate([("before", 0, before), ("after", 20, after)], 1):
        body = {"seq": seq, "kind": "evaluation", "data": {"phase": phase, "step": step, "metrics": metrics}}
        assert client.post(url, json=body, headers=token).status_code == 200
    result = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["result"]
    assert result == {"before": {"step": 0, "metrics": before}, "after": {"step": 20, "metrics": after}}
    console = Console(width=120, record=True)
    console.print(result_table(result))
    text = console.export_text()
    assert "resolved_rate" in text and "50.0%" in text and "80.0%" in text and "+30.0 pts" in text


def test_events_stream_as_server_sent_events_until_the_job_ends(client, alice, spec):
    job = client.post("/v1/jobs", json=spec, headers=alice).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={**alice, "Accept": "text/event-stream"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    kinds = [line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event: ")]
    assert kinds == ["queued", "cancelled"]
    data = [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")]
    assert data[1]["message"] == "cancelled by the team"


@pytest.mark.one_store  # refused (or scored) on the cluster, before the store is touched
def test_catalog_and_scoring_a_reward(client, alice):
    assert "regex" in client.get("/v1/rewards", headers=alice).json()["rewards"]
    assert "dataset" in client.get("/v1/environments", headers=alice).json()["environments"]
    r = client.post("/v1/rewards/regex/run", headers=alice, json={
        "prompts": ["q", "q"], "completions": ["42", "no"], "config": {"pattern": r"\d+"}})
    assert r.json()["rewards"] == [1.0, 0.0]
    bad = client.post("/v1/rewards/regex/run", headers=alice, json={
        "prompts": ["q"], "completions": ["x"], "config": {"pattern": "("}})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "config.pattern"
    assert client.post("/v1/rewards/nope/run", headers=alice, json={"prompts": ["q"], "completions": ["x"]}
                       ).status_code == 404


def test_health_readiness_and_prometheus(client, alice, spec):
    client.post("/v1/jobs", json=spec, headers=alice)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready == {"ready": True, "checks": {"store": "ok", "ray": "ok"}}
    text = client.get("/metrics").text
    assert 'flywheel_jobs{state="queued"} 1.0' in text and "flywheel_queue_length 1.0" in text
    assert 'flywheel_http_requests_total{method="POST",route="/v1/jobs",status="201"} 1.0' in text


def test_timestamps_carry_their_zone_on_every_read(client, alice, spec):
    created = client.post("/v1/jobs", json=spec, headers=alice).json()
    read = client.get(f"/v1/jobs/{created['id']}", headers=alice).json()
    listed = client.get("/v1/jobs", headers=alice).json()["jobs"][0]
    event = client.get(f"/v1/jobs/{created['id']}/events", headers=alice).json()["events"][0]
    for stamp in (created["created_at"], read["created_at"], listed["created_at"], event["created_at"]):
        assert stamp.endswith(("Z", "+00:00")), stamp
