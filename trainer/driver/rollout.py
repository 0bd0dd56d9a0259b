"""Steps 2 and 3 from the driver: split the tasks over the rollout workers, have each worker's
samples scored as soon as it is done, and (DAPO) roll out more until the groups are informative."""

from __future__ import annotations

import dataclasses

import ray
import torch

from rewards import ScoreResult
from trainer.actors.cluster import JobActors
from trainer.algorithms.advantages import tied_groups
from trainer.driver.sampler import TaskSampler
from trainer.spec import JobSpec
from trainer.types import Sample, SamplingParams


class RewardFailureError(RuntimeError):
    """A reward module failed on more samples than the job allows."""


def sampling_params(spec: JobSpec) -> SamplingParams:
    return SamplingParams(spec.rollout.max_new_tokens, spec.rollout.temperature, spec.rollout.top_p)


def launch_rollout(actors: JobActors, tasks, spec: JobSpec, seed: int, group_size: int) -> tuple[list, list]:
    """`group_size` samples per task, split over the workers (worker i draws from `seed + i`);
    each worker's samples go to the reward worker as soon as that worker is done, so scoring
    overlaps the rest of the rollout. Returns references: each worker's samples and score result."""
    sample_refs, score_refs, offset = [], [], 0
    for i, (worker, chunk) in enumerate(zip(actors.workers, split(tasks, len(actors.workers)), strict=False)):
        if not chunk:
            continue
        ref = worker.generate.remote(chunk, offset, group_size, sampling_params(spec), seed + i,
                                     actors.weights_version)
        sample_refs.append(ref)
        score_refs.append(actors.rewarder.score.remote(ref))
        offset += len(chunk)
    return sample_refs, score_refs


def rollout(actors: JobActors, tasks, spec: JobSpec, seed: int, group_size: int) -> tuple[list[Sample], list]:
    """`launch_rollout`, waiting for the samples: the samples and the score references."""
    sample_refs, score_refs = launch_rollout(actors, tasks, spec, seed, group_size)
    return [s for chunk in ray.get(sample_refs) for s in chunk], score_refs


def training_seed(spec: JobSpec, step: int) -> int:
    """The sampling stream of a training step (the worker index is added to it)."""
    return spec.schedule.seed * 1_000_003 + step * 1_009


def gather_scores(score_refs) -> ScoreResult:
    """Concatenate the per-worker score results, in sample order."""
    return ScoreResult.concat(ray.get(score_refs))


def check_reward_failures(scores: ScoreResult, threshold: float) -> None:
    n = len(scores.total)
    for name, count in scores.failure_counts().items():
        if count / n > threshold:
            first = next(f for f in scores.failures if f.module == name)
            raise RewardFailureError(
                f"reward module {name!r} failed on {count}/{n} samples this step, past the job's "
                f"reward_failure_threshold of {threshold:g}. First error:\n{first.error}")


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
        more, refs = rollout(actors, sampler.next(want), spec, training_seed(spec, step + rounds * 1_000_000), g)
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


def split(items: list, parts: int) -> list[list]:
    """`items` in `parts` contiguous chunks whose sizes differ by at most one."""
    size, rest = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < rest else 0)
        out.append(items[start:stop])
        start = stop
    return out
