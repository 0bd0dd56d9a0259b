"""A check that meets a limit answers with the field it was on and nothing of the cluster's
internals: a data path the filesystem cannot take is a 422 naming the field, a check over its
memory limit is a 422 naming the field, and a check that dies without an answer is a 502 with an
error id, its log tail going to the service's log only. (A NUL in a path is refused before any
check: by the request's body check, and by the spec, tests/unit/test_input_limits.py.)"""

from __future__ import annotations

import logging
import re

import pytest

from tests.conftest import DIGITS
from tests.service.conftest import auth

pytestmark = pytest.mark.one_store


@pytest.fixture
def alice(teams):
    return auth(teams.key("alice")[0])


def spec(folder, reward: str = "json_valid", train: str = str(DIGITS)) -> dict:
    """A spec whose model folder passes the checks (they open nothing in it before a dry run)."""
    (folder / "model").mkdir(exist_ok=True)
    (folder / "model" / "config.json").write_text("{}")
    rewards = [{"import_path": reward}] if ":" in reward else [{"name": reward}]
    return {"model": {"path": str(folder / "model")}, "environment": {"config": {"train": train}},
            "rewards": rewards}


def test_a_data_path_too_long_for_the_filesystem_is_a_422_naming_the_field(client, alice, tmp_path):
    r = client.post("/v1/jobs:validate", headers=alice, json=spec(tmp_path, train=str(tmp_path / ("d" * 300))))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "environment.config.train"
    assert r.json()["error"]["message"].endswith("File name too long")


HOG = """
import numpy
RESERVED = numpy.empty(3 << 30, dtype=numpy.uint8)  # address space only: nothing is touched

def score(prompts, completions, **columns):
    return [0.0 for _ in completions]
"""


def test_a_check_over_its_memory_limit_is_a_422_naming_the_field(client, alice, app, tmp_path):
    (tmp_path / "hog.py").write_text(HOG)
    app.state.checks.memory_mb = 2048
    r = client.post("/v1/jobs:validate", headers=alice, json=spec(tmp_path, f"{tmp_path / 'hog.py'}:score"))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "check_memory_limit" and error["field"] == "rewards.0.import_path"
    assert "memory limit of 2,048 MiB" in error["message"] and "Traceback" not in r.text


DIES = """
import os, sys
print("Traceback (most recent call last):\\n  File \\"/opt/cluster-install/secret.py\\", line 1", file=sys.stderr)
sys.stderr.flush()
os._exit(3)  # as the kernel's OOM killer would end it: no answer written
"""


def test_a_check_that_dies_is_a_502_with_an_error_id_and_no_log_tail(client, alice, tmp_path, caplog):
    (tmp_path / "dies.py").write_text(DIES)
    with caplog.at_level(logging.ERROR, logger="flywheel.checks"):
        r = client.post("/v1/jobs:validate", headers=alice, json=spec(tmp_path, f"{tmp_path / 'dies.py'}:score"))
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "check_failed" and error["field"] == "rewards.0.import_path"
    assert "cluster-install" not in r.text and "Traceback" not in r.text
    error_id = re.search(r"error id ([0-9a-f]{12})", error["message"]).group(1)
    assert error_id in caplog.text and "cluster-install" in caplog.text
