"""The training loop: DESIGN.md's seven steps, top to bottom, one call each.

    sample → roll out → score → advantages → learn → sync weights → log (and checkpoint)

Departures from textbook GRPO, on purpose: a sample whose reward module failed is masked out of
the loss and out of its group's statistics instead of scored 0; the policy ratio's denominator is
the rollout engine's own logprob (so a future off-policy or vLLM engine needs no extra forward).

Run it with `python -m trainer.run configs/demo.toml`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch

from rewards import ScoreResult
from trainer import checkpoint
from trainer.algorithms import advantages_for, overlong_penalty, tied_groups
from trainer.algorithms.ppo import AdaptiveKL
from trainer.cluster import JobActors, connect, start_actors
from trainer.learner import LearnBatch, StepCounts
from trainer.ppo_step import ppo_learn
from trainer.preflight import preflight
from trainer.reporting import NullReporter
from trainer.rollout.engine import SamplingParams
from trainer.rollout.worker import Sample
from trainer.sampler import TaskSampler
from trainer.spec import JobSpec
from trainer.tracking import Tracker, progress_line


class RewardFailureError(RuntimeError):
    """A reward module failed on more samples than the job allows."""


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


def train(spec: JobSpec, stop_after: int | None = None, echo=print, reporter=None) -> RunResult:
    """Run (or resume) a job to `schedule.steps`; `stop_after` ends it early, as a crash would.
    `reporter` (trainer.reporting) sends events, metrics and checkpoints to the control plane."""
    reporter = reporter or NullReporter()
    env = preflight(spec)  # a bad model path, dataset or reward module is refused before any actor starts
    ckpt_dir = spec.run_dir / "checkpoints"
    resume = checkpoint.latest(ckpt_dir)
    connect()
    actors = start_actors(spec)
    tracker = None
    try:
        state = resume[1] if resume else checkpoint.LoopState(0, 0, 0, spec.schedule.seed)
        sampler = TaskSampler(list(env.tasks("train")), state.seed, state.data_epoch, state.data_cursor)
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
        history = []
        kl_control = adaptive_kl(spec)
        last = min(spec.schedule.steps, stop_after or spec.schedule.steps)
        for step in range(state.step + 1, last + 1):
            t0, sampling_stats = time.perf_counter(), {}
            tasks = sampler.next(spec.rollout.prompts_per_step)                       # 1. sample
            samples, score_refs = rollout(actors, tasks, spec, step)                  # 2. roll out
            t1 = time.perf_counter()
            scores = gather_scores(score_refs)                                        # 3. score
            check_reward_failures(scores, spec.reward_failure_threshold)
            if getattr(spec.algorithm, "dynamic_sampling", False):                    #    (DAPO: refill)
                samples, scores, sampling_stats = fill_with_informative_groups(actors, sampler, spec, step,
                                                                               samples, scores)
            t2 = time.perf_counter()
            if spec.algorithm.type == "ppo":                                          # 4+5. PPO: critic,
                masks = loss_masks(samples, scores.failed, drop_truncated=False)      #   GAE, epochs
                learn_stats, advantages_P_G = ppo_learn(actors, samples, scores, masks, spec, kl_control, step)
            else:
                advantages_P_G = compute_advantages(samples, scores, spec)            # 4. advantages
                learn_stats = learn(actors, samples, scores, advantages_P_G, spec)    # 5. learn
            t3 = time.perf_counter()
            sync_weights(actors, version=step)                                        # 6. sync weights
            t4 = time.perf_counter()
            metrics = step_metrics(samples, scores, advantages_P_G, learn_stats,     # 7. log
                                   {"rollout": t1 - t0, "reward": t2 - t1, "learn": t3 - t2, "sync": t4 - t3})
            metrics.update(sampling_stats)
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
                                       actors.critics)
                reporter.send("checkpoint", f"checkpoint at step {step}", {"step": step, "path": str(path)})
            state.step = step
        export_dir = None
        if state.step >= spec.schedule.steps and evaluate_ends:
            evaluations["after"] = evaluate(actors, env, spec, state.step)
            report_evaluation("after", state.step, evaluations["after"], tracker, reporter, echo)
        if state.step >= spec.schedule.steps:
            export_dir = spec.run_dir / "model"
            ray.get([lr.export.remote(str(export_dir)) for lr in actors.learners])
        tracker.summary({"steps_done": state.step})
        tracker.finish()
        reporter.send("finished", f"stopped after step {state.step}",
                      {"export_dir": str(export_dir) if export_dir else None, "wandb": tracker.location})
        return RunResult(spec.run_dir, state.step, export_dir, ckpt_dir, tracker.location, history, evaluations)
    except BaseException as exc:
        if tracker is not None:
            tracker.finish(exit_code=1)
        reporter.send("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        actors.shutdown()


def rollout(actors: JobActors, tasks, spec: JobSpec, step: int) -> tuple[list[Sample], list]:
    """Split the tasks over the workers; each worker's samples go to the reward worker as soon as
    that worker is done, so scoring overlaps the rest of the rollout."""
    sampling = SamplingParams(spec.rollout.max_new_tokens, spec.rollout.temperature, spec.rollout.top_p)
    chunks = _split(tasks, len(actors.workers))
    sample_refs, score_refs, offset = [], [], 0
    for i, (worker, chunk) in enumerate(zip(actors.workers, chunks, strict=False)):
        if not chunk:
            continue
        seed = spec.schedule.seed * 1_000_003 + step * 1_009 + i
        ref = worker.generate.remote(chunk, offset, spec.algorithm.group_size, sampling, seed, actors.weights_version)
        sample_refs.append(ref)
        score_refs.append(actors.rewarder.score.remote(ref))
        offset += len(chunk)
    samples = [s for chunk in ray.get(sample_refs) for s in chunk]
    return samples, score_refs


def gather_scores(score_refs) -> ScoreResult:
    """Concatenate the per-worker score results, in sample order."""
    return ScoreResult.concat(ray.get(score_refs))


def fill_with_informative_groups(actors: JobActors, sampler: TaskSampler, spec: JobSpec, step: int,
                                 samples: list[Sample], scores: ScoreResult) -> tuple[list[Sample], ScoreResult, dict]:
    """DAPO's dynamic sampling: keep the groups whose rewards do not all tie and roll out more
    prompts until `prompts_per_step` such groups are in hand, for at most `max_sampling_rounds`
    rounds; a batch still short is topped up with tied groups (zero advantage, logged)."""
    g, want = spec.algorithm.group_size, spec.rollout.prompts_per_step
    pool_samples, pool_scores, rounds = [samples], [scores], 1
    while True:
        all_samples, all_scores = [s for part in pool_samples for s in part], ScoreResult.concat(pool_scores)
        rewards_P_G = torch.tensor(all_scores.total).view(-1, g)
        tied_P = tied_groups(rewards_P_G, ~torch.tensor(all_scores.failed).view(-1, g)).tolist()
        informative = [p for p, t in enumerate(tied_P) if not t]
        if len(informative) >= want or rounds >= spec.algorithm.max_sampling_rounds:
            break
        more, refs = rollout(actors, sampler.next(want), spec, step + rounds * 1_000_000)
        more_scores = gather_scores(refs)
        check_reward_failures(more_scores, spec.reward_failure_threshold)
        pool_samples.append([dataclasses.replace(s, group=s.group + len(tied_P)) for s in more])
        pool_scores.append(more_scores)
        rounds += 1
    groups = (informative + [p for p, t in enumerate(tied_P) if t])[:want]
    rows = [p * g + k for p in groups for k in range(g)]
    kept = [dataclasses.replace(all_samples[r], group=i // g) for i, r in enumerate(rows)]
    stats = {"dynamic_sampling/rounds": rounds, "dynamic_sampling/informative_groups": len(informative),
             "dynamic_sampling/tied_groups_used": max(0, want - len(informative))}
    return kept, all_scores.take(rows), stats


def check_reward_failures(scores: ScoreResult, threshold: float) -> None:
    n = len(scores.total)
    for name, count in scores.failure_counts().items():
        if count / n > threshold:
            first = next(f for f in scores.failures if f.module == name)
            raise RewardFailureError(
                f"reward module {name!r} failed on {count}/{n} samples this step, past the job's "
                f"reward_failure_threshold of {threshold:g}. First error:\n{first.error}")


def compute_advantages(samples: list[Sample], scores: ScoreResult, spec: JobSpec) -> torch.Tensor:
    g = spec.algorithm.group_size
    rewards_P_G = torch.tensor(scores.total, dtype=torch.float32).view(-1, g)
    buffer = getattr(spec.algorithm, "overlong_buffer", 0)
    if buffer:  # DAPO's soft overlong punishment, added to the reward
        lengths = torch.tensor([sum(s.completion.loss_mask()) for s in samples]).view(-1, g)
        rewards_P_G = rewards_P_G + overlong_penalty(lengths, spec.rollout.max_new_tokens, buffer,
                                                     spec.algorithm.overlong_penalty)
    valid_P_G = ~torch.tensor(scores.failed).view(-1, g)
    return advantages_for(spec.algorithm, rewards_P_G, valid_P_G)


def loss_masks(samples: list[Sample], failed: list[bool], drop_truncated: bool) -> list[list[bool]]:
    """Per-token loss masks: the policy's own tokens, none for a failed sample, and none for a
    truncated one when `drop_truncated` (DAPO's overlong filtering)."""
    return [[m and not out for m in s.completion.loss_mask()]
            for s, out in zip(samples, [f or (drop_truncated and s.completion.truncated)
                                        for s, f in zip(samples, failed, strict=True)], strict=True)]


def learn(actors: JobActors, samples: list[Sample], scores: ScoreResult,
          advantages_P_G: torch.Tensor, spec: JobSpec) -> dict[str, float]:
    """Shard the batch evenly over the learner ranks and take one optimizer step. Failed samples
    (and, for DAPO with `filter_truncated`, truncated ones) are masked out of the loss."""
    advantages = advantages_P_G.flatten().tolist()
    masks = loss_masks(samples, scores.failed, getattr(spec.algorithm, "filter_truncated", False))
    counts = StepCounts(num_sequences=sum(any(m) for m in masks), num_tokens=sum(map(sum, masks)))
    per_rank = len(samples) // len(actors.learners)
    refs = []
    for rank, learner in enumerate(actors.learners):
        rows = range(rank * per_rank, (rank + 1) * per_rank)
        batch = LearnBatch(
            prompt_ids=[samples[i].prompt_ids for i in rows],
            completion_ids=[samples[i].completion.token_ids for i in rows],
            old_logprobs=[samples[i].completion.logprobs for i in rows],
            advantages=[advantages[i] for i in rows],
            mask=[masks[i] for i in rows],
        )
        refs.append(learner.train_step.remote(batch, counts))
    per_rank_stats = ray.get(refs)
    summed = {k: sum(s[k] for s in per_rank_stats) for k in per_rank_stats[0]}
    tokens = max(summed["tokens"], 1.0)
    return {"loss": summed["loss"], "clip_frac": summed["clipped_tokens"] / tokens,
            "kl": summed["kl_sum"] / tokens, "entropy": summed["entropy_sum"] / tokens,
            "grad_norm": per_rank_stats[0]["grad_norm"]}


def sync_weights(actors: JobActors, version: int) -> None:
    """Learner → rollout workers through the Ray object store (rank 0 holds the full weights).

    Nothing waits here: an actor runs its calls in submission order, so each worker loads the new
    weights before its next rollout (inside `time/rollout`), and checks it holds `version` then.
    """
    # Under ZeRO-3 every rank takes part in gathering the weights; otherwise rank 0 has them all.
    learners = actors.learners if actors.zero_stage == 3 else actors.learners[:1]
    state_ref = [lr.full_state_dict.remote() for lr in learners][0]
    for worker in actors.workers:
        worker.update_weights.remote(state_ref, version)
    actors.weights_version = version


def adaptive_kl(spec: JobSpec) -> AdaptiveKL | None:
    algo = spec.algorithm
    if algo.type == "ppo" and algo.kl_mode == "reward" and algo.kl_beta > 0 and algo.kl_target:
        return AdaptiveKL(algo.kl_beta, algo.kl_target, algo.kl_horizon)
    return None


def has_eval_split(env) -> bool:
    try:
        return bool(list(env.tasks("eval")))
    except ValueError:
        return False


def evaluate(actors: JobActors, env, spec: JobSpec, step: int) -> dict[str, float]:
    """One sample (or episode) per held-out task, scored by the job's rewards; nothing is learned
    from it. Multi-turn environments add outcome rates, turns, tokens and latency per episode."""
    if not has_eval_split(env):
        return {}
    tasks = list(env.tasks("eval"))
    sampling = SamplingParams(spec.rollout.max_new_tokens, spec.rollout.temperature, spec.rollout.top_p)
    refs, offset = [], 0
    for i, (worker, chunk) in enumerate(zip(actors.workers, _split(tasks, len(actors.workers)), strict=False)):
        if chunk:
            refs.append(worker.generate.remote(chunk, offset, 1, sampling, 10**9 + step * 1_009 + i,
                                               actors.weights_version))
            offset += len(chunk)
    scores = gather_scores([actors.rewarder.score.remote(r) for r in refs])
    ok = [r for r, f in zip(scores.total, scores.failed, strict=True) if not f]
    out = {"eval/reward_mean": statistics.fmean(ok) if ok else 0.0, "eval/reward_failed": sum(scores.failed)}
    for name, values in scores.components.items():
        vals = [v for v in values if v is not None]
        out[f"eval/reward/{name}"] = statistics.fmean(vals) if vals else 0.0
    samples = [s for batch in ray.get(refs) for s in batch]
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
    reporter.send("evaluation", f"evaluation {phase} at step {step}", {"phase": phase, "step": step, "metrics": metrics})


def warm_start(actors: JobActors, spec: JobSpec, echo, reporter) -> dict[str, float]:
    """The supervised stage: `warm_start.epochs` passes over the demonstrations, in batches of the
    RL step's size split over the learner ranks."""
    from transformers import AutoTokenizer

    from trainer.sft import encode, learn_batch, read_demonstrations

    ws = spec.warm_start
    tok = AutoTokenizer.from_pretrained(spec.model.path)
    chats = read_demonstrations(ws.data)
    batch = spec.rollout.prompts_per_step * spec.algorithm.group_size // spec.mini_batches
    steps = max(1, round(ws.epochs * len(chats) / batch))
    order = torch.randperm(len(chats), generator=torch.Generator().manual_seed(spec.schedule.seed)).tolist()
    reporter.send("warm_start", f"supervised warm start: {steps} steps over {len(chats)} conversations")
    t0, losses = time.perf_counter(), []
    for k in range(steps):
        rows = [encode(tok, chats[order[(k * batch + j) % len(chats)]]) for j in range(batch)]
        counts = StepCounts(num_sequences=batch, num_tokens=sum(sum(r.mask) for r in rows))
        refs = [learner.sft_step.remote(learn_batch(shard), counts, ws.lr)
                for learner, shard in zip(actors.learners, _split(rows, len(actors.learners)), strict=True)]
        losses.append(sum(s["loss"] for s in ray.get(refs)))
        if (k + 1) % max(1, steps // 10) == 0 or k + 1 == steps:
            echo(f"warm start {k + 1}/{steps}: loss {losses[-1]:.3f}")
    seconds = time.perf_counter() - t0
    reporter.send("warm_start", f"warm start done in {seconds:.0f} s, final loss {losses[-1]:.3f}",
                  {"steps": steps, "loss": losses[-1], "seconds": seconds})
    return {"warm_start/loss": losses[-1], "warm_start/steps": steps, "warm_start/seconds": seconds}


def step_metrics(samples: list[Sample], scores: ScoreResult, advantages_P_G: torch.Tensor,
                 learn_stats: dict[str, float], seconds: dict[str, float]) -> dict[str, float]:
    ok = [r for r, f in zip(scores.total, scores.failed, strict=True) if not f]
    lengths = [len(s.completion.token_ids) for s in samples]
    rewards_P_G = torch.tensor(scores.total).view(advantages_P_G.shape)
    m: dict[str, float] = {
        "reward/mean": statistics.fmean(ok) if ok else 0.0,
        "reward/std": statistics.pstdev(ok) if len(ok) > 1 else 0.0,
        "reward/failed": float(sum(scores.failed)),
        "advantage/mean": float(advantages_P_G.mean()),
        "advantage/abs_mean": float(advantages_P_G.abs().mean()),
        "groups/all_equal_frac": float((rewards_P_G.max(dim=1).values == rewards_P_G.min(dim=1).values)
                                       .float().mean()),
        "response/length_mean": statistics.fmean(lengths),
        "response/truncated_frac": statistics.fmean(s.completion.truncated for s in samples),
        **learn_stats,
    }
    for name, values in scores.components.items():
        vals = [v for v in values if v is not None]
        m[f"reward/{name}"] = statistics.fmean(vals) if vals else 0.0
    for name, count in scores.failure_counts().items():
        m[f"reward_failures/{name}"] = float(count)
    m.update({f"time/{k}": v for k, v in seconds.items()})
    m["time/step"] = sum(seconds.values())
    m["perf/tokens_per_s"] = sum(lengths) / max(m["time/step"], 1e-9)
    return m


def _split(items: list, parts: int) -> list[list]:
    size, rest = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < rest else 0)
        out.append(items[start:stop])
        start = stop
    return out
