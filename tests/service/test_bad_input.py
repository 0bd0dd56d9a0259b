"""Bad input is refused with the JSON error naming the field (or 413), never a 500, and nothing
is written: numbers past 64 bits, oversized bodies, non-finite or absurd spec values, control
characters in names and paths, a reused Idempotency-Key (tests/service/test_jobs_api.py)."""

import json

import pytest

from tests.conftest import DIGITS
from tests.service.conftest import auth

# Refusals happen before the store is touched: SQLite alone (test_jobs_api.py runs the store's own
# behaviour on PostgreSQL too).
pytestmark = pytest.mark.one_store


@pytest.fixture
def spec(tiny_model) -> dict:
    return {"name": "demo", "model": {"path": str(tiny_model)},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
            "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}], "schedule": {"steps": 3}}


@pytest.fixture
def alice(teams):
    return auth(teams.key("alice")[0])


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/v1/jobs", {"offset": 2**64}, "query.offset"),
    ("/v1/jobs", {"offset": -1}, "query.offset"),
])
def test_query_numbers_past_64_bits_are_422_not_500(client, alice, path, params, field):
    r = client.get(path, params=params, headers=alice)
    assert r.status_code == 422 and r.json()["error"]["field"] == field


def test_a_priority_out_of_range_is_refused_before_the_checks(client, alice, spec):
    r = client.post("/v1/jobs", json=spec, params={"priority": 10**30}, headers=alice)
    assert r.status_code == 422 and r.json()["error"]["field"] == "query.priority"
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 0


def test_event_and_metric_cursors_past_64_bits_are_422(client, alice, spec):
    job = client.post("/v1/jobs", json=spec, headers=alice).json()
    for path, name in (("events", "after"), ("metrics", "after_step")):
        r = client.get(f"/v1/jobs/{job['id']}/{path}", params={name: 2**70}, headers=alice)
        assert r.status_code == 422 and r.json()["error"]["field"] == f"query.{name}", path


def test_a_body_over_the_limit_is_413_declared_or_streamed(client, alice, spec):
    big = {**spec, "name": "x" * 2_000_000}
    r = client.post("/v1/jobs", json=big, headers=alice)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large" and "1,048,576 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit still holds
        yield b'{"name": "'
        for _ in range(40):
            yield b"y" * 50_000
        yield b'"}'

    streamed = client.post("/v1/jobs", content=chunks(), headers={**alice, "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 0


@pytest.mark.parametrize(("mutate", "field", "fragment"), [
    (lambda s: {**s, "schedule": {"steps": 10**30}}, "schedule.steps", "64-bit"),
    (lambda s: {**s, "rollout": {"temperature": 1e-320}}, "rollout.temperature", "greater than or equal to"),
    (lambda s: {**s, "algorithm": {"group_size": 10**9}}, "algorithm.group_size", "less than or equal to"),
    (lambda s: {**s, "rewards": [{"name": "regex", "config": {"pattern": "x"}}] * 10_000}, "rewards",
     "at most 32"),
    (lambda s: {**s, "rewards": [{"import_path": "pkg\x00.mod:fn"}]}, "rewards.0.import_path", "NUL character"),
    (lambda s: {**s, "environment": {"name": "data\x07set"}}, "environment.name", "control character"),
])
def test_absurd_spec_values_are_refused_naming_the_field(client, alice, spec, mutate, field, fragment):
    r = client.post("/v1/jobs", json=mutate(spec), headers=alice)
    assert r.status_code == 422, r.text
    errors = {e["field"]: e["message"] for e in r.json()["error"]["errors"]}
    assert fragment in errors[field], errors
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 0


def test_a_number_that_overflows_to_infinity_is_refused(client, alice, spec):
    body = json.dumps({**spec, "learner": {"lr": 1.0}}).replace('"lr": 1.0', '"lr": 1e999')
    r = client.post("/v1/jobs", content=body, headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "learner.lr"
    assert "beyond a 64-bit float" in r.json()["error"]["message"]
