"""`POST /v1/jobs:validate?dry_run=N`: real rollouts with the base model and real reward modules,
before anything launches; and the same report through the CLI."""

import os
import subprocess
import sys

import pytest

from tests.conftest import DIGITS, ROOT
from tests.service.conftest import auth


def spec(model, rewards, **extra) -> dict:
    return {"name": "dry", "model": {"path": str(model)},
            "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
            "rewards": rewards, "algorithm": {"group_size": 4}, "rollout": {"max_new_tokens": 8}, **extra}


# A dry run reads and writes nothing in the store (it runs on the cluster), so one store does: each
# case costs its rollouts, and the store-specific SQL is covered by the other API tests.
pytestmark = pytest.mark.one_store


@pytest.fixture
def alice(teams):
    return auth(teams.key("alice")[0])


def dry(client, headers, body, n=3):
    r = client.post("/v1/jobs:validate", json=body, params={"dry_run": n}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["dry_run"]


def test_reports_distributions_failures_and_timeouts(client, alice, tiny_model):
    report = dry(client, alice, spec(tiny_model, [
        {"import_path": "tests.fixtures.trl_rewards:digit_share"},
        {"import_path": "tests.fixtures.trl_rewards:always_raises"},
        {"import_path": "tests.fixtures.trl_rewards:hangs", "timeout_s": 0.5},
    ]))
    assert report["tasks"] == 3 and report["samples"] == 12 and report["group_size"] == 4
    share = report["components"]["digit_share"]
    assert share["count"] == 12 and 0.0 <= share["min"] <= share["p50"] <= share["max"] <= 1.0
    failures = {f["module"]: f for f in report["failures"]}
    assert failures["always_raises"]["samples"] == 12 and not failures["always_raises"]["timed_out"]
    assert "grader backend unavailable" in failures["always_raises"]["error"]
    assert failures["hangs"]["timed_out"] and "timed out after 0.5 s" in failures["hangs"]["error"]
    assert report["failed_samples"] == 12
    assert any("always_raises" in w for w in report["warnings"]) and any("timed out" in w for w in report["warnings"])
    assert client.get("/v1/jobs", headers=alice).json()["total"] == 0  # nothing was created


def test_reports_groups_whose_rewards_all_tie(client, alice, tiny_model):
    # A regex no completion can match: every reward is 0, so every group ties.
    report = dry(client, alice, spec(tiny_model, [{"name": "regex", "config": {"pattern": "^NEVER$"}}]), n=2)
    assert report["groups"] == {"count": 2, "all_equal": 2, "all_equal_share": 1.0}
    assert report["reward"]["mean"] == 0.0 and report["reward"]["std"] == 0.0
    assert any("all-equal rewards" in w for w in report["warnings"])
    # A reward that varies gives untied groups.
    varied = dry(client, alice, spec(tiny_model, [{"import_path": "tests.fixtures.trl_rewards:digit_share"}]), n=2)
    assert varied["groups"]["all_equal"] < 2 and not varied["warnings"]


def test_multi_turn_dry_run_counts_outcomes(client, alice, tiny_model):
    body = spec(tiny_model, [{"name": "resolution"}],
                environment={"name": "support_desk", "config": {"train_size": 10, "max_turns": 2}})
    report = dry(client, alice, body, n=2)
    assert sum(report["outcomes"].values()) == 8
    assert set(report["outcomes"]) <= {"resolved", "escalated", "violation"}


def test_dry_run_size_is_checked(client, alice, tiny_model):
    r = client.post("/v1/jobs:validate", json=spec(tiny_model, [{"name": "regex", "config": {"pattern": "x"}}]),
                    params={"dry_run": 1000}, headers=alice)
    assert r.status_code == 422 and "dry_run" in json_field(r)


def json_field(r) -> str:
    err = r.json()["error"]
    return f"{err.get('field')} {err.get('message')}"


@pytest.mark.slow
def test_cli_validate_dry_run_prints_the_report(tiny_model, tmp_path, ray_head):
    """The CLI against a real server process."""
    import json as _json
    import socket
    import time

    import httpx

    from tests.service.conftest import Teams

    url = f"sqlite:///{tmp_path / 'fw.db'}"
    key = Teams(url).key("cli")[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": url, "FLYWHEEL_LAUNCH": "false", "FLYWHEEL_RAY_ADDRESS": ray_head,
           "FLYWHEEL_URL": f"http://127.0.0.1:{port}", "FLYWHEEL_API_KEY": key}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env, cwd=ROOT)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        run_file = tmp_path / "job.json"
        run_file.write_text(_json.dumps(spec(tiny_model, [{"name": "regex", "config": {"pattern": "^NEVER$"}}])))
        out = subprocess.run([sys.executable, "-m", "service.cli", "validate", str(run_file), "--dry-run", "2"],
                             env={**env, "COLUMNS": "200"}, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "valid" in out.stdout and "groups with all-equal rewards: 2/2 (100%)" in out.stdout
        assert "warning:" in out.stdout
    finally:
        server.terminate()
        server.wait(30)
