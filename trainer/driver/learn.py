"""Steps 4 and 5 from the driver: advantages, then the learner ranks' optimizer step.

The outcome-reward family (`learn`): the algorithm's advantages per sample, then one step over
the batch, sharded evenly over the ranks. PPO (`ppo_learn`): the policy's logprobs at the
sampling weights (before its epochs move them), the critic's values, per-token
rewards (the outcome on the last policy token, the KL penalty on every token when it is in the
reward), GAE, then `ppo_epochs` passes of `mini_batches` optimizer steps each for the policy
ranks and the critic ranks alike. The formulas are in `trainer.algorithms`.

Both log the rollout-learner mismatch every step: the mean and max of |log p_rollout - log p_old|
over the sampled tokens, ~1e-6 with the HF engine (the same model in the same dtype) and larger
with vLLM (its own kernels), another dtype or older weights (asynchronous rollout), which
truncated importance sampling (`algorithm.tis_cap`) corrects; and the distribution of the
importance weights (mean, min, max over the tokens).
"""

from __future__ import annotations

import statistics

import torch

from rewards import ScoreResult
from trainer.actors.cluster import JobActors, get_all
from trainer.algorithms import Algorithm
from trainer.algorithms.advantages import whiten
from trainer.algorithms.ppo import AdaptiveKL, gae, token_rewards
from trainer.spec import JobSpec
from trainer.types import PolicyBatch, PolicyStepStats, Sample, StepCounts, TokenBatch, ValueBatch


def loss_masks(samples: list[Sample], failed: list[bool], drop_truncated: bool) -> list[list[bool]]:
    """Per-token loss masks: the policy's own tokens, none for a failed sample, and none for a
    truncated one when `drop_truncated` (DAPO's overlong filtering)."""
    return [[m and not out for m in s.completion.loss_mask()]
            for s, out in zip(samples, [f or (drop_truncated and s.completion.truncated)
                                        for s, f in zip(samples, failed, strict=True)], strict=True)]


def compute_advantages(samples: list[Sample], scores: ScoreResult, algorithm: Algorithm, group_size: int,
                       max_new_tokens: int) -> torch.Tensor:
    """The algorithm's advantages [P, G] from the (shaped) rewards; failed samples count for nothing."""
    rewards_P_G = torch.tensor(scores.total, dtype=torch.float32).view(-1, group_size)
    lengths_P_G = torch.tensor([sum(s.completion.loss_mask()) for s in samples]).view(-1, group_size)
    rewards_P_G = algorithm.shape_rewards(rewards_P_G, lengths_P_G, max_new_tokens)
    valid_P_G = ~torch.tensor(scores.failed).view(-1, group_size)
    return algorithm.advantages(rewards_P_G, valid_P_G)


def learn(actors: JobActors, samples: list[Sample], scores: ScoreResult, advantages_P_G: torch.Tensor,
          algorithm: Algorithm) -> dict[str, float]:
    """One optimizer step over the batch, sharded evenly over the learner ranks. Failed samples
    (and truncated ones, for an algorithm that filters them) are masked out of the loss."""
    masks = loss_masks(samples, scores.failed, algorithm.filters_truncated)
    batch = PolicyBatch([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples], masks,
                        rollout_logprobs_B_T=[s.completion.logprobs for s in samples],
                        advantages_B=advantages_P_G.flatten().tolist())
    counts = StepCounts(num_sequences=sum(any(m) for m in masks), num_tokens=sum(map(sum, masks)))
    stats = PolicyStepStats.combine(sharded_call(actors.learners, "train_step", batch, counts))
    return {**stats.metrics(), "grad_norm": stats.grad_norm}


def ppo_learn(actors: JobActors, samples: list[Sample], scores: ScoreResult, algorithm: Algorithm,
              kl_control: AdaptiveKL | None, spec: JobSpec, step: int) -> tuple[dict[str, float], torch.Tensor]:
    """One PPO update on this step's batch. Returns the statistics and each sample's mean token
    advantage as [P, G] (for the step's advantage metrics)."""
    algo = algorithm.config
    masks = loss_masks(samples, scores.failed, drop_truncated=False)
    tokens = TokenBatch([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples], masks)
    rollout_logprobs = [s.completion.logprobs for s in samples]
    old_logprobs = _gather(sharded_call(actors.learners, "logprobs", tokens))  # before the epochs move the weights
    width = max(len(m) for m in masks)
    mask = _pad([[float(x) for x in m] for m in masks], width).bool()
    values = _pad(_gather(sharded_call(actors.critics, "values", tokens)), width)
    kl, beta = None, 0.0
    if algorithm.kl_in_reward:
        ref = _pad(_gather(sharded_call(actors.learners, "logprobs", tokens, "reference")), width)
        kl = (_pad(old_logprobs, width) - ref) * mask
        beta = kl_control.beta if kl_control else algo.kl_beta
    rewards = token_rewards(torch.tensor(scores.total, dtype=torch.float32), mask, kl, beta)
    advantages, returns = gae(rewards, values, mask, algo.gamma, algo.lam)
    advantages = whiten(advantages, mask)

    lengths = [len(m) for m in masks]
    per_sample_adv = [advantages[i, :n].tolist() for i, n in enumerate(lengths)]
    policy = PolicyBatch(tokens.prompt_ids_B, tokens.completion_ids_B_T, masks,
                         rollout_logprobs_B_T=rollout_logprobs, old_logprobs_B_T=old_logprobs,
                         advantages_B_T=per_sample_adv)
    critic = ValueBatch(tokens.prompt_ids_B, tokens.completion_ids_B_T, masks,
                        old_values_B_T=[values[i, :n].tolist() for i, n in enumerate(lengths)],
                        returns_B_T=[returns[i, :n].tolist() for i, n in enumerate(lengths)])
    stats: dict[str, list[float]] = {"value_loss": [], "value_clip_frac": []}
    generator = torch.Generator().manual_seed(spec.schedule.seed * 7_919 + step)
    n_mb = len(samples) // algo.mini_batches
    for _ in range(algo.ppo_epochs):
        order = torch.randperm(len(samples), generator=generator).tolist()
        for m in range(algo.mini_batches):
            rows = order[m * n_mb:(m + 1) * n_mb]
            counts = StepCounts(sum(any(masks[i]) for i in rows), sum(sum(masks[i]) for i in rows))
            pol = sharded_call(actors.learners, "train_step", policy.rows(rows), counts)
            val = sharded_call(actors.critics, "train_step", critic.rows(rows), counts)
            for k, v in PolicyStepStats.combine(pol).metrics().items():
                stats.setdefault(k, []).append(v)
            stats["value_loss"].append(sum(s["value_loss"] for s in val))
            stats["value_clip_frac"].append(sum(s["value_clipped"] for s in val) / max(sum(s["tokens"] for s in val), 1))
    out = {k: statistics.fmean(v) for k, v in stats.items()}
    out["mismatch/logprob_diff_max"] = max(stats["mismatch/logprob_diff_max"])
    out["is_weight/min"], out["is_weight/max"] = min(stats["is_weight/min"]), max(stats["is_weight/max"])
    out["grad_norm"] = pol[0].grad_norm
    out["value/mean"] = float((values * mask).sum() / mask.sum().clamp(min=1))
    if kl is not None:
        out["kl"] = float(kl.sum() / mask.sum().clamp(min=1))  # the penalty's own k1 estimate
        out["kl_coef"] = beta
        if kl_control:
            kl_control.update(out["kl"], len(samples))
    mean_adv = torch.tensor([statistics.fmean(a) if a else 0.0 for a in per_sample_adv])
    return out, mean_adv.view(-1, algo.group_size)


def sharded_call(actors: list, method: str, batch: TokenBatch, *args) -> list:
    """Every rank's equal, contiguous share of `batch`, one call each; the per-rank results."""
    per = len(batch) // len(actors)
    return get_all([getattr(a, method).remote(batch.rows(list(range(i * per, (i + 1) * per))), *args)
                    for i, a in enumerate(actors)])


def _gather(per_rank: list[list]) -> list:
    """Per-sample results of every rank, in sample order."""
    return [x for part in per_rank for x in part]


def _pad(rows: list[list[float]], width: int) -> torch.Tensor:
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows])
