"""The three ways a job learns, each one small object with the same two calls, so the training
loop asks one question (`way_of_learning`) and then reads the same for all of them:

    batch = way.collect(step)                      # steps 1-3: what to learn from, scored
    learn_stats, advantages_P_G = way.learn(batch)  # steps 4-5: advantages and the optimizer step

- `OnPolicy`: sample tasks, roll them out on the rollout workers (k steps ahead with
  `rollout.max_staleness`, `driver/pipeline.py`), score them, leave out what is too stale, refill
  tied groups where the algorithm asks (DAPO); the algorithm's advantages, one policy step.
- `WithCritic` (PPO): the same batches; GAE over the critic's values and the PPO epochs
  (`driver/learn.py::ppo_learn`).
- `FromTraces` (`offline_pg`, `kto`, `filtered_sft`): nothing is rolled out; the next logged
  traces, laid out once up front as a rollout would lay them out (`driver/offline.py`), scored
  from their outcome labels; the algorithm's advantage per trace, one policy step.

Each also says which batches are in flight (`in_flight`), for the checkpoint to keep.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch

from rewards import ScoreResult
from trainer.actors.cluster import JobActors
from trainer.algorithms.base import Algorithm
from trainer.driver import offline
from trainer.driver.learn import compute_advantages, learn, ppo_learn
from trainer.driver.pipeline import Batch, RolloutPipeline, drop_stale
from trainer.driver.rollout import check_reward_failures, fill_with_informative_groups, gather_scores
from trainer.driver.sampler import TaskSampler
from trainer.spec import JobSpec
from trainer.types import Sample


@dataclass
class Collected:
    """One step's samples and their scores, with what collecting them measured."""

    step: int
    samples: list[Sample]
    scores: ScoreResult
    """The reward worker's scores of the samples, in their order."""
    stats: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent rolling out (`rollout`) and scoring (`reward`)."""


class OnPolicy:
    def __init__(self, actors: JobActors, sampler: TaskSampler, spec: JobSpec, algorithm: Algorithm,
                 in_flight: list[Batch]):
        self.actors, self.sampler, self.spec, self.algorithm = actors, sampler, spec, algorithm
        self.pipeline = RolloutPipeline(actors, sampler, spec, spec.algorithm.group_size, in_flight)

    def collect(self, step: int) -> Collected:
        t0 = time.perf_counter()
        self.pipeline.fill(step)                                  # sample, roll out (k steps ahead)
        samples, score_refs, pipeline_stats = self.pipeline.take(step)
        t1 = time.perf_counter()
        scores = gather_scores(score_refs)                        # score
        check_reward_failures(scores, self.spec.reward_failure_threshold)
        scores, staleness_stats = drop_stale(samples, scores, step, self.spec.rollout.max_staleness)
        sampling_stats = {}
        if self.algorithm.refills_groups:                         # (DAPO: refill tied groups)
            samples, scores, sampling_stats = fill_with_informative_groups(self.actors, self.sampler, self.spec,
                                                                           step, samples, scores)
        return Collected(step, samples, scores, {**sampling_stats, **pipeline_stats, **staleness_stats},
                         {"rollout": t1 - t0, "reward": time.perf_counter() - t1})

    def learn(self, batch: Collected) -> tuple[dict[str, float], torch.Tensor]:
        advantages_P_G = compute_advantages(batch.samples, batch.scores, self.algorithm,
                                            self.spec.algorithm.group_size, self.spec.rollout.max_new_tokens)
        return learn(self.actors, batch.samples, batch.scores, advantages_P_G, self.algorithm), advantages_P_G

    def in_flight(self) -> list[Batch]:
        return self.pipeline.settle()


class WithCritic(OnPolicy):
    @functools.cached_property
    def kl_control(self):
        """PPO's adaptive KL coefficient (none for a fixed one): its state lasts the run."""
        return self.algorithm.kl_controller()

    def learn(self, batch: Collected) -> tuple[dict[str, float], torch.Tensor]:
        return ppo_learn(self.actors, batch.samples, batch.scores, self.algorithm, self.kl_control, self.spec,
                         batch.step)


class FromTraces:
    def __init__(self, actors: JobActors, sampler: TaskSampler, spec: JobSpec, algorithm: Algorithm):
        self.actors, self.sampler, self.spec, self.algorithm = actors, sampler, spec, algorithm
        self.traces = offline.prepare(sampler.tasks, spec)        # laid out once, up front
        self.behaviour_known = False

    def collect(self, step: int) -> Collected:
        if not self.behaviour_known:  # before the first step, after any warm start
            offline.behaviour_from_base(self.actors, self.traces, self.spec)
            self.behaviour_known = True
        t0 = time.perf_counter()
        samples, score_refs = offline.take(self.sampler, self.traces, self.spec.rollout.prompts_per_step, self.actors)
        t1 = time.perf_counter()
        scores = gather_scores(score_refs)                        # scored from the logged outcomes
        check_reward_failures(scores, self.spec.reward_failure_threshold)
        return Collected(step, samples, scores, {}, {"rollout": t1 - t0, "reward": time.perf_counter() - t1})

    def learn(self, batch: Collected) -> tuple[dict[str, float], torch.Tensor]:
        return offline.learn(self.actors, batch.samples, batch.scores, self.algorithm, self.spec)

    def in_flight(self) -> list[Batch]:
        return []


def way_of_learning(actors: JobActors, sampler: TaskSampler, spec: JobSpec, algorithm: Algorithm,
                    in_flight: list[Batch]) -> OnPolicy | WithCritic | FromTraces:
    """The one place the loop's path depends on the algorithm: asked of the algorithm object."""
    if algorithm.offline:
        return FromTraces(actors, sampler, spec, algorithm)
    if algorithm.needs_critic:
        return WithCritic(actors, sampler, spec, algorithm, in_flight)
    return OnPolicy(actors, sampler, spec, algorithm, in_flight)
