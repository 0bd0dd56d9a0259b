"""Values that JSON parsers take and the store or its readers cannot keep are refused at the door,
for every route, with a 422 naming the field: NaN and infinities, integers past 64 bits, lone
UTF-16 surrogates, NUL characters, nesting past 32 levels, times a zone pushes out of the
calendar. Each broke a route (or a whole team's reads) before."""

from __future__ import annotations

import tomllib

import pytest

from tests.conftest import DIGITS, ROOT
from tests.service.conftest import auth
from tests.service.test_traces_api import trace

pytestmark = pytest.mark.one_store


@pytest.fixture
def alice(client, teams):
    client.headers.update(auth(teams.key("alice")[0]))
    return client


def send_raw(client, path: str, text: str):
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


def batch_with_outcome(raw_value: str) -> str:
    return ('{"traces": [{"trace_id": "t-1", "model": "m", "messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "hello"}], "outcome": {"csat": ' + raw_value + '}}]}')


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400", "9" * 4000, str(2**63)])
def test_a_number_no_store_can_keep_is_422_and_the_teams_reads_still_work(alice, raw):
    r = send_raw(alice, "/v1/traces", batch_with_outcome(raw))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "traces.0.outcome.csat"
    assert alice.post("/v1/traces", json={"traces": [trace("t-2", outcome=None)]}).status_code == 201
    late = send_raw(alice, "/v1/traces/t-2/outcome", '{"outcome": {"csat": ' + raw + "}}")
    assert late.status_code == 422 and late.json()["error"]["field"] == "outcome.csat"
    # Nothing bad was stored: the outcome-filtered read and the stats answer for this team.
    assert alice.get("/v1/traces", params={"outcome": "csat:4"}).status_code == 200
    assert alice.get("/v1/traces/stats", params={"label": "csat"}).status_code == 200


def test_stats_of_numbers_near_the_float_limit_is_a_number(alice):
    alice.post("/v1/traces", json={"traces": [trace(f"big-{i}", outcome=None) for i in range(2)]})
    for i in range(2):
        assert alice.post(f"/v1/traces/big-{i}/outcome", json={"outcome": {"csat": 1.5e308}}).status_code == 200
    rows = alice.get("/v1/traces/stats", params={"label": "csat"}).json()["rows"]
    assert rows[0]["mean"] == pytest.approx(1.5e308)


def test_a_lone_surrogate_is_422_in_a_trace_and_in_a_spec(alice):
    text = batch_with_outcome('"ok"').replace('"hello"', '"bad \\ud800 text"')
    r = send_raw(alice, "/v1/traces", text)
    assert r.status_code == 422 and r.json()["error"]["field"] == "traces.0.messages.1.content"
    assert "surrogate" in r.json()["error"]["message"]
    r = send_raw(alice, "/v1/jobs", '{"name": "x\\udfff", "model": {"path": "m"}}')
    assert r.status_code == 422 and r.json()["error"]["field"] == "name"
    r = send_raw(alice, "/v1/jobs", '{"name": "x", "model": {"path": "m"}, "\\ud800": 1}')
    assert r.status_code == 422 and "surrogate" in r.json()["error"]["message"]


def test_a_nul_in_a_dataset_path_is_422_not_a_check_traceback(alice):
    spec = {"name": "nul", "model": {"path": "sshleifer/tiny-gpt2"},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS) + "\x00.jsonl"}},
            "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}]}
    for path in ("/v1/jobs", "/v1/jobs:validate"):
        r = alice.post(path, json=spec)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "environment.config.train"
        assert "Traceback" not in r.text and "site-packages" not in r.text


@pytest.mark.parametrize("depth", [40, 300, 1000, 5000])
def test_metadata_nested_deep_is_422(alice, depth):
    text = batch_with_outcome('"ok"').replace('"outcome": {"csat": "ok"}',
                                              '"metadata": {"x": ' + "[" * depth + "]" * depth + "}")
    r = send_raw(alice, "/v1/traces", text)
    assert r.status_code == 422 and "nested deeper than 32" in r.json()["error"]["message"]
    assert alice.get("/v1/traces").json()["traces"] == []


def test_a_time_its_zone_pushes_out_of_the_calendar_is_422(alice):
    r = alice.post("/v1/traces", json={"traces": [trace("early") | {"created_at": "0001-01-01T00:00:00+14:00"}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "traces.0.created_at"
    for name in ("since", "until"):
        r = alice.get("/v1/traces", params={name: "0001-01-01T00:00:00+14:00"})
        assert r.status_code == 422 and r.json()["error"]["field"] == f"query.{name}"
    spec = tomllib.loads((ROOT / "configs" / "support_desk_traces.toml").read_text())
    spec["environment"]["config"]["select"]["since"] = "0001-01-01T00:00:00+14:00"
    r = alice.post("/v1/jobs", json=spec)
    assert r.status_code == 422 and r.json()["error"]["field"].endswith("select.since"), r.text


def test_a_nul_in_a_query_or_a_path_is_422(alice):
    """Postgres refuses NUL in a query's text: it is refused before any store sees it."""
    for params, field in (({"model": "\x00"}, "query.model"), ({"label": "a\x00b"}, "query.label")):
        path = "/v1/traces/stats" if "label" in params else "/v1/traces"
        r = alice.get(path, params=params)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    for path in ("/v1/jobs/job%00x", "/v1/models/m%00", "/v1/deployments/d%00/keys"):
        r = alice.get(path)
        assert r.status_code == 422 and r.json()["error"]["field"] == "path", (path, r.text)
