"""`make demo-traces`: the support desk learned from production logs alone, through the service.

1. The deployed legacy agent answers 2,000 simulated customers; each conversation is logged
   through `POST /v1/traces` as a deployment would log it (no outcome), then each outcome
   arrives on its own (`POST /v1/traces/{id}/outcome`) — `demos.production`.
2. A job clones the logging agent from those traces (supervised on every trace, mistakes and all:
   the warm start every method below starts from).
3. From that clone, one job each of `offline_pg`, `kto` and `filtered_sft`, trained only on the
   same traces (the service freezes the selection into each job's snapshot).
4. A table of held-out resolution, escalation and violation rates on the simulator's 200 eval
   tickets: the logging agent itself (scripted), the clone, and the three methods.

    python -m demos.traces                       # configs/support_desk_traces.toml
    python -m demos.traces --steps 300 --lr 2e-4
"""

from __future__ import annotations

import argparse
import random
import time
import tomllib
from pathlib import Path

import httpx

from demos.legacy_agent import Mistakes, legacy_turns
from demos.production import production_log, send
from demos.support_desk import ROOT, serving
from environments import build as build_environment
from environments.support_desk.simulator import make_ticket, replay

METHODS = {
    "offline_pg": {"type": "offline_pg", "behaviour": "base", "is_cap": 2.0},
    "kto": {"type": "kto", "beta": 0.1, "desirable_at": 0.5},
    "filtered_sft": {"type": "filtered_sft", "min_reward": 0.5},
}
RATES = ("resolved_rate", "escalated_rate", "violation_rate")


def logging_agent_rates(eval_config: dict, seed: int = 0) -> dict[str, float]:
    """The scripted legacy agent itself on the held-out tickets."""
    env = build_environment("support_desk", eval_config)
    rng, outcomes = random.Random(seed), []
    for task in env.tasks("eval"):
        ticket = make_ticket(int(task.columns["ticket_seed"]))
        state = replay(ticket, legacy_turns(ticket, Mistakes(), rng), env.config.max_turns, env.config.max_errors)
        outcomes.append(state.outcome.outcome if state.outcome else "escalated")
    return {f"{o}_rate": outcomes.count(o) / len(outcomes) for o in ("resolved", "escalated", "violation")}


def run_job(c: httpx.Client, spec: dict) -> dict:
    """Submit a job and wait for it; the job as the service last reported it."""
    from service.client import check

    job = check(c.post("/v1/jobs", json=spec))
    frozen = job.get("traces")
    print(f"  {spec['name']}: {job['id']}" + (f" ({frozen['count']} traces, snapshot {frozen['sha256'][:12]})"
                                              if frozen else ""), flush=True)
    started = time.monotonic()
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(3)
        job = check(c.get(f"/v1/jobs/{job['id']}"))
    if job["state"] != "succeeded":
        raise SystemExit(f"job {job['id']} {job['state']}: {job['error']}")
    print(f"  {spec['name']}: done in {time.monotonic() - started:.0f} s", flush=True)
    return job


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="configs/support_desk_traces.toml")
    p.add_argument("--count", type=int, default=2000, help="conversations the deployed agent logs")
    p.add_argument("--clone-steps", type=int, default=None, help="default: the config's schedule.steps")
    p.add_argument("--steps", type=int, default=150, help="steps of each offline method")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate of each offline method")
    p.add_argument("--state-dir", default="runs/demo-traces-service")
    a = p.parse_args()
    base = tomllib.loads((ROOT / a.config).read_text())
    eval_config = base["environment"]["config"]["eval"]["config"]

    with serving(a.state_dir) as (url, key, _), httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        tally = send(production_log(a.count, Mistakes()), url, key)
        print(f"logged {a.count} conversations of the legacy agent, then their outcomes: "
              + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())), flush=True)
        clone_spec = {**base, "name": "clone", "schedule": {**base["schedule"], "eval_before_after": True,
                                                             **({"steps": a.clone_steps} if a.clone_steps else {})}}
        clone = run_job(c, clone_spec)
        rows = {"logging agent (scripted)": logging_agent_rates(eval_config),
                "clone (warm start)": clone["result"]["after"]["metrics"]}
        for name, algorithm in METHODS.items():
            spec = {**base, "name": name, "model": {"path": str(Path(clone["run_dir"]) / "model")},
                    "algorithm": algorithm, "learner": {**base["learner"], "lr": a.lr},
                    "schedule": {**base["schedule"], "steps": a.steps, "eval_before_after": True}}
            rows[name] = run_job(c, spec)["result"]["after"]["metrics"]

    print(f"\nheld-out evaluation, {eval_config['eval_size']} simulator tickets never logged nor trained on:")
    print(f"  {'':28}{'resolved':>10}{'escalated':>11}{'violation':>11}")
    for name, m in rows.items():
        rates = [m.get(r, m.get(f'eval/{r}', 0.0)) for r in RATES]
        print(f"  {name:28}" + "".join(f"{v:>10.1%} " for v in rates))


if __name__ == "__main__":
    main()
