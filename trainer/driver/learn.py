"""PPO's steps 4 and 5 (advantages, learn) for the loop: the critic's values, per-token rewards
(the outcome on the last policy token, the KL penalty on every token when it is in the reward),
GAE, then `ppo_epochs` passes of `mini_batches` optimizer steps each for the policy ranks and the
critic ranks alike. The formulas are in `trainer.algorithms.ppo`."""

from __future__ import annotations

import statistics

import ray
import torch

from rewards import ScoreResult
from trainer.algorithms.advantages import whiten
from trainer.algorithms.ppo import AdaptiveKL, gae, token_rewards
from trainer.cluster import JobActors
from trainer.learner import LearnBatch, StepCounts
from trainer.rollout.worker import Sample
from trainer.spec import JobSpec


def _pad(rows: list[list[float]], width: int) -> torch.Tensor:
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows])


def _sharded(actors: list, method: str, batch: LearnBatch) -> list:
    """Per-sample results of `method` over every rank's share of `batch`, in sample order."""
    return [x for part in _split_call(actors, method, batch) for x in part]


def _rows(batch: LearnBatch, rows) -> LearnBatch:
    rows = list(rows)
    return LearnBatch(*([field[i] for i in rows] for field in (batch.prompt_ids, batch.completion_ids,
                                                               batch.old_logprobs, batch.advantages, batch.mask)))


def ppo_learn(actors: JobActors, samples: list[Sample], scores: ScoreResult, masks: list[list[bool]],
              spec: JobSpec, kl_control: AdaptiveKL | None, step: int) -> tuple[dict[str, float], torch.Tensor]:
    """One PPO update on this step's batch. Returns the statistics and each sample's mean token
    advantage as [P, G] (for the step's advantage metrics)."""
    algo = spec.algorithm
    batch = LearnBatch([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples],
                       [s.completion.logprobs for s in samples], [0.0] * len(samples), masks)
    width = max(len(m) for m in masks)
    mask = _pad([[float(x) for x in m] for m in masks], width).bool()
    values = _pad(_sharded(actors.critics, "values", batch), width)
    kl, beta = None, 0.0
    if algo.kl_beta > 0 and algo.kl_mode == "reward":
        ref = _pad(_sharded(actors.learners, "reference_logprobs", batch), width)
        kl = (_pad(batch.old_logprobs, width) - ref) * mask
        beta = kl_control.beta if kl_control else algo.kl_beta
    rewards = token_rewards(torch.tensor(scores.total, dtype=torch.float32), mask, kl, beta)
    advantages, returns = gae(rewards, values, mask, algo.gamma, algo.lam)
    advantages = whiten(advantages, mask)

    lengths = [len(m) for m in masks]
    per_sample_adv = [advantages[i, :n].tolist() for i, n in enumerate(lengths)]
    per_sample_ret = [returns[i, :n].tolist() for i, n in enumerate(lengths)]
    policy = LearnBatch(batch.prompt_ids, batch.completion_ids, batch.old_logprobs, per_sample_adv, masks)
    critic = LearnBatch(batch.prompt_ids, batch.completion_ids, [values[i, :n].tolist() for i, n in enumerate(lengths)],
                        per_sample_adv, masks)
    stats: dict[str, list[float]] = {"loss": [], "clip_frac": [], "entropy": [], "kl": [], "value_loss": [],
                                     "value_clip_frac": []}
    generator = torch.Generator().manual_seed(spec.schedule.seed * 7_919 + step)
    n_mb = len(samples) // algo.mini_batches
    for _ in range(algo.ppo_epochs):
        order = torch.randperm(len(samples), generator=generator).tolist()
        for m in range(algo.mini_batches):
            rows = order[m * n_mb:(m + 1) * n_mb]
            counts = StepCounts(sum(any(masks[i]) for i in rows), sum(sum(masks[i]) for i in rows))
            pol = _split_call(actors.learners, "train_step", _rows(policy, rows), counts)
            val = _split_call(actors.critics, "train_step", _rows(critic, rows),
                              [per_sample_ret[i] for i in rows], counts)
            tokens = max(sum(s["tokens"] for s in pol), 1.0)
            stats["loss"].append(sum(s["loss"] for s in pol))
            stats["clip_frac"].append(sum(s["clipped_tokens"] for s in pol) / tokens)
            stats["entropy"].append(sum(s["entropy_sum"] for s in pol) / tokens)
            stats["kl"].append(sum(s["kl_sum"] for s in pol) / tokens)
            stats["value_loss"].append(sum(s["value_loss"] for s in val))
            stats["value_clip_frac"].append(sum(s["value_clipped"] for s in val) / max(sum(s["tokens"] for s in val), 1))
    out = {k: statistics.fmean(v) for k, v in stats.items()}
    out["grad_norm"] = pol[0]["grad_norm"]
    out["value/mean"] = float((values * mask).sum() / mask.sum().clamp(min=1))
    if kl is not None:
        out["kl"] = float(kl.sum() / mask.sum().clamp(min=1))  # the penalty's own k1 estimate
        out["kl_coef"] = beta
        if kl_control:
            kl_control.update(out["kl"], len(samples))
    mean_adv = torch.tensor([statistics.fmean(a) if a else 0.0 for a in per_sample_adv])
    return out, mean_adv.view(-1, algo.group_size)


def _split_call(actors: list, method: str, batch: LearnBatch, *args) -> list[dict]:
    """Every rank's share of `batch` (and of list arguments), one call each; per-rank results."""
    n, k = len(batch.prompt_ids), len(actors)
    per = n // k
    refs = []
    for i, a in enumerate(actors):
        rows = range(i * per, (i + 1) * per)
        shard_args = [[arg[j] for j in rows] if isinstance(arg, list) else arg for arg in args]
        refs.append(getattr(a, method).remote(_rows(batch, rows), *shard_args))
    return ray.get(refs)
