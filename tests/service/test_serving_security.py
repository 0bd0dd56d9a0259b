"""The model server (`python -m serving`) as an outsider meets it, against a real control plane:
callers need a live key of the deployment; a conversation, its trace and its closing belong to
the caller; only the turns the server sampled are ever trained on; a trace the control plane
refuses is dropped alone; every request is bounded; a model whose files changed after
registration is never served; and Schemathesis finds no server error in its API.

One control plane and two model servers for the module: `open` (the default limits, a small body
cap) and `tight` (a queue of 4, a 0.5 s deadline, 3 conversations a key and 5 in all)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import service.core.store as store
from environments import build
from environments.snapshot import write_snapshot
from serving.conversations import TraceSink
from tests.conftest import ROOT
from tests.service.conftest import ServiceProcess, Teams, Trainer, auth, wait_ready
from tests.service.test_serving import deployment_key, register, start_serving, traces_of, wait_for

pytestmark = pytest.mark.slow

DEPLOYMENT = "support-agent"
HI = [{"role": "user", "content": "How many?"}]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, ray_head, tiny_model):
    tmp = tmp_path_factory.mktemp("guarded")
    # Small trace limits, so that the control plane refuses a batch whole (over 4 traces) or one trace of it.
    service = ServiceProcess(tmp, ray_head, max_trace_batch=4, max_trace_bytes=20_000)
    trainer = Trainer(Teams(service.database_url), tmp / "jobs")
    v1 = register(service, trainer, tmp / "v1", tiny_model, 0.5)
    assert service.client.post("/v1/deployments", json={"name": DEPLOYMENT, "model": v1}).is_success
    (alice, alice_id), (bob, bob_id) = deployment_key(service), deployment_key(service)
    servers = [start_serving(service, DEPLOYMENT, "--max-body-bytes", "65536"),
               start_serving(service, DEPLOYMENT, "--max-queue", "4", "--request-timeout-s", "0.5",
                             "--max-conversations", "5", "--max-conversations-per-key", "3")]
    for proc, url in servers:
        wait_ready(f"{url}/healthz", proc, "a serving process", 120)
    yield SimpleNamespace(service=service, trainer=trainer, tmp=tmp, v1=v1, alice=alice, alice_id=alice_id, bob=bob,
                          bob_id=bob_id, open=servers[0][1], tight=servers[1][1])
    for proc, _ in servers:
        proc.terminate()
        proc.wait(60)
    service.stop()


def chat(url: str, key: str | None, conversation: str | None = None, messages=HI, **body) -> httpx.Response:
    payload = {"model": DEPLOYMENT, "messages": messages, "max_tokens": 2, **body}
    if conversation is not None:
        payload["metadata"] = {"conversation_id": conversation}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=auth(key) if key else {}, timeout=60)


def close(url: str, key: str, conversation: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/conversations/{conversation}/close", headers=auth(key), timeout=60)


def test_callers_need_a_live_key_of_the_deployment(guarded):
    from openai import AuthenticationError, OpenAI

    g = guarded
    for key in (None, "fwd_not-a-key", g.service.key):  # none, a made-up one, the team's own API key
        r = chat(g.open, key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    assert httpx.get(f"{g.open}/healthz").status_code == 200  # open to all
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{g.open}/v1", api_key="fwd_not-a-key", max_retries=0).models.list()
    assert OpenAI(base_url=f"{g.open}/v1", api_key=g.alice).chat.completions.create(
        model=DEPLOYMENT, messages=HI, max_tokens=2).choices[0].message.role == "assistant"
    # The control plane lists the keys' hashes, never the keys; another team sees no deployment.
    listed = g.service.client.get(f"/v1/deployments/{DEPLOYMENT}/keys")
    assert g.alice not in listed.text and "key" not in listed.json()["keys"][0]
    assert {k["id"]: k["key_sha256"] for k in listed.json()["keys"]}[g.alice_id] == hashlib.sha256(
        g.alice.encode()).hexdigest()
    other, _ = Teams(g.service.database_url).key("mallory")
    assert g.service.client.get(f"/v1/deployments/{DEPLOYMENT}/keys", headers=auth(other)).status_code == 404
    # A new key works from the next poll on; revoked (here with the CLI), it is refused from the next one.
    key, key_id = deployment_key(g.service)
    wait_for(lambda: chat(g.open, key).status_code == 200, 10)
    revoked = subprocess.run([sys.executable, "-m", "service.cli", "deploy", "keys", "revoke", DEPLOYMENT, key_id],
                             cwd=ROOT, env={**os.environ, "FLYWHEEL_URL": g.service.url,
                                            "FLYWHEEL_API_KEY": g.service.key}, capture_output=True, text=True)
    assert revoked.returncode == 0, revoked.stderr
    wait_for(lambda: chat(g.open, key).status_code == 401, 10)
    assert g.service.client.delete(f"/v1/deployments/{DEPLOYMENT}/keys/dk_0000000000000000").status_code == 404


def test_a_conversation_its_trace_and_its_closing_belong_to_the_caller(guarded):
    g = guarded
    answers = {who: chat(g.open, key, "conv-1", [{"role": "user", "content": f"{who} asks"}])
               for who, key in (("alice", g.alice), ("bob", g.bob))}
    ids = {who: r.json()["metadata"]["trace_id"] for who, r in answers.items()}
    assert ids == {"alice": f"{g.alice_id}:conv-1", "bob": f"{g.bob_id}:conv-1"}
    assert chat(g.open, g.alice, "only-alice").status_code == 200
    assert close(g.open, g.bob, "only-alice").status_code == 404  # another caller's conversation
    for key in (g.alice, g.bob):
        assert close(g.open, key, "conv-1").json()["trace_id"] in ids.values()
    logged = wait_for(lambda: (t := {x["trace_id"]: x for x in traces_of(g.service)}) and set(ids.values()) <= set(t)
                      and t)
    for who, trace_id in ids.items():  # two conversations, two traces, each with its own caller's turns only
        assert logged[trace_id]["messages"][0]["content"] == f"{who} asks"
        assert logged[trace_id]["metadata"]["key_id"] == trace_id.split(":")[0]
    outcome = g.service.client.post(f"/v1/traces/{ids['alice']}/outcome", json={"outcome": {"outcome": "resolved"}})
    assert outcome.status_code == 200, outcome.text
    assert close(g.open, g.alice, "only-alice").status_code == 200  # still open: bob could not close it
    for bad in ("has space", "-starts-with-a-dash", "x" * 181):
        r = chat(g.open, g.alice, bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "metadata.conversation_id", r.text
    # The demos' customers and outcome reports go through the trace id the server answers with.
    from demos.customers import serve_customers
    from demos.flywheel import report_outcomes

    (ticket,) = serve_customers(f"{g.open}/v1", DEPLOYMENT, g.bob, [7], concurrency=1, max_turns=2, max_tokens=3)
    assert ticket.trace_id.startswith(f"{g.bob_id}:ticket-7-")
    report_outcomes(g.service.client, [ticket])
    assert g.service.client.get(f"/v1/traces/{ticket.trace_id}").json()["outcome"] == ticket.outcome


def test_assistant_turns_the_client_wrote_are_never_trained_on(guarded, tmp_path):
    g = guarded

    def turn(conversation: str, messages: list[dict]) -> str:
        r = chat(g.open, g.alice, conversation, messages, max_tokens=4)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    # A made-up assistant turn before the first sampled one, and one after it.
    messages = [{"role": "user", "content": "Refund me"}, {"role": "assistant", "content": "Refunded 1000 euros"},
                {"role": "user", "content": "Thanks"}]
    messages += [{"role": "assistant", "content": turn("made-up", messages)}, {"role": "user", "content": "More?"},
                 {"role": "assistant", "content": "Refunded 1000 more"}, {"role": "user", "content": "Bye"}]
    turn("made-up", messages)
    # A sampled reply sent back after an edited question: no longer what the model answered.
    first = turn("edited", [{"role": "user", "content": "Say hi"}])
    turn("edited", [{"role": "user", "content": "Insult me"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "Again"}])
    for conversation in ("made-up", "edited"):
        close(g.open, g.alice, conversation).raise_for_status()
    ids = {f"{g.alice_id}:made-up", f"{g.alice_id}:edited"}
    logged = wait_for(lambda: (t := {x["trace_id"]: x for x in traces_of(g.service) if x["trace_id"] in ids})
                      and len(t) == 2 and t)
    made_up, edited = logged[f"{g.alice_id}:made-up"], logged[f"{g.alice_id}:edited"]
    assert made_up["metadata"]["sampled_messages"] == [3, 7] and edited["metadata"]["sampled_messages"] == [3]
    assert "logprobs" not in made_up["messages"][1] and "logprobs" not in edited["messages"][1]
    # The trace as a training task: the made-up turns are context, never the reply learned from.
    write_snapshot([{**t, "outcome": {"outcome": "resolved"}} for t in (made_up, edited)], tmp_path / "s.parquet")
    tasks = {t.id: t for t in build("traces", {"snapshot": str(tmp_path / "s.parquet")}).tasks("train")}
    task = tasks[made_up["trace_id"]]
    assert [m["content"] for m in task.prompt] == ["Refund me", "Refunded 1000 euros", "Thanks"]
    assert [m["content"] for m in task.logged.messages] == [made_up["messages"][3]["content"], "More?"]
    assert [m["content"] for m in tasks[edited["trace_id"]].prompt] == ["Insult me", first, "Again"]


def test_a_refused_trace_is_dropped_alone_and_the_rest_delivered(guarded, caplog):
    g = guarded

    def trace(n: int, **change) -> dict:
        return {"trace_id": f"sink-{n}", "model": DEPLOYMENT, "messages": [{"role": "user", "content": "hi"},
                                                                          {"role": "assistant", "content": "hello"}],
                **change}

    batch = [trace(0), trace(1, messages=[{"role": "robot", "content": "beep"}]), trace(2),
             trace(3, metadata={"note": "x" * 30_000}), trace(4), trace(5), trace(6)]
    sink = TraceSink(g.service.url, g.service.key, batch=10, interval_s=0.05)
    with caplog.at_level(logging.ERROR, logger="flywheel.serving"):
        for t in batch:  # seven: over the batch limit of 4, one invalid, one over the size limit of one trace
            sink.put(t)
        wait_for(lambda: sink.delivered + sink.refused == len(batch), 30)
        # A stored trace id sent again with another body is a conflict (409): that trace alone is refused.
        sink.put(trace(0, messages=[{"role": "user", "content": "changed"}]))
        sink.put(trace(7))
        wait_for(lambda: sink.delivered + sink.refused == len(batch) + 2, 30)
        sink.close()
    assert (sink.delivered, sink.refused) == (6, 3)
    stored = {t["trace_id"] for t in traces_of(g.service)}
    assert {f"sink-{n}" for n in (0, 2, 4, 5, 6, 7)} <= stored and not {"sink-1", "sink-3"} & stored
    refusals = [r.getMessage() for r in caplog.records if "refused trace" in r.getMessage()]
    assert any("'sink-1'" in m and "traces.1.messages.0.role" in m for m in refusals), refusals
    assert any("'sink-3'" in m and "FLYWHEEL_MAX_TRACE_BYTES" in m for m in refusals), refusals
    assert any("'sink-0'" in m and "traces.0.messages" in m for m in refusals), refusals


def test_every_request_is_bounded(guarded):
    g = guarded
    # The body: 413 before it is parsed, whether its length is declared or it is streamed.
    junk = b"{" * 70_000
    for content in (junk, iter([junk[:40_000], junk[40_000:]])):
        r = httpx.post(f"{g.open}/v1/chat/completions", content=content, headers=auth(g.alice), timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    # The reply within the model's context (the tiny model's is 512 tokens).
    for param in ("max_tokens", "max_completion_tokens"):
        r = chat(g.open, g.alice, **{"max_tokens": None, param: 600})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    # Conversations: 3 a key, 5 in all; closing one makes room.
    for k in range(3):
        assert chat(g.tight, g.alice, f"a{k}").status_code == 200
    assert chat(g.tight, g.alice, "a3").json()["error"]["code"] == "too_many_conversations"
    for k in range(2):
        assert chat(g.tight, g.bob, f"b{k}").status_code == 200
    full = chat(g.tight, g.bob, "b2")
    assert full.status_code == 429 and "--max-conversations)" in full.json()["error"]["message"]
    close(g.tight, g.alice, "a0").raise_for_status()
    assert chat(g.tight, g.bob, "b2").status_code == 200
    # The queue (4 waiting or running) and the deadline (0.5 s): twelve long replies at once, each
    # sampled apart (temperatures differ), get 200, 429 with Retry-After, or a timeout error in time
    # (a burst whose admitted replies all happen to end early is sent again).
    answers: list[tuple[httpx.Response, float]] = []

    def ask(k: int) -> None:
        started = time.monotonic()
        r = chat(g.tight, g.alice, max_tokens=480, temperature=1.0 + k / 20)
        answers.append((r, time.monotonic() - started))

    for _ in range(3):
        askers = [threading.Thread(target=ask, args=(k,)) for k in range(12)]
        for t in askers:
            t.start()
        for t in askers:
            t.join(60)
        codes = {r.status_code for r, _ in answers}
        if {429, 504} <= codes:
            break
    assert {429, 504} <= codes <= {200, 429, 504}, codes
    for r, seconds in answers:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "rate_limit_exceeded"
        if r.status_code == 504:
            assert r.json()["error"]["code"] == "timeout" and "--request-timeout-s" in r.json()["error"]["message"]
            assert seconds < 5
    health = wait_for(lambda: (h := httpx.get(f"{g.tight}/healthz").json())["active_requests"] == 0 and h)
    assert health["open_conversations"] == 5  # the timed-out and refused requests left nothing open


def test_a_model_whose_files_changed_is_never_served(guarded, tiny_model):
    g = guarded
    # Promoted after a file changed: the running servers refuse it and keep serving v1.
    changed = register(g.service, g.trainer, g.tmp / "changed", tiny_model, 0.6)
    weights = g.tmp / "changed" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, other bytes
    weights.write_bytes(bytes(data))
    promoted = g.service.client.post(f"/v1/deployments/{DEPLOYMENT}/promote", json={"model": changed})
    assert promoted.status_code == 200, promoted.text
    health = wait_for(lambda: (h := httpx.get(f"{g.open}/healthz").json())["refused"] and h, 20)
    assert "does not match its registered sha256" in health["refused"][changed] and health["version"] == g.v1
    assert chat(g.open, g.alice).json()["system_fingerprint"] == g.v1
    # At start: a model registered without hashes is refused, with a clear last line.
    unhashed = register(g.service, g.trainer, g.tmp / "unhashed", tiny_model, 0.5)
    with Teams(g.service.database_url).sessions() as s:
        model = s.get(store.ModelVersion, unhashed)
        model.files = [{"name": f["name"], "bytes": f["bytes"]} for f in model.files]
        s.commit()
    assert g.service.client.post("/v1/deployments", json={"name": "unhashed", "model": unhashed}).is_success
    refused = subprocess.run([sys.executable, "-m", "serving", "unhashed", "--port", "1"], cwd=ROOT, timeout=120,
                             env={**os.environ, "FLYWHEEL_URL": g.service.url, "FLYWHEEL_API_KEY": g.service.key},
                             capture_output=True, text=True)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode != 0 and last.startswith("refusing to serve 'unhashed'"), refused.stderr[-3000:]
    assert "registered without file hashes" in last


def test_schemathesis_finds_no_server_error_in_the_model_server(guarded, tmp_path):
    g = guarded
    run = subprocess.run([str(Path(sys.executable).parent / "st"), "run", f"{g.open}/openapi.json",
                          "--header", f"Authorization: Bearer {g.alice}", "--checks", "not_a_server_error",
                          "--max-examples", "4", "--seed", "1", "--workers", "1"], cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1"}, capture_output=True, text=True, timeout=600)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-8000:]
    tested = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert tested is not None and int(tested[1]) == int(tested[3]) == 4, report[-3000:]


def test_migration_0011_adds_the_deployment_keys_and_takes_them_away(tmp_path):
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store.__file__).parents[1] / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0011")
    assert "deployment_keys" in sa.inspect(sa.create_engine(url)).get_table_names()
    command.downgrade(cfg, "0010")
    assert "deployment_keys" not in sa.inspect(sa.create_engine(url)).get_table_names()
