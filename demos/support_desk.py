"""`make demo`: the whole story on one machine, through the service.

Starts the control plane on its embedded defaults (a SQLite file, a local Ray head it starts
itself), makes a team and an API key, submits the support-desk job (warm start, then GRPO) over
REST, follows it with a progress bar, and prints the before/after evaluation on held-out tickets
and where the model, the checkpoints and the wandb run are. The service stops at the end.

    python -m demos.support_desk configs/support_desk.toml
    python -m demos.support_desk configs/support_desk.toml --set rollout.engine=vllm
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.client import wait_ready
from service.jobs.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serving(state_dir: str) -> Iterator[tuple[str, str, str]]:
    """The service on its embedded defaults (a SQLite file under `state_dir`, a local Ray head it
    starts itself) and a new team's key: (url, key, database_url); stopped on exit."""
    from service.core.store import create_team_with_key

    state = (ROOT / state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{state / 'flywheel.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": database_url, "FLYWHEEL_RUNS_DIR": str(state / "jobs"),
           "FLYWHEEL_SCHEDULER_INTERVAL_S": "1", "FLYWHEEL_RAY_DASHBOARD_PORT": str(free_port())}
    env.pop("FLYWHEEL_RAY_ADDRESS", None)  # embedded defaults: the service starts its own Ray head
    key = create_team_with_key(database_url, f"demo-{int(time.time())}", quota=1)
    print(f"starting the service on {url} (store {database_url}, local Ray head; its log: "
          f"{state / 'service.log'})", flush=True)
    log = open(state / "service.log", "a")  # the service's own log, closed with it below
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=log, stderr=log)
    try:
        wait_ready(f"{url}/readyz", server, f"the service (its log: {state / 'service.log'})")
        os.environ.update(FLYWHEEL_URL=url, FLYWHEEL_API_KEY=key)
        yield url, key, database_url
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="configs/support_desk.toml")
    p.add_argument("--state-dir", default="runs/demo-service", help="the demo service's database and job folders")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the run file by its dotted path")
    a = p.parse_args()

    from service import cli
    from service.client import check
    from trainer.spec import load_spec, parse_overrides

    with serving(a.state_dir) as (url, key, database_url):
        spec = load_spec(ROOT / a.config, parse_overrides(a.set)).model_dump(mode="json")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            job = check(c.post("/v1/jobs", json=spec))
        print(f"submitted {job['id']} ({spec['name']}): POST {url}/v1/jobs", flush=True)
        started = time.monotonic()
        try:
            cli.follow(job["id"], interval=2.0)  # progress bar, then the before/after table
        finally:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
                job = c.get(f"/v1/jobs/{job['id']}").json()
        run_dir = Path(job["run_dir"])
        print(f"\njob {job['id']} {job['state']} in {time.monotonic() - started:.0f} s")
        print(f"exported model: {run_dir / 'model'}")
        print(f"checkpoints:    {run_dir / 'checkpoints'}")
        print(f"wandb run:      {job['wandb']}  (wandb sync {job['wandb']} to upload it)")
        print(f"the record:     the job, its events, metrics and result stay in {database_url}; "
              f"FLYWHEEL_DATABASE_URL={database_url} flywheel serve serves them again")


if __name__ == "__main__":
    main()
