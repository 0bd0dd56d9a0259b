"""Scale out, drilled: a job on a Ray cluster of two nodes, its rollout workers on one and its
learner ranks on the other by their custom resources (`rollout.resources`, `learner.resources`);
the worker node's raylet killed in the middle of the job, twice. The first time the node comes
back while the restarted job waits to be placed, and the job resumes from its checkpoint with
every step reported once; the second time it does not, and the job fails after its placement
timeout with an error naming the lost node. And a job the cluster could never hold is refused at
submission with 422, naming the field and the cluster's capacity (the service tests' own Ray head).

Both nodes run on this machine, on loopback. The head is a `LocalRayHead` of its own, given a
custom resource through `RAY_OVERRIDE_RESOURCES` and quick health checks (Ray notices a dead
node in about 3 s rather than 15). The worker node joins it as `ray start --address` does, but
through Ray's `Node` (as Ray's own `cluster_utils` starts test nodes): on loopback the CLI
refuses a second node (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which keeps every address on
127.0.0.1), and with that variable set to 1 it trades 127.0.0.1 for the machine's address."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from service.core.config import Settings
from service.jobs.launcher import LocalRayHead, cluster_env, free_port, ray_auth_headers
from tests.service.conftest import Teams, auth
from tests.service.test_job_restarts import paced
from tests.service.test_service_e2e import Service, spec
from trainer.spec import parse_spec

STEPS = 12
"""More than the drill reaches: the node is lost for good around step 5."""
PLACEMENT_S = 15
ROLLOUT, LEARNER = "rollout_node", "learner_node"
QUICK_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}

NODE = """
import json, sys
import ray._private.node, ray._private.parameter
params = ray._private.parameter.RayParams(**json.loads(sys.argv[1]))
ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
"""


class WorkerNode:
    """A Ray worker node on loopback joined to a head, with its own temp directory and ports."""

    def __init__(self, gcs_address: str, num_cpus: int, resources: dict[str, float]):
        self.gcs_address, self.num_cpus, self.resources = gcs_address, num_cpus, resources
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fw-node-", dir="/tmp"))

    def start(self) -> None:
        params = {"gcs_address": self.gcs_address, "node_ip_address": "127.0.0.1", "num_cpus": self.num_cpus,
                  "resources": self.resources, "temp_dir": str(self.temp_dir),
                  "object_store_memory": 200 * 1024**2,
                  **{name: free_port() for name in ("node_manager_port", "object_manager_port",
                                                     "dashboard_agent_listen_port", "metrics_agent_port",
                                                     "runtime_env_agent_port", "metrics_export_port")}}
        subprocess.run([sys.executable, "-c", NODE, json.dumps(params)], env=cluster_env(), check=True,
                       capture_output=True, timeout=60)

    def kill_raylet(self) -> None:
        """SIGKILL this node's raylet (its workers and agents end with it)."""
        for proc in LocalRayHead(temp_dir=self.temp_dir).processes():
            if proc.name() == "raylet":
                os.kill(proc.pid, signal.SIGKILL)
                return
        raise AssertionError("the worker node has no raylet")

    def stop(self) -> None:
        LocalRayHead(temp_dir=self.temp_dir).stop(grace_s=2)  # the processes of this temp dir, no other's
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def ray_state(address: str, what: str, **equal: str) -> list[dict]:
    """Rows of Ray's state API (`nodes`, `actors`), dead ones included."""
    params = {"detail": "true", "limit": 10_000}
    for key, value in equal.items():
        params.update(filter_keys=key, filter_predicates="=", filter_values=value)
    answer = httpx.get(f"{address}/api/v0/{what}", params=params, headers=ray_auth_headers(), timeout=30)
    answer.raise_for_status()
    return answer.json()["data"]["result"]["result"]


@pytest.fixture
def two_nodes(monkeypatch):
    """A head with the learners' resource and a worker node with the rollout workers'."""
    head = LocalRayHead(free_port())
    with monkeypatch.context() as env:
        env.setenv("RAY_OVERRIDE_RESOURCES", json.dumps({LEARNER: 1}))
        for name, value in QUICK_HEALTH_CHECKS.items():
            env.setenv(name, value)
        head.start()
    node = WorkerNode(head.gcs_address(), num_cpus=2, resources={ROLLOUT: 1})
    try:
        node.start()
        yield head, node
    finally:
        node.stop()
        head.stop(grace_s=2)


def drill_spec(model) -> dict:
    job = paced(spec(model, steps=STEPS, checkpoint_interval=1))
    job["rollout"].update(workers=1, num_cpus=0.5, resources={ROLLOUT: 0.01})
    job["learner"].update(ranks=1, num_cpus=0.5, micro_batch=16, resources={LEARNER: 0.01})
    job["schedule"].update(max_restarts=2, restart_backoff_s=0.5, placement_timeout_s=PLACEMENT_S)
    job["logging"] = {"wandb_mode": "disabled"}
    return job


def after_second_start(events: list[dict]) -> list[str]:
    """The kinds of the events after the resumed run's `started`."""
    kinds = [e["kind"] for e in events]
    starts = [i for i, kind in enumerate(kinds) if kind == "started"]
    return kinds[starts[1] + 1:] if len(starts) > 1 else []


def wait_until(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.5)


def events_of(c: httpx.Client, job_id: str) -> list[dict]:
    return c.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["events"]


def wait_events(c: httpx.Client, job_id: str, predicate, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not predicate(events := events_of(c, job_id)):
        assert time.monotonic() < deadline, [(e["kind"], e["message"][:200]) for e in events]
        time.sleep(0.5)
    return events


@pytest.mark.slow
def test_a_job_across_two_nodes_survives_losing_one_and_fails_naming_it_when_it_stays_lost(
        two_nodes, tmp_path, tiny_model):
    head, node = two_nodes
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'fw.db'}", port=free_port(), ray_address=head.address,
                        runs_dir=tmp_path / "runs", scheduler_interval_s=0.5)
    service = Service(settings)
    key = Teams(settings.database_url).key("alice")[0]
    try:
        with httpx.Client(base_url=service.url, headers=auth(key), timeout=120) as c:
            job = c.post("/v1/jobs", json=drill_spec(tiny_model)).json()
            assert job["state"] == "queued", job
            # The node goes while the job runs; it comes back while the restarted job waits to be placed.
            wait_events(c, job["id"], lambda ev: "checkpoint" in [e["kind"] for e in ev])
            node.kill_raylet()
            wait_events(c, job["id"], lambda ev: [e["kind"] for e in ev].count("starting") == 2)
            wait_until(lambda: ray_state(head.address, "placement_groups", state="PENDING"), "a placement waits")
            node.start()
            wait_events(c, job["id"], lambda ev: "step" in after_second_start(ev))
            # The node goes for good: the restarted job waits PLACEMENT_S for it, then fails naming it.
            node.kill_raylet()
            deadline = time.monotonic() + 120
            while (failed := c.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("failed", "succeeded"):
                assert time.monotonic() < deadline, failed
                time.sleep(0.5)
            events = events_of(c, job["id"])
            metrics = c.get(f"/v1/jobs/{job['id']}/metrics").json()["metrics"]
            # With the node gone the same spec is refused at once: no live node has the workers' resource.
            refused = c.post("/v1/jobs:validate", json=drill_spec(tiny_model))
    finally:
        service.stop()

    # Placement, from Ray's own state: the rollout workers ran on the worker node (one actor in each
    # of its two lives), the learner ranks on the head.
    nodes = ray_state(head.address, "nodes")
    head_id = next(n["node_id"] for n in nodes if n["is_head_node"])
    lives = sorted((n for n in nodes if ROLLOUT in n["resources_total"]), key=lambda n: n["start_time_ms"])
    assert len(lives) == 2 and {n["state"] for n in lives} == {"DEAD"}, lives
    workers = ray_state(head.address, "actors", class_name="RolloutWorker")
    learners = ray_state(head.address, "actors", class_name="Learner")
    assert sorted(a["node_id"] for a in workers) == sorted(n["node_id"] for n in lives), workers
    assert [a["node_id"] for a in learners] == [head_id, head_id], learners  # the first run and the resumed one

    # The restarts, and every step reported once, the trainer's sequence numbers unbroken.
    restarts = [e for e in events if e["kind"] == "restart"]
    assert [r["data"]["attempt"] for r in restarts] == [1, 2], restarts
    started = [e for e in events if e["kind"] == "started"]
    assert len(started) == 2, started  # the third launch never placed its actors
    first_checkpoint = next(e["data"]["step"] for e in events if e["kind"] == "checkpoint")
    resumed_at = int(started[1]["message"].removeprefix("training from step "))
    assert resumed_at > first_checkpoint, started[1]  # from its checkpoint, not from the start
    steps = [e["data"]["step"] for e in events if e["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= resumed_at, steps
    assert [m["step"] for m in metrics] == steps
    trainer_seqs = [e["seq"] for e in events if e["seq"] > 0]
    assert trainer_seqs == list(range(1, len(trainer_seqs) + 1))

    # The failure names what the job needs and the node it lost.
    assert failed["state"] == "failed" and failed["step"] < STEPS, failed
    error = failed["error"]
    assert f"could not place this job within {PLACEMENT_S} s" in error, error
    assert "rollout.resources" in error and f"0.01 {ROLLOUT}" in error, error
    assert lives[-1]["node_id"] in error, error

    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "exceeds_cluster"
    assert refused.json()["error"]["field"] == "rollout.resources"


# Refusing a job that can never fit, on the service tests' Ray head (one node, this machine's CPUs).

def small(model, **sections) -> dict:
    job = spec(model, steps=2, checkpoint_interval=0)
    for section, fields in sections.items():
        job[section].update(fields)
    return job


def cluster_cpus(client) -> float:
    nodes = client.app.state.launcher.capacity()
    assert nodes and len(nodes) == 1, nodes
    return nodes[0]["CPU"]


@pytest.mark.one_store
def test_a_job_that_can_never_fit_is_refused_naming_the_field_and_the_capacity(client, teams, tiny_model):
    headers = auth(teams.key("alice")[0])
    cpus = cluster_cpus(client)
    capacity = f"the cluster: 1 node, {cpus:g} CPU and 0 GPU in all, its largest node {cpus:g} CPU and 0 GPU"

    too_many = client.post("/v1/jobs", json=small(tiny_model, rollout={"num_cpus": cpus}), headers=headers)
    assert too_many.status_code == 422, too_many.text
    error = too_many.json()["error"]
    assert error["code"] == "exceeds_cluster" and error["field"] == "rollout.workers"
    assert error["message"].startswith(f"rollout.workers: the job needs {2 * cpus + 0.9:g} CPU at once "
                                       f"(2 rollout workers × {cpus:g}, 2 learner ranks × 0.4, 1 reward worker × 0.1), "
                                       f"and the cluster has {cpus:g} in all"), error
    assert error["message"].endswith(capacity), error
    assert client.get("/v1/jobs", headers=headers).json()["total"] == 0  # nothing stored

    big = client.post("/v1/jobs:validate", json=small(tiny_model, learner={"num_cpus": cpus + 1}), headers=headers)
    assert big.status_code == 422 and big.json()["error"]["field"] == "learner.num_cpus", big.text
    assert big.json()["error"]["message"] == (f"learner.num_cpus: each learner rank reserves {cpus + 1:g} CPU, and "
                                              f"no node has {cpus + 1:g} CPU; {capacity}")

    elsewhere = client.post("/v1/jobs:validate", json=small(tiny_model, rollout={"resources": {"gpu_box": 1}}),
                            headers=headers)
    assert elsewhere.status_code == 422 and elsewhere.json()["error"]["field"] == "rollout.resources", elsewhere.text
    assert "no node has 1 'gpu_box' (none)" in elsewhere.json()["error"]["message"]

    # A count no cluster runs is refused by the schema, whatever the share of a CPU each asks for.
    absurd = client.post("/v1/jobs", json=small(tiny_model, rollout={"workers": 1000, "num_cpus": 0.01}),
                         headers=headers)
    assert absurd.status_code == 422 and absurd.json()["error"]["field"] == "rollout.workers", absurd.text
    assert "less than or equal to 256" in absurd.json()["error"]["message"]


@pytest.mark.one_store
def test_a_job_that_fits_is_not_refused_nor_when_the_cluster_cannot_be_asked(client, tiny_model):
    launcher = client.app.state.launcher
    cpus = cluster_cpus(client)
    fits = parse_spec(small(tiny_model, rollout={"workers": 2, "num_cpus": (cpus - 0.1) / 4},
                            learner={"num_cpus": (cpus - 0.1) / 4}))
    launcher.fits(fits)  # the whole cluster at once, to the last tenth of a CPU
    assert launcher.capacity() is launcher.capacity()  # one answer serves a burst

    unreachable = copy.copy(launcher)
    unreachable.address, unreachable._capacity = f"http://127.0.0.1:{free_port()}", (float("-inf"), None)
    assert unreachable.capacity() is None
    unreachable.fits(parse_spec(small(tiny_model, rollout={"workers": 200})))  # not refused on a cluster unseen
