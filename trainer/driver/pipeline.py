"""Steps 1 and 2 as a pipeline: asynchronous rollout (`rollout.max_staleness = k`).

The rollout workers generate the batches of the next k steps while the learners train on the
current one. The loop asks `fill(step)` to keep the batches of steps `step .. step + k` in flight
(sampling their tasks and handing them to the workers) and `take(step)` for this step's samples
and score references. With k = 0 that is "sample, roll out, wait", the synchronous loop, call for
call.

Which weights a batch is sampled with is fixed by the order of calls, not by timing: a Ray actor
runs its calls in the order they were submitted, and the batch of step t is submitted at step
t - k, after the weights of step t - k - 1 were sent. So it is sampled with version
max(0, t - k - 1) (every sample records it), at most k versions behind the policy that learns from
it (version t - 1), and an asynchronous run is exactly as reproducible as a synchronous one.
Samples more than k versions old (none, with this order of calls; the rule guards it) are left out
of the loss and counted. The loss corrects for the staleness with truncated importance sampling
against the learner's logprobs at the start of the step (`Algorithm.corrected_loss`).

Checkpoints: the batches in flight at a checkpoint are awaited and saved with it (`settle`), so a
resumed run trains on exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import ray

from rewards import ScoreResult
from trainer.actors.cluster import JobActors
from trainer.driver.rollout import launch_rollout, training_seed
from trainer.driver.sampler import TaskSampler
from trainer.spec import JobSpec
from trainer.types import Sample


@dataclass
class Batch:
    """One step's rollout: each worker's samples and score result (Ray references in flight,
    values in a checkpoint)."""

    step: int
    samples: list
    scores: list

    def values(self) -> Batch:
        return Batch(self.step, ray.get(self.samples), ray.get(self.scores))

    def references(self) -> Batch:
        return Batch(self.step, [ray.put(x) for x in self.samples], [ray.put(x) for x in self.scores])


class RolloutPipeline:
    def __init__(self, actors: JobActors, sampler: TaskSampler, spec: JobSpec, group_size: int,
                 restored: list[Batch] = ()):
        self.actors, self.sampler, self.spec, self.group_size = actors, sampler, spec, group_size
        self.depth = spec.rollout.max_staleness
        self.inflight: dict[int, Batch] = {b.step: b.references() for b in restored}
        self.last_end: dict[int, float] = {}
        """When each worker finished its previous batch (for the time it waits on the learner)."""

    def fill(self, step: int) -> None:
        """Have the batches of steps `step .. step + max_staleness` in flight (none past the schedule)."""
        for t in range(step, min(step + self.depth, self.spec.schedule.steps) + 1):
            if t not in self.inflight:
                tasks = self.sampler.next(self.spec.rollout.prompts_per_step)
                samples, scores = launch_rollout(self.actors, tasks, self.spec, training_seed(self.spec, t),
                                                 self.group_size)
                self.inflight[t] = Batch(t, samples, scores)

    def take(self, step: int) -> tuple[list[Sample], list, dict[str, float]]:
        """This step's samples (waiting for them), its score references, and how long the loop
        waited and each worker had waited before it started on this batch."""
        batch = self.inflight.pop(step)
        t0 = time.perf_counter()
        per_worker = ray.get(batch.samples)
        waited = time.perf_counter() - t0
        worker_waits = []
        for i, chunk in enumerate(per_worker):
            start, end = chunk[0].sampled_at
            if i in self.last_end:
                worker_waits.append(max(0.0, start - self.last_end[i]))
            self.last_end[i] = end
        stats = {"time/learner_wait": waited,
                 "time/worker_wait": max(worker_waits) if worker_waits else 0.0}
        return [s for chunk in per_worker for s in chunk], batch.scores, stats

    def settle(self) -> list[Batch]:
        """Every batch in flight, awaited, as values (a checkpoint saves them)."""
        return [b.values() for _, b in sorted(self.inflight.items())]


def drop_stale(samples: list[Sample], scores: ScoreResult, step: int, max_staleness: int
               ) -> tuple[ScoreResult, dict[str, float]]:
    """Leave samples more than `max_staleness` weight versions behind the policy (version
    `step - 1`) out of the loss and their group's statistics, as a failed sample is; and the
    staleness statistics of the batch."""
    staleness = [step - 1 - s.weights_version for s in samples]
    stale = [k > max_staleness for k in staleness]
    stats = {"async/staleness_mean": sum(staleness) / len(staleness), "async/staleness_max": float(max(staleness)),
             "async/dropped": float(sum(stale))}
    if any(stale):
        scores = dataclasses.replace(scores, failed=[f or s for f, s in zip(scores.failed, stale, strict=True)],
                                     total=[0.0 if s else r for r, s in zip(scores.total, stale, strict=True)])
    return scores, stats
