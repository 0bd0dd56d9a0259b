"""The training loop: the seven steps of a training step, top to bottom, one call each
(docs/architecture.md, "One training step").

    sample → roll out → score → advantages → learn → sync weights → log (and checkpoint)

With asynchronous rollout (`rollout.max_staleness = k`) steps 1 and 2 run k steps ahead: the
workers generate the next batches while the learners train on this one (`trainer.driver.pipeline`).
The algorithms that learn from logged traces (`offline_pg`, `kto`, `filtered_sft`) roll nothing
out: steps 1 and 2 take the next traces, as production logged them (`trainer.driver.offline`).

It runs in the driver process; the steps it calls are in `trainer.driver`, the actors they drive
in `trainer.actors`, and what differs between algorithms is asked of the algorithm object
(`trainer.algorithms`), never of the spec's `type`.

Departures from textbook GRPO, on purpose: a sample whose reward module failed is masked out of
the loss and out of its group's statistics instead of scored 0; the policy ratio's denominator is
the rollout engine's own logprob, or, with truncated importance sampling (`algorithm.tis_cap`, on
by default with vLLM), the learner's, with each token weighted by the capped ratio of the two.

Run it with `python -m trainer.run configs/demo.toml`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.actors.cluster import connect, get_all, start_actors
from trainer.algorithms import build_algorithm
from trainer.checks.preflight import preflight
from trainer.driver import checkpoint, offline
from trainer.driver.evaluation import evaluate, has_eval_split, report_evaluation
from trainer.driver.learn import compute_advantages, learn, ppo_learn
from trainer.driver.metrics import step_metrics
from trainer.driver.pipeline import RolloutPipeline, drop_stale
from trainer.driver.reporting import NullReporter
from trainer.driver.rollout import (
    RewardFailureError,
    check_reward_failures,
    fill_with_informative_groups,
    gather_scores,
)
from trainer.driver.sampler import TaskSampler
from trainer.driver.tracking import Tracker, progress_line
from trainer.driver.warm_start import warm_start
from trainer.driver.weights import sync_weights
from trainer.spec import JobSpec

__all__ = ["RewardFailureError", "RunResult", "finish", "train"]


@dataclass
class RunResult:
    run_dir: Path
    steps_done: int
    export_dir: Path | None
    checkpoint_dir: Path
    wandb: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)
    """Held-out evaluation by phase: `before` (after any warm start) and `after` (the end)."""


def finish(spec: JobSpec, step: int, export_dir: Path | None, tracker: Tracker, reporter,
           history: list[dict[str, float]], evaluations: dict[str, dict[str, float]]) -> RunResult:
    """Close the wandb run, tell the control plane where the export is, and sum the run up."""
    tracker.summary({"steps_done": step})
    tracker.finish()
    reporter.send("finished", f"stopped after step {step}",
                  {"export_dir": str(export_dir) if export_dir else None, "wandb": tracker.location})
    return RunResult(spec.run_dir, step, export_dir, spec.run_dir / "checkpoints", tracker.location, history,
                     evaluations)


def train(spec: JobSpec, stop_after: int | None = None, echo=print, reporter=None) -> RunResult:
    """Run (or resume) a job to `schedule.steps`; `stop_after` ends it early, as a crash would.
    `reporter` (trainer.driver.reporting) sends events, metrics and checkpoints to the control plane."""
    reporter = reporter or NullReporter()
    env = preflight(spec)  # a bad model path, dataset or reward module is refused before any actor starts
    algorithm = build_algorithm(spec.algorithm, spec.rollout.max_new_tokens)
    g = spec.algorithm.group_size
    ckpt_dir = spec.run_dir / "checkpoints"
    resume = checkpoint.latest(ckpt_dir)
    connect()
    actors = start_actors(spec)
    tracker = None
    try:
        state = resume[1] if resume else checkpoint.LoopState(0, 0, 0, spec.schedule.seed)
        sampler = TaskSampler(list(env.tasks("train")), state.seed, state.data_epoch, state.data_cursor)
        pipeline = RolloutPipeline(actors, sampler, spec, g, checkpoint.in_flight(ckpt_dir, resume[0]) if resume else [])
        traces = offline.prepare(sampler.tasks, spec) if algorithm.offline else {}   # laid out once, up front
        if resume:
            checkpoint.restore(actors.learners, ckpt_dir, resume[0], actors.critics)
            sync_weights(actors, version=state.step)
            echo(f"resumed from {ckpt_dir / resume[0]} at step {state.step + 1}")
        tracker = Tracker(spec.logging, spec.run_dir, spec.name, spec.model_dump(), state.step)
        reporter.send("started", f"training from step {state.step + 1}", {"wandb": tracker.location})
        evaluate_ends = has_eval_split(env) and spec.schedule.eval_before_after
        evaluations: dict[str, dict[str, float]] = {}
        if not resume:
            if spec.warm_start is not None:                                           # 0. warm start
                tracker.log(warm_start(actors, spec, echo, reporter), 0)
                sync_weights(actors, version=0)
            if evaluate_ends:
                evaluations["before"] = evaluate(actors, env, spec, 0)
                report_evaluation("before", 0, evaluations["before"], tracker, reporter, echo)
        if algorithm.offline:
            offline.behaviour_from_base(actors, traces, spec, echo)
        history = []
        kl_control = algorithm.kl_controller()
        last = min(spec.schedule.steps, stop_after or spec.schedule.steps)
        for step in range(state.step + 1, last + 1):
            t0, sampling_stats = time.perf_counter(), {}
            if algorithm.offline:                                                     # 1+2. logged traces,
                samples, score_refs = offline.take(sampler, traces, spec.rollout.prompts_per_step, actors)
                pipeline_stats = {}                                                   #   nothing rolled out
            else:
                pipeline.fill(step)                                                   # 1+2. sample, roll out
                samples, score_refs, pipeline_stats = pipeline.take(step)             #   (k steps ahead)
            t1 = time.perf_counter()
            scores = gather_scores(score_refs)                                        # 3. score
            check_reward_failures(scores, spec.reward_failure_threshold)
            scores, staleness_stats = ((scores, {}) if algorithm.offline
                                       else drop_stale(samples, scores, step, spec.rollout.max_staleness))
            if algorithm.refills_groups:                                              #    (DAPO: refill)
                samples, scores, sampling_stats = fill_with_informative_groups(actors, sampler, spec, step,
                                                                               samples, scores)
            t2 = time.perf_counter()
            if algorithm.needs_critic:                                                # 4+5. PPO: critic,
                learn_stats, advantages_P_G = ppo_learn(actors, samples, scores,      #   GAE, epochs
                                                        algorithm, kl_control, spec, step)
            elif algorithm.offline:                                                   # 4+5. from traces
                learn_stats, advantages_P_G = offline.learn(actors, samples, scores, algorithm, spec)
            else:
                advantages_P_G = compute_advantages(samples, scores, algorithm, g,    # 4. advantages
                                                    spec.rollout.max_new_tokens)
                learn_stats = learn(actors, samples, scores, advantages_P_G, algorithm)  # 5. learn
            t3 = time.perf_counter()
            sync_weights(actors, version=step)                                        # 6. sync weights
            t4 = time.perf_counter()
            metrics = step_metrics(samples, scores, advantages_P_G, learn_stats,     # 7. log
                                   {"rollout": t1 - t0, "reward": t2 - t1, "learn": t3 - t2, "sync": t4 - t3},
                                   spec.reward_comparisons)
            metrics.update({**sampling_stats, **pipeline_stats, **staleness_stats})
            if spec.schedule.eval_interval and step % spec.schedule.eval_interval == 0 and step != spec.schedule.steps:
                metrics.update(evaluate(actors, env, spec, step))
            tracker.log(metrics, step)
            history.append(metrics)
            line = progress_line(step, spec.schedule.steps, metrics)
            echo(line)
            reporter.send("step", line, {"step": step, "metrics": metrics})
            interval = spec.schedule.checkpoint_interval
            if (interval and step % interval == 0) or step == last:
                path = checkpoint.save(actors.learners, ckpt_dir,
                                       checkpoint.LoopState(step, sampler.epoch, sampler.cursor, state.seed),
                                       actors.critics, pipeline.settle())
                reporter.send("checkpoint", f"checkpoint at step {step}", {"step": step, "path": str(path)})
            state.step = step
        export_dir = None
        if state.step >= spec.schedule.steps and evaluate_ends:
            no_step = spec.schedule.steps == 0 and "before" in evaluations    # the same model: measured once
            evaluations["after"] = evaluations["before"] if no_step else evaluate(actors, env, spec, state.step)
            report_evaluation("after", state.step, evaluations["after"], tracker, reporter, echo)
        if state.step >= spec.schedule.steps and (spec.schedule.steps or spec.warm_start is not None):
            export_dir = spec.run_dir / "model"            # (no step, no warm start: an evaluation, no export)
            get_all([lr.export.remote(str(export_dir)) for lr in actors.learners])
        return finish(spec, state.step, export_dir, tracker, reporter, history, evaluations)
    except BaseException as exc:
        if tracker is not None:
            tracker.finish(exit_code=1)
        reporter.send("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        actors.shutdown()
