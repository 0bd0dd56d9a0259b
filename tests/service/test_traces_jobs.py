"""A job on the traces environment selects the team's traces; the service freezes the selection
into a content-addressed Parquet snapshot when the job is submitted, records its hash and count on
the job, and later traces never change it. Bad selections are refused naming the field."""

import pytest

from environments import build as build_environment
from environments.snapshot import snapshot_hash
from service.traces.snapshot import folder
from tests.service.conftest import auth

pytestmark = pytest.mark.slow


@pytest.fixture
def alice(teams):
    return auth(teams.key("alice")[0])


def trace(i: int, outcome: str) -> dict:
    return {"trace_id": f"c-{i}", "model": "agent", "created_at": f"2026-11-01T10:{i:02d}:00Z",
            "outcome": {"outcome": outcome},
            "messages": [{"role": "user", "content": f"where is order {i}?"},
                         {"role": "assistant", "content": f"order {i} shipped"}]}


def spec(tiny_model, **select) -> dict:
    return {"name": "from-traces", "model": {"path": str(tiny_model)},
            "environment": {"name": "traces", "config": {"select": {"model": "agent", **select}}},
            "algorithm": {"type": "filtered_sft"}, "rewards": [{"name": "resolution"}],
            "rollout": {"prompts_per_step": 4}, "learner": {"micro_batch": 2}, "schedule": {"steps": 2}}


def test_a_selection_is_frozen_into_a_snapshot_when_the_job_is_submitted(client, alice, app, tiny_model):
    runs = folder(app.state.settings.runs_dir)
    stored = client.post("/v1/traces", json={"traces": [trace(i, ["resolved", "escalated"][i % 2]) for i in range(6)]},
                         headers=alice)
    assert stored.status_code == 201
    first = client.post("/v1/jobs", json=spec(tiny_model), headers={**alice, "Idempotency-Key": "k1"})
    assert first.status_code == 201, first.text
    frozen = first.json()["traces"]
    assert frozen["count"] == 6 and snapshot_hash(runs / f"{frozen['sha256']}.parquet") == frozen["sha256"]
    tasks = build_environment("traces", {"snapshot": str(runs / f"{frozen['sha256']}.parquet")}).tasks("train")
    assert [t.id for t in tasks] == [f"c-{i}" for i in range(6)]  # in the order they happened

    # The same request again is the same job; later traces change neither it nor its snapshot.
    again = client.post("/v1/jobs", json=spec(tiny_model), headers={**alice, "Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    client.post("/v1/traces", json={"traces": [trace(i, "resolved") for i in (6, 7)]}, headers=alice)
    second = client.post("/v1/jobs", json=spec(tiny_model), headers=alice).json()
    assert second["traces"]["count"] == 8 and second["traces"]["sha256"] != frozen["sha256"]
    assert snapshot_hash(runs / f"{frozen['sha256']}.parquet") == frozen["sha256"]
    assert client.get(f"/v1/jobs/{first.json()['id']}", headers=alice).json()["traces"] == frozen
    # Filters and a limit (the most recent N, still in order).
    picked = client.post("/v1/jobs", json=spec(tiny_model, outcome=["resolved"], limit=3), headers=alice).json()
    assert picked["traces"]["count"] == 3


def test_bad_selections_are_refused_naming_the_field(client, alice, teams, tiny_model):
    client.post("/v1/traces", json={"traces": [trace(0, "resolved")]}, headers=alice)
    bob = auth(teams.key("bob")[0])
    cases = [(spec(tiny_model, since="yesterday"), alice, "environment.config.select.since"),
             (spec(tiny_model, outcome=["outcome:"]), alice, "environment.config.select.outcome.0"),
             (spec(tiny_model, model_version="v9"), alice, "environment.config.select"),  # matches nothing
             (spec(tiny_model), bob, "environment.config.select")]                        # alice's, not bob's
    both = spec(tiny_model)
    both["environment"]["config"]["snapshot"] = "runs/x.parquet"
    cases.append((both, alice, "environment.config.snapshot"))
    for body, who, field in cases:
        bad = client.post("/v1/jobs", json=body, headers=who)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == field, bad.text
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 0
