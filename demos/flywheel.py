"""`make demo-flywheel`: the closed loop, run by the service itself, round after round.

Round 0 serves the warm-started support agent (a job of `configs/support_desk.toml` with no RL
step) as the deployment `support-agent` (`flywheel serve-model`, the OpenAI API). In each round
simulated customers — the support-desk simulator, each driving its conversation through the
official `openai` client against that endpoint — have their tickets answered; the server logs
every conversation as a trace, and each outcome is reported afterwards through the traces API.
Then a job learns **only from the traces logged in that round** (`configs/support_desk_flywheel.toml`,
starting from the model that served them), is evaluated on the simulator's held-out tickets,
and goes through the deployment's gate; promoted, it serves the next round. In the first round a
deliberately worse candidate (trained on the escalated conversations only) is put to the gate too.

It prints a table per round (version, conversations, production resolved / escalated / violation,
gate verdict) and writes `flywheel.png` (production resolution per round) into the state folder.

    python -m demos.flywheel                          # 2 rounds of 800 conversations
    python -m demos.flywheel --rounds 3 --conversations 400
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import httpx

from demos.customers import rates, serve_customers
from demos.support_desk import ROOT, serving
from demos.traces import run_job
from service.client import check, wait_ready
from service.jobs.launcher import free_port

PRODUCTION_SEEDS = 5_000_000
"""Production tickets: disjoint from the simulator's train and eval tickets and from the demos'."""


def registered(c: httpx.Client, job: dict) -> dict:
    return next(m for m in check(c.get("/v1/models"))["models"] if m["job_id"] == job["id"])


def report_outcomes(c: httpx.Client, served) -> None:
    """Each outcome, once the server has delivered its trace (it logs in the background)."""
    for s in served:
        for _ in range(600):
            r = c.post(f"/v1/traces/{s.trace_id}/outcome", json={"outcome": s.outcome})
            if r.status_code != 404:
                check(r)
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"the trace {s.trace_id} never arrived")


def start_serving(url: str, key: str, state: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "FLYWHEEL_URL": url, "FLYWHEEL_API_KEY": key}
    log = open(state / "serve-model.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve-model", "support-agent", "--port", str(port),
                             "--tool-format", "call", "--poll-s", "1"], cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/healthz", proc, f"the serving process (its log: {state / 'serve-model.log'})", 300)
    return proc, f"{base}/v1"


def wait_serving(base_url: str, version: str) -> None:
    health = base_url.removesuffix("/v1") + "/healthz"
    while httpx.get(health, timeout=10).json()["version"] != version:
        time.sleep(0.5)


def gate_line(verdict: dict | None, promoted: bool) -> str:
    if verdict is None:
        return "first model"
    rows = ", ".join(f"{r['metric'].removeprefix('eval/')} {r['current']:.3f}→{r['candidate']:.3f}"
                     for r in verdict["rows"] if r["current"] is not None and r["candidate"] is not None)
    return f"{'promoted' if promoted else 'REFUSED'} ({rows})"


def plot(rounds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for key, label in (("resolved", "resolved"), ("escalated", "escalated"), ("violation", "violation")):
        ax.plot(xs, [100 * r["rates"][key] for r in rounds], marker="o", label=label)
    ax.set_xticks(xs)
    ax.set_xlabel("round (model serving it)")
    ax.set_ylabel("% of production conversations")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    ax.set_title("support-agent in production, round by round", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="training rounds (production is measured once more after)")
    p.add_argument("--conversations", type=int, default=800, help="production conversations per round")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-worse-candidate", action="store_true", help="skip the deliberately worse candidate")
    p.add_argument("--state-dir", default="runs/demo-flywheel-service")
    a = p.parse_args()
    base = tomllib.loads((ROOT / "configs/support_desk.toml").read_text())
    learn = tomllib.loads((ROOT / "configs/support_desk_flywheel.toml").read_text())
    started, table = time.monotonic(), []

    with serving(a.state_dir) as (url, key, _), httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        state = (ROOT / a.state_dir).resolve()
        warm = run_job(c, {**base, "name": "round0-warm-start",
                           "schedule": {**base["schedule"], "steps": 0, "eval_before_after": True}})
        model = registered(c, warm)
        check(c.post("/v1/deployments", json={"name": "support-agent", "model": model["id"]}))
        customers_key = check(c.post("/v1/deployments/support-agent/keys", json={"name": "demo customers"}))["key"]
        server, endpoint = start_serving(url, key, state)
        try:
            verdict, promoted = None, True
            for k in range(a.rounds + 1):
                wait_serving(endpoint, model["id"])
                since = datetime.now(UTC).isoformat()
                seeds = list(range(PRODUCTION_SEEDS + k * a.conversations, PRODUCTION_SEEDS + (k + 1) * a.conversations))
                t0 = time.monotonic()
                served = serve_customers(endpoint, "support-agent", customers_key, seeds, a.concurrency)
                seconds = time.monotonic() - t0
                report_outcomes(c, served)
                row = {"round": k, "model": model["id"], "name": model["name"], "conversations": len(served),
                       "rates": rates(served), "versions": sorted({s.version for s in served}),
                       "gate": gate_line(verdict, promoted), "seconds": seconds}
                table.append(row)
                print(f"round {k}: {model['name']} ({model['id']}) answered {len(served)} conversations in "
                      f"{seconds:.0f} s: " + ", ".join(f"{o} {v:.1%}" for o, v in row["rates"].items()), flush=True)
                if k == a.rounds:
                    break
                select = {"model": "support-agent", "since": since}
                spec = {**learn, "name": f"round{k + 1}", "model": {"path": model["path"]},
                        "environment": {**learn["environment"], "config": {**learn["environment"]["config"],
                                                                          "select": select}}}
                if k == 0 and not a.no_worse_candidate:
                    worse = run_job(c, {**spec, "name": "escalate-everything", "environment": {
                        **spec["environment"], "config": {**spec["environment"]["config"],
                                                          "select": {**select, "outcome": ["escalated"]}}},
                                        "algorithm": {"type": "filtered_sft", "min_reward": -10.0}})
                    r = c.post("/v1/deployments/support-agent/promote", json={"model": registered(c, worse)["id"]})
                    print(f"  escalate-everything: {gate_line(r.json()['error'].get('verdict'), False)}"
                          if r.status_code == 409 else f"  escalate-everything was promoted: {r.text}", flush=True)
                candidate = registered(c, run_job(c, spec))
                r = c.post("/v1/deployments/support-agent/promote", json={"model": candidate["id"]})
                promoted = r.status_code == 200
                verdict = r.json()["verdict"] if promoted else r.json()["error"].get("verdict")
                print(f"  {candidate['name']}: {gate_line(verdict, promoted)}", flush=True)
                if promoted:
                    model = candidate
        finally:
            server.terminate()
            server.wait(60)

    print("\nproduction, round by round (the simulator's customers through the OpenAI API; outcomes logged later):")
    print(f"  {'round':>5}  {'model':28} {'conversations':>13} {'resolved':>9} {'escalated':>10} {'violation':>10}  gate")
    for r in table:
        print(f"  {r['round']:>5}  {r['name'] + ' ' + r['model'][-6:]:28} {r['conversations']:>13} "
              + "".join(f"{r['rates'][o]:>10.1%}" for o in ("resolved", "escalated", "violation")) + f"  {r['gate']}")
    plot(table, state / "flywheel.png")
    print(f"plot: {state / 'flywheel.png'}\nwall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
