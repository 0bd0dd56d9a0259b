"""Fitting an outcome model (the `outcome_model` algorithm): a classifier that predicts from a
conversation whether production saw the good outcome, learned from the `traces` environment's
labelled traces, measured on the held-out ones, and exported for the `outcome_model` reward module.

    split the traces → encode them → each step: the next batch, one optimizer step → measure → export

It runs in the driver like `trainer.loop.train`, in the same harness (`trainer.driver.harness`:
start, failure and end), with the same checkpoints (DeepSpeed's, and the
loop state: the data order is seeded, so a resumed run reads what an uninterrupted one would),
reports and wandb run; its actors are the classifier's ranks only (`actors/classifier.py`).
The held-out measures (AUC, expected calibration error, Brier score, accuracy) are the job's
evaluation `before` (the fresh head) and `after`; the reliability table goes into the export's
`outcome_model.json`.
"""

from __future__ import annotations

import statistics
import time

from trainer.actors.cluster import get_all, start_classifiers
from trainer.algorithms.classification import calibration, roc_auc
from trainer.checks.preflight import preflight
from trainer.driver import checkpoint, outcomes
from trainer.driver.evaluation import report_evaluation
from trainer.driver.harness import RunResult, job_run
from trainer.driver.outcomes import Labelled
from trainer.driver.sampler import TaskSampler
from trainer.spec import JobSpec


def _shares(rows: list, ranks: int) -> list[list]:
    """Rows cut into `ranks` contiguous shares (the step's batch divides evenly by the spec's rules)."""
    size = -(-len(rows) // ranks)
    return [rows[r * size:(r + 1) * size] for r in range(ranks)]


def predict(actors, rows: list[Labelled]) -> list[float]:
    """P(good outcome) of every row, the ranks each scoring a share (all of them take part: under
    ZeRO-3 a forward pass gathers parameters collectively)."""
    shares = _shares([r.ids for r in rows], len(actors.ranks))
    shares = [s or shares[0][:1] for s in shares]   # a rank with nothing left scores one row, dropped below
    parts = get_all([c.predict.remote(s) for c, s in zip(actors.ranks, shares, strict=True)])
    return [p for part in parts for p in part][:len(rows)]


def measure(actors, rows: list[Labelled]) -> tuple[dict[str, float], list[dict]]:
    """The held-out measures (as `eval/` metrics) and the reliability table."""
    probs, labels = predict(actors, rows), [r.positive for r in rows]
    reliability = calibration(probs, labels)
    metrics = {"eval/auc": roc_auc(probs, labels), "eval/ece": reliability["ece"], "eval/brier": reliability["brier"],
               "eval/accuracy": statistics.fmean((p > 0.5) == y for p, y in zip(probs, labels, strict=True)),
               "eval/positive_rate": statistics.fmean(labels), "eval/predicted_mean": statistics.fmean(probs),
               "eval/traces": float(len(rows))}
    return metrics, reliability["bins"]


def fit(spec: JobSpec, stop_after: int | None = None, echo=None, reporter=None) -> RunResult:
    """Fit (or resume fitting) the outcome model to `schedule.steps`; `stop_after` ends it early."""
    from transformers import AutoTokenizer

    algorithm = spec.algorithm
    env = preflight(spec)  # also refuses traces the classifier cannot be fitted or measured on
    train_rows, held_rows = outcomes.split(list(env.tasks("train")), algorithm)
    tokenizer = AutoTokenizer.from_pretrained(spec.model.path)
    train_set = outcomes.encode(tokenizer, train_rows, algorithm.max_tokens)
    held_set = outcomes.encode(tokenizer, held_rows, algorithm.max_tokens)
    with job_run(spec, start_classifiers, reporter, echo) as (run, actors):
        run.echo(f"outcome model of {algorithm.label!r} in {algorithm.positive}: {len(train_set)} traces to learn "
                 f"from ({statistics.fmean(r.positive for r in train_set):.1%} positive), {len(held_set)} held out")
        state, resume = run.state, run.resume
        sampler = TaskSampler(train_set, state.seed, state.data_epoch, state.data_cursor)
        if resume:
            checkpoint.restore(actors.ranks, run.checkpoint_dir, resume[0])
            run.echo(f"resumed from {run.checkpoint_dir / resume[0]} at step {state.step + 1}")
        tracker = run.start(f"fitting the outcome model from step {state.step + 1}")
        if not resume and spec.schedule.eval_before_after:
            run.evaluations["before"] = measure(actors, held_set)[0]
            report_evaluation("before", 0, run.evaluations["before"], tracker, run.reporter, run.echo)
        n, last = spec.rollout.prompts_per_step, min(spec.schedule.steps, stop_after or spec.schedule.steps)
        for step in range(state.step + 1, last + 1):
            t0 = time.perf_counter()
            batch = sampler.next(n)                                                   # the next traces
            shares = _shares(batch, len(actors.ranks))
            per_rank = get_all([c.train_step.remote([r.ids for r in s], [r.positive for r in s], n)  # one step
                                for c, s in zip(actors.ranks, shares, strict=True)])
            metrics = {"loss": sum(p["loss"] for p in per_rank),
                       "accuracy": sum(p["correct"] for p in per_rank) / n,
                       "positive_rate": statistics.fmean(r.positive for r in batch),
                       "time/step": time.perf_counter() - t0}
            if spec.schedule.eval_interval and step % spec.schedule.eval_interval == 0 and step != spec.schedule.steps:
                metrics.update(measure(actors, held_set)[0])                          # held-out, on the way
            line = (f"step {step}/{spec.schedule.steps} | loss {metrics['loss']:.4f} | accuracy "
                    f"{metrics['accuracy']:.1%} | {metrics['time/step']:.2f} s"
                    + (f" | held-out auc {metrics['eval/auc']:.3f}" if "eval/auc" in metrics else ""))
            run.step_done(step, metrics, line)
            if run.checkpoint_due(step, last):
                run.checkpointed(step, checkpoint.save(actors.ranks, run.checkpoint_dir, checkpoint.LoopState(
                    step, sampler.epoch, sampler.cursor, state.seed)))
            state.step = step
        export_dir = None
        if state.step >= spec.schedule.steps:
            metrics, bins = measure(actors, held_set)                                 # measure, export
            run.evaluations["after"] = metrics
            report_evaluation("after", state.step, metrics, tracker, run.reporter, run.echo)
            export_dir = spec.run_dir / "model"
            meta = {"label": algorithm.label, "positive": algorithm.positive, "max_tokens": algorithm.max_tokens,
                    "base_model": spec.model.path, "steps": state.step,
                    "traces": {"train": len(train_set), "heldout": len(held_set)},
                    "heldout": {k.removeprefix("eval/"): v for k, v in metrics.items()}, "calibration": bins}
            get_all([c.export.remote(str(export_dir), meta) for c in actors.ranks])
        return run.finish(export_dir)
