"""Held-out evaluation from the driver: before the first RL step, every `eval_interval` steps,
and after the last. Nothing is learned from it."""

from __future__ import annotations

import statistics

from trainer.actors.cluster import JobActors
from trainer.driver.metrics import reward_gaps
from trainer.driver.rollout import gather_scores, rollout
from trainer.spec import JobSpec
from trainer.spec.reports import EvaluationData, EvaluationReport
from trainer.types import Sample

EVAL_SEED = 10**9


def has_eval_split(env) -> bool:
    try:
        return bool(list(env.tasks("eval")))
    except ValueError:
        return False


def evaluate(actors: JobActors, env, spec: JobSpec, step: int) -> dict[str, float]:
    """One sample (or episode) per held-out task, scored by the job's rewards. Multi-turn
    environments add outcome rates, turns, tokens and latency per episode."""
    if not has_eval_split(env):
        return {}
    samples, score_refs = rollout(actors, list(env.tasks("eval")), spec, EVAL_SEED + step * 1_009, group_size=1)
    scores = gather_scores(score_refs)
    ok = [r for r, f in zip(scores.total, scores.failed, strict=True) if not f]
    out = {"eval/reward_mean": statistics.fmean(ok) if ok else 0.0, "eval/reward_failed": sum(scores.failed)}
    for name, values in scores.components.items():
        vals = [v for v in values if v is not None]
        out[f"eval/reward/{name}"] = statistics.fmean(vals) if vals else 0.0
    out.update({f"eval/{k}": v for k, v in reward_gaps(scores.components, spec.reward_comparisons).items()})
    if samples and all(s.outcome for s in samples):
        out.update(outcome_metrics(samples))
    return out


def outcome_metrics(samples: list[Sample]) -> dict[str, float]:
    """Rates of each outcome, and turns, policy tokens and wall seconds per episode."""
    n = len(samples)
    out = {f"eval/{o}_rate": sum(s.outcome.get("outcome") == o for s in samples) / n
           for o in ("resolved", "escalated", "violation")}
    out["eval/turns_mean"] = statistics.fmean(s.outcome.get("turns", 0) for s in samples)
    out["eval/tokens_per_episode"] = statistics.fmean(sum(s.completion.loss_mask()) for s in samples)
    out["eval/latency_s_per_episode"] = statistics.fmean(s.outcome.get("latency_s", 0.0) for s in samples)
    return out


def report_evaluation(phase: str, step: int, metrics: dict[str, float], tracker, reporter, echo) -> None:
    """Log an evaluation and send it to the control plane, which keeps `before` and `after` as
    the job's result."""
    tracker.log({f"{k}_{phase}" if k.startswith("eval/") else k: v for k, v in metrics.items()}, step)
    echo(f"evaluation ({phase}, step {step}): " + ", ".join(f"{k[5:]} {v:.3g}" for k, v in metrics.items()))
    reporter.send(EvaluationReport(message=f"evaluation {phase} at step {step}",
                                   data=EvaluationData(phase=phase, step=step, metrics=metrics)))
