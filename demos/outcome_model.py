"""`make demo-outcome-model`: on-policy RL against what production taught, where no hand-written
reward exists, through the service.

1. The deployed legacy agent answers 2,000 simulated customers; each conversation is logged
   through `POST /v1/traces` and its outcome arrives later (as in `make demo-traces`).
2. An `outcome_model` job fits a classifier of "resolved" on four fifths of those traces and
   measures it on the rest: held-out AUC and calibration (configs/support_desk_outcome_model.toml).
3. A GRPO job on the simulator (configs/support_desk.toml: the same warm start as `make demo`)
   whose only reward is the `outcome_model` module scoring each episode with that classifier.
   The simulator's true outcome is scored too, at weight 0, and the reward is `compare_to` it:
   every step logs `reward_gap/outcome_model`, predicted minus true resolution.
4. The outcome model's held-out measures, the true held-out rates before and after, and the gap
   over the run.

    python -m demos.outcome_model
    python -m demos.outcome_model --classifier-steps 200 --steps 60
"""

from __future__ import annotations

import argparse
import statistics
import time
import tomllib
from pathlib import Path

import httpx

from demos.legacy_agent import Mistakes
from demos.production import production_log, send
from demos.support_desk import ROOT, serving
from demos.traces import RATES, run_job

TRUE_RESOLUTION = {"name": "resolution", "weight": 0.0,
                   "config": {"resolved": 1.0, "escalated": 0.0, "violation": 0.0, "unfinished": 0.0}}
"""The simulator's outcome as 1 (resolved) or 0, on the scale of the outcome model's P(resolved):
scored, logged and compared, never learned from (weight 0)."""


def rates(metrics: dict) -> str:
    return " / ".join(f"{metrics[f'eval/{r}']:.1%}" for r in RATES)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier-config", default="configs/support_desk_outcome_model.toml")
    p.add_argument("--config", default="configs/support_desk.toml", help="the GRPO job on the simulator")
    p.add_argument("--count", type=int, default=2000, help="conversations the deployed agent logs")
    p.add_argument("--classifier-steps", type=int, default=None, help="default: the classifier config's")
    p.add_argument("--steps", type=int, default=None, help="GRPO steps; default: the config's")
    p.add_argument("--state-dir", default="runs/demo-outcome-model-service")
    a = p.parse_args()
    classifier = tomllib.loads((ROOT / a.classifier_config).read_text())
    grpo = tomllib.loads((ROOT / a.config).read_text())
    started = time.monotonic()

    with serving(a.state_dir) as (url, key, _), httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        tally = send(production_log(a.count, Mistakes()), url, key)
        print(f"logged {a.count} conversations of the legacy agent, then their outcomes: "
              + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())), flush=True)
        if a.classifier_steps:
            classifier["schedule"]["steps"] = a.classifier_steps
        fitted = run_job(c, {**classifier, "schedule": {**classifier["schedule"], "eval_before_after": True}})
        measures = fitted["result"]["after"]["metrics"]
        export = str(Path(fitted["run_dir"]) / "model")
        spec = {**grpo, "name": "desk-grpo-outcome-model",
                "rewards": [{"name": "outcome_model", "config": {"path": export}, "compare_to": "resolution"},
                            TRUE_RESOLUTION],
                "schedule": {**grpo["schedule"], "eval_before_after": True, **({"steps": a.steps} if a.steps else {})}}
        job = run_job(c, spec)
        metrics = check_metrics(c, job["id"])

    before, after = job["result"]["before"]["metrics"], job["result"]["after"]["metrics"]
    print(f"\noutcome model ({measures['eval/traces']:.0f} held-out traces, {measures['eval/positive_rate']:.1%} "
          f"resolved): AUC {measures['eval/auc']:.3f}, ECE {measures['eval/ece']:.3f}, Brier {measures['eval/brier']:.3f}, "
          f"accuracy {measures['eval/accuracy']:.1%}")
    print(f"GRPO rewarded by it, true held-out rates on {grpo['environment']['config']['eval_size']} simulator "
          "tickets (resolved / escalated / violation):")
    print(f"  warm start (step 0):  {rates(before)}")
    print(f"  after {job['result']['after']['step']} steps:       {rates(after)}")
    gaps = [m["reward_gap/outcome_model"] for m in metrics]
    tenth = max(len(gaps) // 10, 1)
    print(f"predicted minus true resolution on the training rollouts: first {tenth} steps "
          f"{statistics.fmean(gaps[:tenth]):+.3f}, last {tenth} {statistics.fmean(gaps[-tenth:]):+.3f}; held out "
          f"before {before.get('eval/reward_gap/outcome_model', float('nan')):+.3f}, after "
          f"{after.get('eval/reward_gap/outcome_model', float('nan')):+.3f}")
    print(f"wall time {time.monotonic() - started:.0f} s")


def check_metrics(c: httpx.Client, job_id: str) -> list[dict]:
    """The job's per-step metrics as the service stored them, in step order."""
    from service.client import check

    rows, after = [], 0
    while page := check(c.get(f"/v1/jobs/{job_id}/metrics", params={"after_step": after}))["metrics"]:
        rows, after = rows + page, page[-1]["step"]
    return [r["values"] for r in rows]


if __name__ == "__main__":
    main()
