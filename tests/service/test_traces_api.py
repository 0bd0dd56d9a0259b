"""Production traces over HTTP on a real store: idempotent ingest, late outcomes, filters and
cursor pages, team isolation, and bad input (each error names the field; a rejected batch writes
nothing). Plus the CLI's import, export and stats against a service process."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from environments import build as build_environment
from service.core.config import Settings
from service.main import create_app
from tests.conftest import ROOT
from tests.service.conftest import ServiceProcess, auth

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def trace(trace_id: str, outcome: str | None = "resolved", model: str = "support-agent", version: str = "v1",
          at: datetime = T0, **extra) -> dict:
    """A support conversation as a deployment logs it: a tool call and its answer, then a reply
    with OpenAI-shaped logprobs."""
    return {"trace_id": trace_id, "model": model, "model_version": version, "created_at": at.isoformat(),
            "messages": [
                {"role": "system", "content": "You are the support agent."},
                {"role": "user", "content": "Where is order 123?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"order": 123}'}}],
                 "logprobs": {"token_ids": [17, 4, 99], "logprobs": [-0.5, -0.01, -1.25]}},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
                {"role": "assistant", "content": "It has shipped.", "logprobs": {"content": [
                    {"token": "It", "logprob": -0.1}, {"token": " has", "logprob": -0.2},
                    {"token": " shipped", "logprob": -0.3}, {"token": ".", "logprob": 0.0}]}},
            ],
            **({"outcome": {"outcome": outcome}} if outcome else {}), **extra}


@pytest.fixture
def alice(client, teams):
    client.headers.update(auth(teams.key("alice")[0]))
    return client


def ids(page: dict) -> list[str]:
    return [t["trace_id"] for t in page["traces"]]


def test_the_same_trace_id_is_stored_once_and_a_late_outcome_updates_it(alice):
    first = alice.post("/v1/traces", json={"traces": [trace("c-1", outcome=None), trace("c-1", outcome=None)]})
    assert first.status_code == 201
    assert first.json() == {"received": 2, "stored": 1, "duplicates": ["c-1"]}
    again = alice.post("/v1/traces", json={"traces": [trace("c-1", outcome=None),
                                                      trace("c-2", metadata={"channel": "chat"})]})
    assert again.status_code == 201 and again.json() == {"received": 2, "stored": 1, "duplicates": ["c-1"]}
    retried = alice.post("/v1/traces", json={"traces": [trace("c-2", metadata={"channel": "chat"})]})
    assert retried.status_code == 200 and retried.json()["stored"] == 0
    assert ids(alice.get("/v1/traces").json()) == ["c-1", "c-2"]
    assert alice.get("/v1/traces/c-2").json()["metadata"] == {"channel": "chat"}

    stored = alice.get("/v1/traces/c-1").json()
    assert stored["outcome"] is None and stored["outcome_at"] is None  # the duplicate changed nothing
    assert stored["messages"][4]["logprobs"]["content"][1] == {"token": " has", "logprob": -0.2}
    assert alice.get("/v1/traces", params={"pending": True}).json()["traces"][0]["trace_id"] == "c-1"

    hours_later = alice.post("/v1/traces/c-1/outcome", json={"outcome": {"outcome": "escalated"}})
    assert hours_later.status_code == 200, hours_later.text
    assert hours_later.json()["outcome"] == {"outcome": "escalated"} and hours_later.json()["outcome_at"]
    merged = alice.post("/v1/traces/c-1/outcome", json={"outcome": {"csat": 2}}).json()
    assert merged["outcome"] == {"outcome": "escalated", "csat": 2}
    replaced = alice.post("/v1/traces/c-1/outcome", json={"outcome": {"outcome": "resolved"}, "replace": True})
    assert replaced.json()["outcome"] == {"outcome": "resolved"}
    assert alice.get("/v1/traces", params={"pending": True}).json()["traces"] == []


def test_filters_and_cursor_pages(alice):
    batch = [trace(f"t-{i:02d}", outcome=["resolved", "escalated", "violation", None][i % 4],
                   version="v1" if i < 12 else "v2", at=T0 + timedelta(hours=i)) for i in range(25)]
    batch.append({**trace("edit-1", outcome=None, model="tab"), "outcome": {"accepted": False}})
    assert alice.post("/v1/traces", json={"traces": batch[::-1]}).status_code == 201  # stored out of order

    pages, cursor = [], None
    while True:
        page = alice.get("/v1/traces", params={"model": "support-agent", "limit": 10,
                                               **({"cursor": cursor} if cursor else {})}).json()
        pages.append(ids(page))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert sum(pages, []) == [f"t-{i:02d}" for i in range(25)]  # in the order they happened, each once

    def select(**params) -> list[str]:
        return ids(alice.get("/v1/traces", params={"limit": 1000, **params}).json())

    assert select(outcome="resolved") == [f"t-{i:02d}" for i in range(0, 25, 4)]
    assert select(outcome="outcome:violation", model_version="v2") == ["t-14", "t-18", "t-22"]
    assert select(outcome="accepted:false") == ["edit-1"]
    assert select(model="tab", outcome="accepted:true") == []
    assert select(model="support-agent", pending=True) == [f"t-{i:02d}" for i in range(3, 25, 4)]
    window = {"since": (T0 + timedelta(hours=5)).isoformat(), "until": (T0 + timedelta(hours=8)).isoformat()}
    assert select(**window) == ["t-05", "t-06", "t-07"]

    stats = alice.get("/v1/traces/stats", params={"model": "support-agent"}).json()
    assert stats["label"] == "outcome"
    rows = {(r["model_version"], r["day"]): r for r in stats["rows"]}
    assert set(rows) == {("v1", "2026-11-01"), ("v2", "2026-11-01"), ("v2", "2026-11-02")}
    v1 = rows[("v1", "2026-11-01")]
    assert (v1["traces"], v1["labelled"], v1["values"]) == (12, 9, {"resolved": 3, "escalated": 3, "violation": 3})
    assert v1["rates"]["resolved"] == pytest.approx(1 / 3)
    tab = alice.get("/v1/traces/stats", params={"model": "tab", "label": "accepted"}).json()["rows"]
    assert tab[0]["values"] == {"false": 1} and tab[0]["rates"] == {"false": 1.0}

    for params, field in (({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"), ({"cursor": "not a cursor"}, "cursor"),
                          ({"outcome": "outcome:"}, "outcome.0"), ({"since": "2026-11-01T09:00:00"}, "since"),
                          ({"until": "0.5"}, "until"), ({"pending": "0"}, "pending")):
        bad = alice.get("/v1/traces", params=params)
        assert bad.status_code == 422 and bad.json()["error"]["field"].endswith(field), bad.text


def test_another_teams_traces_are_not_found(alice, teams):
    assert alice.post("/v1/traces", json={"traces": [trace("shared-id")]}).status_code == 201
    bob = {"Authorization": f"Bearer {teams.key('bob')[0]}"}
    assert alice.get("/v1/traces/shared-id", headers=bob).status_code == 404
    assert alice.post("/v1/traces/shared-id/outcome", json={"outcome": {"outcome": "violation"}},
                      headers=bob).status_code == 404
    assert alice.get("/v1/traces", headers=bob).json()["traces"] == []
    assert alice.get("/v1/traces/stats", headers=bob).json()["rows"] == []
    # Trace ids are per team: bob's own "shared-id" is a new trace, and alice's is untouched.
    assert alice.post("/v1/traces", json={"traces": [trace("shared-id", outcome="violation")]},
                      headers=bob).json()["stored"] == 1
    assert alice.get("/v1/traces/shared-id").json()["outcome"] == {"outcome": "resolved"}


def _broken(path: list, value) -> dict:
    t = trace("broken")
    target = t
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return t


BAD_TRACES = [
    (["messages", 1, "role"], KeyError, "traces.2.messages.1.role", "Field required"),
    (["messages", 1, "role"], "robot", "traces.2.messages.1.role", "'tool'"),
    (["messages", 1, "content"], {"text": "hi"}, "traces.2.messages.1.content", "valid string"),
    (["messages", 4, "logprobs", "content", 3, "token"], "!", "traces.2.messages.4.logprobs.content",
     "differ from character 14"),
    (["messages", 2, "logprobs", "logprobs"], [-0.5, -0.01], "traces.2.messages.2.logprobs.logprobs",
     "2 logprobs for 3 token ids"),
    (["messages", 4, "logprobs", "content", 0, "logprob"], 0.5, "traces.2.messages.4.logprobs.content.0.logprob",
     "less than or equal to 0"),
    (["messages", 3, "tool_call_id"], "call_9", "traces.2.messages.3.tool_call_id", "matches no tool call"),
    (["messages", 1, "logprobs"], {"token_ids": [1], "logprobs": [-1.0]}, "traces.2.messages.1.logprobs",
     "only assistant messages"),
    (["messages"], [{"role": "user", "content": "hello?"}], "traces.2.messages", "at least one assistant"),
    (["trace_id"], "has spaces", "traces.2.trace_id", "pattern"),
    (["outcome"], {"outcome": ["nested"]}, "traces.2.outcome.outcome", ""),
    (["created_at"], "2026-11-01T09:00:00", "traces.2.created_at", "timezone"),
]


@pytest.mark.parametrize(("path", "value", "field", "says"), BAD_TRACES,
                         ids=[f[2].split(".", 2)[-1] + f"-{i}" for i, f in enumerate(BAD_TRACES)])
def test_a_bad_trace_names_its_field_and_its_batch_writes_nothing(alice, path, value, field, says):
    alice.post("/v1/traces", json={"traces": [trace("kept")]})
    batch = [trace("new-1"), trace("kept", outcome="violation"), _broken(path, value)]
    r = alice.post("/v1/traces", json={"traces": batch})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and says in error["message"], error
    assert ids(alice.get("/v1/traces").json()) == ["kept"]
    assert alice.get("/v1/traces/kept").json()["outcome"] == {"outcome": "resolved"}


@pytest.mark.one_store  # refused before the store is touched
def test_size_limits_answer_413_naming_the_field(database_url, tmp_path, ray_head, teams):
    from fastapi.testclient import TestClient

    app = create_app(Settings(database_url=database_url, launch=False, runs_dir=tmp_path / "runs",
                              ray_address=ray_head, max_trace_batch=3, max_trace_bytes=4000,
                              max_trace_batch_bytes=20_000))
    with TestClient(app, headers=auth(teams.key("alice")[0])) as c:
        r = c.post("/v1/traces", json={"traces": [trace(f"t{i}") for i in range(4)]})
        assert r.status_code == 413 and r.json()["error"]["field"] == "traces", r.text
        assert "limit is 3" in r.json()["error"]["message"]
        big = trace("big")
        big["messages"][1]["content"] = "x" * 5000
        r = c.post("/v1/traces", json={"traces": [trace("small"), big]})
        assert r.status_code == 413 and r.json()["error"]["field"] == "traces.1", r.text
        r = c.post("/v1/traces", content=b'{"traces": [' + b" " * 20_001 + b"]}",
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "FLYWHEEL_MAX_TRACE_BATCH_BYTES" in r.json()["error"]["message"]
        assert c.get("/v1/traces").json()["traces"] == []
        # The other routes keep their own (smaller) limit.
        r = c.post("/v1/traces/small/outcome", json={"outcome": {"note": "y" * 100}})
        assert r.status_code == 404


def test_cli_imports_exports_and_prints_stats(tmp_path, ray_head):
    service = ServiceProcess(tmp_path, ray_head)
    env = {"FLYWHEEL_URL": service.url, "FLYWHEEL_API_KEY": service.key, "PATH": "", "COLUMNS": "200"}

    def flywheel(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.cli", "traces", *args], env={**env, "HOME": str(tmp_path)},
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    try:
        logs = tmp_path / "logs.jsonl"
        rows = [trace(f"c-{i}", outcome=["resolved", "escalated"][i % 2], at=T0 + timedelta(minutes=i))
                for i in range(7)]
        logs.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
        done = flywheel("import", str(logs), "--batch", "3")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "7 traces stored, 0 already there" in done.stdout

        out = tmp_path / "resolved.jsonl"
        done = flywheel("export", "-o", str(out), "--outcome", "resolved")
        assert done.returncode == 0, done.stdout + done.stderr
        exported = [json.loads(line) for line in out.read_text().splitlines()]
        assert [t["trace_id"] for t in exported] == ["c-0", "c-2", "c-4", "c-6"]
        assert exported[0]["messages"] == service.client.get("/v1/traces/c-0").json()["messages"]
        done = flywheel("export", "-o", str(tmp_path / "resolved.parquet"), "--outcome", "resolved")
        assert done.returncode == 0 and "4 traces written" in done.stdout, done.stdout + done.stderr
        tasks = build_environment("traces", {"snapshot": str(tmp_path / "resolved.parquet")}).tasks("train")
        assert [(t.id, t.columns["outcome"]) for t in tasks] == [(f"c-{i}", "resolved") for i in (0, 2, 4, 6)]

        broken = copy.deepcopy(rows) + [trace("c-7"), _broken(["messages", 1, "role"], "robot")]
        logs.write_text("\n".join(json.dumps(r) for r in broken))
        done = flywheel("import", str(logs), "--batch", "4")
        assert done.returncode == 1
        assert f"{logs}:9: messages.1.role" in done.stdout, done.stdout  # the file's line, not the batch index
        assert "lines 9-9 were not stored" in done.stdout and "1 traces stored before this" in done.stdout

        done = flywheel("stats")
        assert done.returncode == 0, done.stdout + done.stderr
        line = next(row for row in done.stdout.splitlines() if "support-agent" in row)
        assert line.split() == ["support-agent", "v1", "2026-11-01", "8", "8", "37.5%", "62.5%"]
    finally:
        service.stop()
