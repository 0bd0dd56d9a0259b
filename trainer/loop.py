"""The training loop: the seven steps of a training step, top to bottom, one call each
(docs/architecture.md, "One training step").

    sample → roll out → score → advantages → learn → sync weights → log (and checkpoint)

With asynchronous rollout (`rollout.max_staleness = k`) steps 1 and 2 run k steps ahead: the
workers generate the next batches while the learners train on this one (`trainer.driver.pipeline`).
The algorithms that learn from logged traces (`offline_pg`, `kto`, `filtered_sft`) roll nothing
out: steps 1 and 2 take the next traces, as production logged them (`trainer.driver.offline`).

It runs in the driver process; the steps it calls are in `trainer.driver`, the actors they drive
in `trainer.actors`. How the job learns (on-policy, with a critic, from logged traces) is one
object with the same two calls (`trainer.learning`), chosen by asking the algorithm object, never
the spec's `type`; the run's start, checkpoints, failure and end are `trainer.driver.harness`'s.

Departures from textbook GRPO, on purpose: a sample whose reward module failed is masked out of
the loss and out of its group's statistics instead of scored 0; the policy ratio's denominator is
the rollout engine's own logprob, or, with truncated importance sampling (`algorithm.tis_cap`, on
by default with vLLM), the learner's, with each token weighted by the capped ratio of the two.

Run it with `python -m trainer.run configs/demo.toml`.
"""

from __future__ import annotations

import time

from trainer.actors.cluster import get_all, start_actors
from trainer.algorithms import build_algorithm
from trainer.checks.preflight import preflight
from trainer.driver import checkpoint
from trainer.driver.evaluation import evaluate, has_eval_split, report_evaluation
from trainer.driver.harness import RunResult, job_run
from trainer.driver.metrics import step_metrics
from trainer.driver.rollout import RewardFailureError
from trainer.driver.sampler import TaskSampler
from trainer.driver.tracking import progress_line
from trainer.driver.warm_start import warm_start
from trainer.driver.weights import sync_weights
from trainer.learning import way_of_learning
from trainer.spec import JobSpec

__all__ = ["RewardFailureError", "RunResult", "train"]


def train(spec: JobSpec, stop_after: int | None = None, echo=None, reporter=None) -> RunResult:
    """Run (or resume) a job to `schedule.steps`; `stop_after` ends it early, as a crash would.
    `reporter` (trainer.driver.reporting) sends events, metrics and checkpoints to the control plane;
    `echo` takes each progress line (default: the log)."""
    env = preflight(spec)  # a bad model path, dataset or reward module is refused before any actor starts
    algorithm = build_algorithm(spec.algorithm, spec.rollout.max_new_tokens)
    with job_run(spec, start_actors, reporter, echo) as (run, actors):
        state, resume = run.state, run.resume
        sampler = TaskSampler(list(env.tasks("train")), state.seed, state.data_epoch, state.data_cursor)
        way = way_of_learning(actors, sampler, spec, algorithm,
                              checkpoint.in_flight(run.checkpoint_dir, resume[0]) if resume else [])
        if resume:
            checkpoint.restore(actors.learners, run.checkpoint_dir, resume[0], actors.critics)
            sync_weights(actors, version=state.step)
            run.echo(f"resumed from {run.checkpoint_dir / resume[0]} at step {state.step + 1}")
        tracker = run.start(f"training from step {state.step + 1}")
        evaluate_ends = has_eval_split(env) and spec.schedule.eval_before_after
        if not resume:
            if spec.warm_start is not None:                                           # 0. warm start
                tracker.log(warm_start(actors, spec, run.echo, run.reporter), 0)
                sync_weights(actors, version=0)
            if evaluate_ends:
                run.evaluations["before"] = evaluate(actors, env, spec, 0)
                report_evaluation("before", 0, run.evaluations["before"], tracker, run.reporter, run.echo)
        last = min(spec.schedule.steps, stop_after or spec.schedule.steps)
        for step in range(state.step + 1, last + 1):
            batch = way.collect(step)                                                 # 1-3. sample, roll out,
            t2 = time.perf_counter()                                                  #   score
            learn_stats, advantages_P_G = way.learn(batch)                            # 4+5. advantages, learn
            t3 = time.perf_counter()
            sync_weights(actors, version=step)                                        # 6. sync weights
            t4 = time.perf_counter()
            metrics = step_metrics(batch.samples, batch.scores, advantages_P_G,      # 7. log
                                   learn_stats, {**batch.timings, "learn": t3 - t2, "sync": t4 - t3},
                                   spec.reward_comparisons)
            metrics.update(batch.stats)
            if spec.schedule.eval_interval and step % spec.schedule.eval_interval == 0 and step != spec.schedule.steps:
                metrics.update(evaluate(actors, env, spec, step))
            run.step_done(step, metrics, progress_line(step, spec.schedule.steps, metrics))
            if run.checkpoint_due(step, last):                                        #    and checkpoint
                run.checkpointed(step, checkpoint.save(
                    actors.learners, run.checkpoint_dir,
                    checkpoint.LoopState(step, sampler.epoch, sampler.cursor, state.seed),
                    actors.critics, way.in_flight()))
            state.step = step
        export_dir = None
        if state.step >= spec.schedule.steps and evaluate_ends:
            no_step = spec.schedule.steps == 0 and "before" in run.evaluations    # the same model: measured once
            run.evaluations["after"] = (run.evaluations["before"] if no_step
                                        else evaluate(actors, env, spec, state.step))
            report_evaluation("after", state.step, run.evaluations["after"], tracker, run.reporter, run.echo)
        if state.step >= spec.schedule.steps and (spec.schedule.steps or spec.warm_start is not None):
            export_dir = spec.run_dir / "model"            # (no step, no warm start: an evaluation, no export)
            get_all([lr.export.remote(str(export_dir)) for lr in actors.learners])
        return run.finish(export_dir)
