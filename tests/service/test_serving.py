"""Serving a deployment over the OpenAI API (`python -m serving`) against a real control
plane: the official `openai` client, with a key of the deployment, gets completions with
logprobs; under load, a promotion swaps the model with no failed request, and every conversation
is logged once, as a trace, with the version that answered it and the logprobs it was sampled
with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.service.conftest import ServiceProcess, Teams, Trainer, auth, free_port, rates, wait_ready

pytestmark = pytest.mark.slow


def register(service, trainer: Trainer, folder: Path, tiny_model, resolved: float) -> str:
    """A copy of the tiny model in `folder`, registered as a model version (the registry hashes its files)."""
    shutil.copytree(tiny_model, folder)
    job = trainer.finish("alice", folder.name, str(tiny_model), rates(resolved, 0.1), export=folder)
    return next(m["id"] for m in service.client.get("/v1/models").json()["models"] if m["job_id"] == job)


def deployment_key(service, deployment: str = "support-agent") -> tuple[str, str]:
    """A new key of the deployment: (the key, its id)."""
    r = service.client.post(f"/v1/deployments/{deployment}/keys", json={"name": "tests"})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


def start_serving(service, deployment: str, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "FLYWHEEL_URL": service.url, "FLYWHEEL_API_KEY": service.key}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve-model", deployment, "--port", str(port),
                             "--poll-s", "0.3", *args], cwd=ROOT, env=env)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def served(tmp_path, ray_head, tiny_model):
    """A control plane with two registered versions of the tiny model, a deployment serving the
    first, a key of it, and the serving process following it."""
    service = ServiceProcess(tmp_path, ray_head)
    trainer = Trainer(Teams(service.database_url), tmp_path / "jobs")
    versions = {name: register(service, trainer, tmp_path / name, tiny_model, resolved)
                for name, resolved in (("v1", 0.5), ("v2", 0.6))}
    assert service.client.post("/v1/deployments", json={"name": "support-agent", "model": versions["v1"]}).is_success
    key, _ = deployment_key(service)
    proc, url = start_serving(service, "support-agent")
    wait_ready(f"{url}/healthz", proc, "the serving process", 120)
    yield service, url, versions, key
    proc.terminate()
    proc.wait(60)
    assert "torch" not in service.stop()["modules"]  # the control plane never loaded the model


def traces_of(service) -> list[dict]:
    return service.client.get("/v1/traces", params={"limit": 1000}).json()["traces"]


def wait_for(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def test_the_openai_client_gets_completions_with_logprobs_and_each_is_logged(served):
    from openai import OpenAI

    service, url, versions, key = served
    client = OpenAI(base_url=f"{url}/v1", api_key=key)
    assert [m.id for m in client.models.list().data] == ["support-agent"]
    out = client.chat.completions.create(model="support-agent", messages=[{"role": "user", "content": "How many?"}],
                                         max_tokens=6, logprobs=True, temperature=1.0)
    choice = out.choices[0]
    assert out.system_fingerprint == versions["v1"] and choice.finish_reason in ("stop", "length")
    assert 0 < len(choice.logprobs.content) == out.usage.completion_tokens <= 6
    assert all(t.logprob <= 0 for t in choice.logprobs.content)
    trace = wait_for(lambda: traces_of(service))[0]  # a request without a conversation id is one conversation
    assert trace["model"] == "support-agent" and trace["model_version"] == versions["v1"]
    reply = trace["messages"][-1]
    assert reply["logprobs"]["logprobs"] == pytest.approx([t.logprob for t in choice.logprobs.content])
    # Streamed: each token as it is sampled, the same reply as its logprobs say, logged the same way.
    chunks = list(client.chat.completions.create(model="support-agent", max_tokens=6, logprobs=True, stream=True,
                                                 messages=[{"role": "user", "content": "How many?"}],
                                                 metadata={"conversation_id": "streamed"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and 0 < len(streamed) <= 6
    trace_id = chunks[0].metadata["trace_id"]
    httpx.post(f"{url}/v1/conversations/streamed/close", headers=auth(key)).raise_for_status()
    logged = wait_for(lambda: [t for t in traces_of(service) if t["trace_id"] == trace_id])[0]
    assert logged["messages"][-1]["content"] == text
    assert logged["messages"][-1]["logprobs"]["logprobs"] == pytest.approx([t.logprob for t in streamed])


def test_a_promotion_under_load_fails_no_request_and_logs_each_conversation_once(served):
    from openai import OpenAI

    service, url, versions, key = served
    failures, answered, trace_ids = [], {}, {}

    def customer(worker: int, rounds: int) -> None:
        client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        for k in range(rounds):
            cid = f"w{worker}-c{k}-{time.monotonic_ns()}"
            messages = [{"role": "user", "content": "How many orders?"}]
            try:
                for _ in range(2):  # two turns, then the conversation ends
                    out = client.chat.completions.create(model="support-agent", messages=messages, max_tokens=4,
                                                         metadata={"conversation_id": cid})
                    answered.setdefault(cid, set()).add(out.system_fingerprint)
                    trace_ids[cid] = out.metadata["trace_id"]
                    messages += [{"role": "assistant", "content": out.choices[0].message.content},
                                 {"role": "user", "content": "And then?"}]
                httpx.post(f"{url}/v1/conversations/{cid}/close", headers=auth(key), timeout=30).raise_for_status()
            except Exception as exc:  # noqa: BLE001 - counted: the test requires none
                failures.append(f"{cid}: {exc!r}")

    workers = [threading.Thread(target=customer, args=(w, 6)) for w in range(6)]
    for t in workers:
        t.start()
    wait_for(lambda: len(answered) >= 8)
    promoted = service.client.post("/v1/deployments/support-agent/promote", json={"model": versions["v2"]})
    assert promoted.status_code == 200, promoted.text
    for t in workers:
        t.join(300)
    assert failures == []
    assert all(len(v) == 1 for v in answered.values())  # a conversation stays on the version that began it
    served_by = {trace_ids[cid]: next(iter(v)) for cid, v in answered.items()}
    assert set(served_by.values()) == {versions["v1"], versions["v2"]}  # the swap happened mid-load
    assert httpx.get(f"{url}/healthz").json()["version"] == versions["v2"]
    logged = wait_for(lambda: (t := [x for x in traces_of(service) if x["trace_id"] in served_by])
                      and len(t) >= len(served_by) and t)
    assert sorted(t["trace_id"] for t in logged) == sorted(served_by)  # each conversation exactly once
    for t in logged:
        assert t["model_version"] == served_by[t["trace_id"]]
        replies = [m for m in t["messages"] if m["role"] == "assistant"]
        assert len(replies) == 2 and all(len(m["logprobs"]["token_ids"]) == len(m["logprobs"]["logprobs"]) > 0
                                         for m in replies)
