"""Team code never runs in the control plane: a spec's reward modules are imported, its data read
and its dry run rolled out on the cluster, in a process without the service's settings; a module
that hangs on import costs the request its time limit, not the API its responsiveness."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import DIGITS
from tests.service.conftest import CANARY_DATABASE_URL, ServiceProcess

pytestmark = pytest.mark.slow

RECORDING_REWARD = '''
import json, os, pathlib
with (pathlib.Path(__file__).parent / "imports.jsonl").open("a") as f:
    f.write(json.dumps({"pid": os.getpid(), "database_url": os.environ.get("FLYWHEEL_DATABASE_URL"),
                        "flywheel_settings": sorted(k for k in os.environ if k.startswith("FLYWHEEL_"))}) + "\\n")

def score(prompts, completions, **columns):
    return [float(len(c)) for c in completions]
'''

SLEEPING_REWARD = '''
import time
time.sleep(120)

def score(prompts, completions, **columns):
    return [0.0 for _ in completions]
'''


def job(model, reward_file, **extra) -> dict:
    return {"name": "team-code", "model": {"path": str(model)},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
            "rewards": [{"import_path": f"{reward_file}:score"}], "algorithm": {"group_size": 4},
            "rollout": {"max_new_tokens": 4}, **extra}


def test_reward_modules_load_on_the_cluster_without_the_services_settings(tiny_model, tmp_path, ray_head):
    reward = tmp_path / "team_reward_recorder.py"
    reward.write_text(RECORDING_REWARD)
    server = ServiceProcess(tmp_path, ray_head)
    try:
        spec = job(tiny_model, reward)
        created = server.client.post("/v1/jobs", json=spec)
        assert created.status_code == 201, created.text
        assert server.client.post("/v1/jobs:validate", json=spec).json()["valid"] is True
        dry = server.client.post("/v1/jobs:validate", json=spec, params={"dry_run": 2})
        assert dry.status_code == 200, dry.text
        assert dry.json()["dry_run"]["components"]["score"]["count"] == 8
    finally:
        record = server.stop()
    imports = [json.loads(line) for line in (tmp_path / "imports.jsonl").read_text().splitlines()]
    assert len(imports) >= 3  # once per request at least (the dry run loads it twice)
    assert all(i["pid"] != record["pid"] for i in imports)
    assert all(i["database_url"] is None and i["flywheel_settings"] == [] for i in imports)
    assert CANARY_DATABASE_URL not in json.dumps(imports)
    modules = set(record["modules"])
    assert not {"torch", "transformers", "deepspeed"} & modules
    assert not [m for m in modules if "team_reward_recorder" in m]
    assert not [m for m in modules if m.startswith(("trainer.", "trainer")) and not m.startswith("trainer.spec")
                and m != "trainer"]


def test_a_module_that_hangs_on_import_costs_only_its_request(tiny_model, tmp_path, ray_head):
    """50 concurrent validations of one team's spec whose module hangs: the team's first two run
    into the time limit, the rest are refused at once with 429, and /healthz never waits for them."""
    reward = tmp_path / "sleeps_on_import.py"
    reward.write_text(SLEEPING_REWARD)
    server = ServiceProcess(tmp_path, ray_head, check_timeout_s=8, max_checks_per_team=2)
    answers: list[httpx.Response] = []
    try:
        threads = [threading.Thread(target=lambda: answers.append(
            server.client.post("/v1/jobs:validate", json=job(tiny_model, reward)))) for _ in range(50)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        latencies = []
        with httpx.Client(base_url=server.url, timeout=5) as probe:  # one connection, as a monitor keeps
            while any(t.is_alive() for t in threads):
                t0 = time.perf_counter()
                assert probe.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.2)
        waited = time.monotonic() - started
    finally:
        server.stop()
    # Never held up behind the checks (each takes its 8 s limit): the API answers all along. The
    # latency itself is a measurement, not a test (on 2 cores beside the check processes: tens of ms).
    first, latencies = latencies[0], sorted(latencies)
    print(f"/healthz during the checks: {len(latencies)} calls, the first {first * 1000:.0f} ms, median {latencies[len(latencies) // 2] * 1000:.0f} ms, "
          f"p90 {latencies[int(len(latencies) * 0.9)] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    assert len(latencies) >= 20 and max(latencies) < 1.0, latencies
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 48 and all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    assert {a.json()["error"]["code"] for a in refused} == {"too_many_checks"}
    timed_out = [a for a in answers if a.status_code == 422]
    assert len(timed_out) == 2 and 8 <= waited < 60
    for response in timed_out:
        error = response.json()["error"]
        assert error["code"] == "check_timeout" and error["field"] == "rewards.0.import_path"
        assert "sleeps_on_import.py:score" in error["message"] and "8 s" in error["message"]
