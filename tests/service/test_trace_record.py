"""The record keeps what it was told: a trace id sent again with another body is a 409 (it was a
silent drop, and the real conversation under a reused id was lost); an outcome rewritten later
keeps its history (who, when, the value before); a team's traces are bounded by a storage quota;
the store's files are readable by the service's user alone."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.core.store import Team
from tests.service.conftest import auth
from tests.service.test_traces_api import trace


@pytest.fixture
def alice(client, teams):
    key = teams.key("alice")[0]
    client.headers.update(auth(key))
    return client


def test_a_trace_id_sent_again_with_another_body_is_409_and_writes_nothing(alice):
    assert alice.post("/v1/traces", json={"traces": [trace("c-1", outcome=None)]}).status_code == 201
    forged = trace("c-1", outcome=None)
    forged["messages"][-1]["content"] = "A made-up reply."
    forged["messages"][-1].pop("logprobs")
    r = alice.post("/v1/traces", json={"traces": [trace("c-9"), forged]})
    assert r.status_code == 409 and r.json()["error"]["field"] == "traces.1.messages", r.text
    assert [t["trace_id"] for t in alice.get("/v1/traces").json()["traces"]] == ["c-1"]  # c-9 not written either
    in_batch = alice.post("/v1/traces", json={"traces": [trace("c-2"), trace("c-2", model="other")]})
    assert in_batch.status_code == 409 and in_batch.json()["error"]["field"] == "traces.1.model"
    same = alice.post("/v1/traces", json={"traces": [trace("c-1", outcome=None)]})
    assert same.status_code == 200 and same.json()["duplicates"] == ["c-1"]  # a retry is still fine
    labelled = alice.post("/v1/traces", json={"traces": [trace("c-1", outcome="resolved")]})
    assert labelled.status_code == 409 and labelled.json()["error"]["field"] == "traces.0.outcome"


def test_an_outcome_rewritten_keeps_its_history(client, teams):
    first, second = teams.key("alice")[0], teams.key("alice")[0]
    assert client.post("/v1/traces", json={"traces": [trace("c-1")]}, headers=auth(first)).status_code == 201
    client.post("/v1/traces/c-1/outcome", json={"outcome": {"outcome": "escalated"}}, headers=auth(second))
    client.post("/v1/traces/c-1/outcome", json={"outcome": {"csat": 4}}, headers=auth(first))
    got = client.get("/v1/traces/c-1", headers=auth(first)).json()
    assert got["outcome"] == {"outcome": "escalated", "csat": 4}
    history = got["outcome_history"]
    assert [(h["old"], h["new"], h["by"]) for h in history] == [
        ({"outcome": "resolved"}, {"outcome": "escalated"}, second[:10]),
        ({"outcome": "escalated"}, {"outcome": "escalated", "csat": 4}, first[:10])]
    assert history[0]["at"] <= history[1]["at"]


@pytest.mark.one_store
def test_a_teams_trace_storage_is_bounded(alice, teams):
    with teams.sessions() as s:
        s.query(Team).filter_by(name="alice").one().max_trace_bytes = 2000
        s.commit()
    assert alice.post("/v1/traces", json={"traces": [trace("c-1"), trace("c-2")]}).status_code == 201
    r = alice.post("/v1/traces", json={"traces": [trace("c-3"), trace("c-4")]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "trace_quota"
    assert "2,000" in r.json()["error"]["message"] and "MAX_TRACE_BYTES_PER_TEAM" in r.json()["error"]["message"]
    assert len(alice.get("/v1/traces").json()["traces"]) == 2
    other = teams.key("bob")[0]  # another team's quota is its own
    assert alice.post("/v1/traces", json={"traces": [trace("c-3")]}, headers=auth(other)).status_code == 201
    # Outcomes count too: each change is kept (old and new), so rewrites cannot grow a team's storage.
    big = {f"label{i}": "x" * 200 for i in range(60)}
    r = alice.post("/v1/traces/c-1/outcome", json={"outcome": big})
    assert r.status_code == 413 and r.json()["error"]["field"] == "outcome"
    too_many = alice.post("/v1/traces/c-1/outcome", json={"outcome": {f"k{i}": 1 for i in range(65)}})
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "outcome"


@pytest.mark.one_store
def test_the_store_files_are_private(alice, database_url):
    alice.post("/v1/traces", json={"traces": [trace("c-1")]})
    db = Path(database_url.removeprefix("sqlite:///"))
    files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
    assert len(files) >= 2  # the file and its write-ahead log
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
