"""The API fuzzed by Schemathesis against the real service (its own process, its checks on the
Ray head): every operation, the coverage, fuzzing and stateful phases, every default check (not
only "no 5xx": status codes, content types, response schemas, that bad input is refused and good
input accepted, the Allow header, authentication). tests/service/schemathesis.toml lists the
few answers a schema cannot foretell, and why.

A bounded, seeded run here (6 examples per operation); to search longer by hand:

    st --config-file tests/service/schemathesis.toml run URL/openapi.json --max-examples 200
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.core.auth import new_job_token
from service.core.store import Job
from tests.conftest import DIGITS
from tests.service.conftest import ServiceProcess, Teams, Trainer, rates

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure_in_any_operation(tiny_model, tmp_path, ray_head):
    server = ServiceProcess(tmp_path, ray_head)
    try:
        operations = sum(len(ops) for ops in server.client.get("/openapi.json").json()["paths"].values())
        # One real job, so that the operations on a job reach their logic rather than a 404, and
        # its trainer token (as the scheduler hands it out at launch), so that reports do too.
        spec = {"name": "fuzzed", "model": {"path": str(tiny_model)},
                "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
                "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}]}
        job = server.client.post("/v1/jobs", json=spec)
        assert job.status_code == 201, job.text
        trace = {"trace_id": "fuzzed-1", "model": "agent", "messages": [{"role": "user", "content": "hi"},
                                                                         {"role": "assistant", "content": "hello"}]}
        assert server.client.post("/v1/traces", json={"traces": [trace]}).status_code == 201
        trainer = Trainer(Teams(server.database_url), tmp_path / "jobs")
        trainer.finish("alice", "served", str(tiny_model), rates(0.5, 0.1))
        model_id = server.client.get("/v1/models").json()["models"][0]["id"]
        assert server.client.post("/v1/deployments", json={"name": "fuzzed", "model": model_id}).status_code == 201
        token, token_hash = new_job_token()
        with Teams(server.database_url).sessions() as s:
            s.get(Job, job.json()["id"]).report_token_hash = token_hash
            s.commit()
        env = {**os.environ, "FLYWHEEL_API_KEY": server.key, "FLYWHEEL_JOB_ID": job.json()["id"],
               "FLYWHEEL_JOB_TOKEN": token, "FLYWHEEL_TRACE_ID": "fuzzed-1", "FLYWHEEL_MODEL_ID": model_id,
               "FLYWHEEL_DEPLOYMENT": "fuzzed", "NO_COLOR": "1"}
        run = subprocess.run([str(Path(sys.executable).parent / "st"), "--config-file", str(CONFIG), "run",
                              f"{server.url}/openapi.json", "--max-examples", "6", "--seed", "1", "--workers", "1"],
                             env=env, capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-8000:]
    tested = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", report)
    assert tested is not None and int(tested[1]) == int(tested[3]) == operations, report[-3000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅\s+{phase}", report), (phase, report[-3000:])
