"""The dry run: what a job's rewards will look like, before anything expensive launches.

It samples N training tasks, rolls each out `group_size` times with the base model in this
process (no learners; on the cluster, as `python -m trainer.checks`), scores them with every
reward module under its time limit, and
reports the reward distribution per component, the modules that raised or timed out, and the
share of groups whose rewards all tie (a group that ties gives GRPO no signal).
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from trainer.actors.reward_worker import load_modules, score_samples
from trainer.actors.rollout_worker import RolloutWorker
from trainer.checks.preflight import preflight
from trainer.spec import JobSpec
from trainer.types import SamplingParams


def distribution(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {"count": len(values), "mean": statistics.fmean(values), "std": statistics.pstdev(values),
            "min": min(values), "p10": q[0], "p50": q[4], "p90": q[8], "max": max(values)}


def dry_run(spec: JobSpec, tasks: int = 4, seed: int = 0, env=None) -> dict[str, Any]:
    """The report; `env` is the environment preflight built (preflight runs first without it)."""
    env = preflight(spec) if env is None else env
    pool = list(env.tasks("train"))
    chosen = random.Random(seed).sample(pool, min(tasks, len(pool)))
    g = spec.algorithm.group_size
    started = time.perf_counter()
    worker = RolloutWorker(spec.rollout.engine, spec.model.path, spec.rollout_dtype, threads=None,
                           environment=(spec.environment.name, spec.environment.config),
                           vllm=spec.rollout.vllm.model_dump())
    sampling = SamplingParams(spec.rollout.max_new_tokens, spec.rollout.temperature, spec.rollout.top_p)
    samples = worker.generate(chosen, 0, g, sampling, seed)
    rollout_s = time.perf_counter() - started
    scores = score_samples(load_modules(spec.rewards), samples)
    ok_totals = [t for t, f in zip(scores.total, scores.failed, strict=True) if not f]
    groups = [scores.total[i:i + g] for i in range(0, len(samples), g)]
    group_failed = [scores.failed[i:i + g] for i in range(0, len(samples), g)]
    scored_groups = [[v for v, f in zip(vals, fails, strict=True) if not f] for vals, fails in zip(groups, group_failed, strict=True)]
    scored_groups = [grp for grp in scored_groups if len(grp) > 1]
    tied = sum(1 for grp in scored_groups if max(grp) == min(grp))
    report: dict[str, Any] = {
        "tasks": len(chosen), "samples": len(samples), "group_size": g, "rollout_s": rollout_s,
        "reward": distribution(ok_totals),
        "components": {name: {**distribution([v for v in values if v is not None]),
                              "none": sum(v is None for v in values)} for name, values in scores.components.items()},
        "failures": [{"module": f.module, "samples": len(f.indices), "timed_out": f.timed_out,
                      "error": f.error.strip().splitlines()[-1][:500]} for f in scores.failures],
        "failed_samples": sum(scores.failed),
        "groups": {"count": len(scored_groups), "all_equal": tied,
                   "all_equal_share": tied / len(scored_groups) if scored_groups else 1.0},
        "response_tokens_mean": statistics.fmean(len(s.completion.token_ids) for s in samples),
    }
    if all(s.outcome for s in samples):
        outcomes = [s.outcome.get("outcome") for s in samples]
        report["outcomes"] = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    warnings = []
    if report["groups"]["all_equal_share"] >= 0.5:
        warnings.append(f"{tied} of {len(scored_groups)} groups have all-equal rewards: GRPO learns nothing from them")
    for f in report["failures"]:
        what = "timed out" if f["timed_out"] else "failed"
        warnings.append(f"reward module {f['module']!r} {what} on {f['samples']} samples: {f['error']}")
    report["warnings"] = warnings
    return report
