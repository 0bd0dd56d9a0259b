"""Launching work on the cluster through the Ray Jobs API: training jobs, so runs outlive the
service, and the checks of `service.jobs.checks`, so team code never runs in the API process.

With no Ray address configured, `LocalRayHead` starts a Ray head on loopback with token
authentication (Ray 2.60 refuses Jobs API calls without it), in a temp directory of its own, and
stops it on shutdown by ending its own processes only: never `ray stop`, which ends every Ray
cluster of the user on the machine. The head and everything it runs get the service's
environment *without* its `FLYWHEEL_*` settings, so no job or check sees the database URL.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from service.core.errors import ApiError
from trainer.spec.placement import job_roles, unfit

RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           # `ray start --node-ip-address 127.0.0.1` would replace loopback with the machine's
           # address (a cluster must be reachable); Ray's single-machine mode keeps it.
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
HEAD_NICENESS = 5
"""The local head and everything it runs (jobs, checks) yield the CPU to the API process when
they share cores: the control plane answers first, and is idle most of the time."""
SECRET_PREFIX = "FLYWHEEL_"
"""The control plane's own settings (database URL, keys): kept out of the cluster's environment."""


def cluster_env() -> dict[str, str]:
    """The service's environment as the cluster may see it."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIX)}, **RAY_ENV}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def ray_auth_headers() -> dict[str, str]:
    """The cluster token as an HTTP header, from RAY_AUTH_TOKEN or the token file. Sent explicitly:
    Ray settles whether auth is on when it is first used in a process, which may predate us."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.exists():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


class RayHeadError(RuntimeError):
    """`ray start` failed; the message is Ray's own."""


class LocalRayHead:
    """A Ray head on 127.0.0.1 for the service's own use, in its own temp directory (one per
    dashboard port), so that its processes can be told from any other Ray on the machine."""

    def __init__(self, dashboard_port: int = 8265, temp_dir: Path | None = None):
        self.dashboard_port = dashboard_port
        self.address = f"http://127.0.0.1:{dashboard_port}"
        # Ray's socket paths live under it and must stay short: keep it in /tmp, not the runs folder.
        self.temp_dir = temp_dir or Path(tempfile.gettempdir()) / f"flywheel-ray-{dashboard_port}"

    def gcs_address(self) -> str:
        """The head's GCS address (`host:port`), which another node joins with `ray start --address`."""
        return (self.temp_dir / "ray_current_cluster").read_text().strip()

    def running(self) -> bool:
        """Whether a head already answers on our dashboard port (left by a service that was killed,
        or stopped while jobs were still running)."""
        import httpx

        try:
            return httpx.get(f"{self.address}/api/version", headers=ray_auth_headers(), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        env = cluster_env()
        os.environ.update(RAY_ENV)
        if self.running():
            return  # adopt it: its jobs are ours, and reconcile picks them up
        subprocess.run([_ray_bin(), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        # Every port on its own free number: with Ray's fixed defaults, a second head on the
        # machine (another service, a developer's Ray) starts without a job agent.
        agent_ports = [f"--{name}={free_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "ray-client-server-port")]
        done = subprocess.run(["nice", "-n", str(HEAD_NICENESS), _ray_bin(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", "0",
                               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                               "--temp-dir", str(self.temp_dir), *agent_ports, "--disable-usage-stats"],
                              env=env, capture_output=True, text=True)
        if done.returncode:
            raise RayHeadError(f"the local Ray head did not start (ray start exited {done.returncode}):\n"
                               + (done.stderr or done.stdout).strip())

    def processes(self) -> list[psutil.Process]:
        """This head's live processes: those started with our temp directory, and their children.
        A zombie (ended, not yet reaped by a parent that is not ours) is not one of them: there is
        nothing left of it to stop."""
        marker = str(self.temp_dir)
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            if any(marker in arg for arg in proc.info["cmdline"] or []):
                try:
                    for p in [proc, *proc.children(recursive=True)]:
                        found[p.pid] = p
                except psutil.NoSuchProcess:
                    continue
        found.pop(os.getpid(), None)
        return [p for p in found.values() if _alive(p)]

    def stop(self, grace_s: float = 15.0) -> None:
        """End this head's processes (SIGTERM, then SIGKILL after `grace_s`); no other Ray's."""
        procs = self.processes()
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


AGENT_WAIT_S = 60
CAPACITY_TTL_S = 5.0
"""How long one answer about the cluster's nodes serves submissions (they come in bursts)."""
CAPACITY_TIMEOUT_S = 3.0
TOKEN_FILE = "report-token"
"""In the job's run folder until its trainer starts and deletes it."""
CHECK_NICENESS = 10


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _agent_not_up(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "No available agent" in str(exc)


@dataclass
class RayStatus:
    state: str          # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, or MISSING
    message: str = ""


class RayJobsLauncher:
    """Submits `python -m trainer.run SPEC` as a Ray job and reads its status back."""

    def __init__(self, address: str, project_dir: Path, python: str | None = None):
        from ray.job_submission import JobSubmissionClient

        os.environ.update(RAY_ENV)
        self.address, self.project_dir = address, project_dir
        self.python = python or sys.executable
        self.client = self._connect(JobSubmissionClient, address)
        self._capacity: tuple[float, list[dict[str, float]] | None] = (-CAPACITY_TTL_S, None)

    @staticmethod
    def _connect(cls, address: str, attempts: int = 60):
        for i in range(attempts):
            try:
                return cls(address, headers=ray_auth_headers())
            except Exception:  # noqa: BLE001 - the dashboard takes a few seconds to come up
                if i == attempts - 1:
                    raise
                time.sleep(1)

    def submit(self, job_id: str, spec: dict, report_url: str, token: str, submission_id: str) -> str:
        """Start `python -m trainer.run` for a job as Ray job `submission_id` (the caller's, so a
        service that stops between deciding and submitting can ask Ray later whether it has it).
        The job's only secret, its report token, goes in a file only its owner may read, which the
        trainer deletes as it starts, before any team code runs: never in an environment variable,
        which Ray would hand to every actor of the job, reward workers among them."""
        run_dir = Path(spec["output_dir"]).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = run_dir / "spec.json"
        spec = {**spec, "output_dir": str(run_dir)}
        spec_path.write_text(json.dumps(spec, indent=2))
        token_file = run_dir / TOKEN_FILE
        token_file.unlink(missing_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        try:
            return self._submit(["trainer.run", str(spec_path), "--report-url", report_url, "--job-id", job_id,
                                 "--token-file", str(token_file)], submission_id, {"WANDB_SILENT": "true"})
        except RuntimeError as exc:
            if "already exists" in str(exc):  # submitted before the service stopped: Ray has it
                return submission_id
            raise

    def submit_check(self, folder: Path, memory_mb: int | None = None) -> str:
        """Start `python -m trainer.checks FOLDER` (it reads the request there and writes the result),
        at a lower CPU priority: where the API shares cores with the cluster, a team's checks
        wait for the API rather than the other way round. `memory_mb`: its memory limit (None: the
        check's own default)."""
        limit = ["--memory-mb", str(memory_mb)] if memory_mb else []
        return self._submit(["trainer.checks", str(folder), *limit], folder.name, {}, nice=CHECK_NICENESS)

    def _submit(self, module_args: list[str], submission_id: str, env: dict[str, str], nice: int = 0) -> str:
        lower = f"nice -n {nice} " if nice else ""
        entrypoint = (f"cd {shlex.quote(str(self.project_dir))} && {lower}{shlex.quote(self.python)} -m "
                      + " ".join(shlex.quote(a) for a in module_args))
        # A head that has just started answers before its job agent is up: wait for the agent.
        for attempt in Retrying(retry=retry_if_exception(_agent_not_up), stop=stop_after_delay(AGENT_WAIT_S),
                                wait=wait_fixed(0.5), reraise=True):
            with attempt:
                return self.client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                              runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", **env}})

    def status(self, ray_job_id: str) -> RayStatus:
        try:
            info = self.client.get_job_info(ray_job_id)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return RayStatus("MISSING", f"Ray has no job {ray_job_id}")
            raise
        return RayStatus(str(info.status.value if hasattr(info.status, "value") else info.status), info.message or "")

    def logs_tail(self, ray_job_id: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.client.get_job_logs(ray_job_id).splitlines()[-lines:])
        except Exception:  # noqa: BLE001 - logs are best-effort context for an error message
            return ""

    def stop(self, ray_job_id: str) -> None:
        self.client.stop_job(ray_job_id)

    def ping(self) -> str:
        try:
            self.client.list_jobs()
            return "ok"
        except Exception as exc:  # noqa: BLE001 - readiness reports it
            return f"error: {exc}"

    def capacity(self) -> list[dict[str, float]] | None:
        """Each live node's total resources (the dashboard's state API), the same answer for
        CAPACITY_TTL_S; None when the cluster cannot be asked."""
        at, nodes = self._capacity
        if time.monotonic() - at < CAPACITY_TTL_S:
            return nodes
        nodes = self._live_nodes()
        self._capacity = (time.monotonic(), nodes)
        return nodes

    def _live_nodes(self) -> list[dict[str, float]] | None:
        import httpx

        try:
            answer = httpx.get(f"{self.address}/api/v0/nodes", headers=ray_auth_headers(), timeout=CAPACITY_TIMEOUT_S,
                               params={"detail": "true", "limit": 10_000, "filter_keys": "state",
                                       "filter_predicates": "=", "filter_values": "ALIVE"})
            answer.raise_for_status()
            rows = answer.json()["data"]["result"]["result"]
            return [{k: float(v) for k, v in row["resources_total"].items()} for row in rows if row["state"] == "ALIVE"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None  # not refusing anything on a cluster we cannot see

    def fits(self, spec) -> None:
        """422 naming the field when the cluster could never place the job's actors
        (`trainer/spec/placement.py`: one actor bigger than every node, more CPUs, GPUs or custom
        resources than the cluster has in all); nothing when it may, or when the cluster cannot
        be asked. Capacity, not what is free: a busy cluster's jobs wait in the queue."""
        nodes = self.capacity()
        if not nodes:
            return
        refusal = unfit(job_roles(spec, gpus=any(n.get("GPU", 0.0) > 0 for n in nodes)), nodes)
        if refusal is not None:
            field, why = refusal
            raise ApiError(422, "exceeds_cluster", f"{field}: {why}", field)
