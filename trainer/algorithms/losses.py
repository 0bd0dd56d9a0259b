"""Policy-gradient losses on per-token log-probabilities.

Clipped surrogate (Schulman et al., 2017, PPO eq. 7) with asymmetric bounds (Yu et al., 2025,
DAPO "clip-higher"), per token t of completion i:

    rho = exp(logp - logp_old)
    l_t = -min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i)

GSPO (Zheng et al., 2025, "Group Sequence Policy Optimization", eq. 5-7) clips one importance
ratio per sequence, the geometric mean of its token ratios:

    s_i = exp( (1/|o_i|) sum_t (logp_t - logp_old_t) )
    l_i = -min(s_i * A_i, clip(s_i, 1 - eps_low, 1 + eps_high) * A_i)

given to each of the sequence's tokens (aggregate it with `sequence_mean`: then d l / d logp_t is
s_i * A_i / |o_i|, the GSPO gradient).

Truncated importance sampling (Yao et al., 2025, "Your Efficient RL Framework Secretly Brings You
Off-Policy RL Training"): a fast rollout engine (vLLM) samples from p_rollout, which differs
slightly from the learner's p_old at the same weights (other kernels, other batching). The loss
is taken against p_old and each token weighted by the detached, capped ratio

    w_t = min(p_old_t / p_rollout_t, C)

KL to the reference with Schulman's k3 estimator (as in GRPO, Shao et al., 2024, eq. 4):

    k3_t = exp(ref - logp) - (ref - logp) - 1          (>= 0, unbiased for KL(pi || ref))

Aggregation over a batch (`loss_agg`):
    token_mean     sum_{i,t} l / sum_i |o_i|                      (DAPO)
    sequence_mean  (1/N) sum_i (1/|o_i|) sum_t l                 (original GRPO)
    constant       sum_{i,t} l / (N * L)                         (Dr. GRPO; L = a fixed token budget)

`aggregate` takes the batch-wide counts explicitly, so the learner can split a batch over ranks
and micro-batches and still sum to exactly the full-batch value.
"""

from __future__ import annotations

from typing import Literal

import torch

LossAgg = Literal["token_mean", "sequence_mean", "constant"]


def clipped_policy_loss(logprobs_B_T: torch.Tensor, old_logprobs_B_T: torch.Tensor,
                        advantages_B: torch.Tensor, eps_low: float, eps_high: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate loss, and where the clip was active (bool). Advantages are one
    per sequence [B] or one per token [B, T] (PPO)."""
    ratio_B_T = torch.exp(logprobs_B_T - old_logprobs_B_T)
    adv = advantages_B.unsqueeze(1) if advantages_B.dim() == 1 else advantages_B  # per sequence or per token
    unclipped_B_T = ratio_B_T * adv
    clipped_B_T = torch.clamp(ratio_B_T, 1 - eps_low, 1 + eps_high) * adv
    loss_B_T = -torch.minimum(unclipped_B_T, clipped_B_T)
    return loss_B_T, clipped_B_T < unclipped_B_T


def gspo_policy_loss(logprobs_B_T: torch.Tensor, old_logprobs_B_T: torch.Tensor, advantages_B: torch.Tensor,
                     mask_B_T: torch.Tensor, eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token GSPO loss (one value per sequence, on each of its tokens) and where the clip was
    active; a fully masked row gets ratio 1."""
    mask = mask_B_T.to(logprobs_B_T.dtype)
    log_ratio_B = ((logprobs_B_T - old_logprobs_B_T) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    ratio_B_1 = torch.exp(log_ratio_B).unsqueeze(1)
    adv_B_1 = advantages_B.unsqueeze(1)
    unclipped_B_1 = ratio_B_1 * adv_B_1
    clipped_B_1 = torch.clamp(ratio_B_1, 1 - eps_low, 1 + eps_high) * adv_B_1
    loss_B_1 = -torch.minimum(unclipped_B_1, clipped_B_1)
    shape = logprobs_B_T.shape
    return loss_B_1.expand(shape), (clipped_B_1 < unclipped_B_1).expand(shape)


def truncated_is_weight(learner_old_B_T: torch.Tensor, rollout_B_T: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token min(p_old / p_rollout, cap), detached: it weights the loss, it is not trained."""
    return torch.exp(learner_old_B_T - rollout_B_T).clamp(max=cap).detach()


def k3_kl(logprobs_B_T: torch.Tensor, ref_logprobs_B_T: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference)."""
    delta_B_T = ref_logprobs_B_T - logprobs_B_T
    return torch.exp(delta_B_T) - delta_B_T - 1


def aggregate(values_B_T: torch.Tensor, mask_B_T: torch.Tensor, mode: LossAgg,
              num_sequences: int | None = None, num_tokens: int | None = None,
              constant: int | None = None) -> torch.Tensor:
    """Reduce per-token values to a scalar. Counts default to this batch's own."""
    mask = mask_B_T.to(values_B_T.dtype)
    summed_B = (values_B_T * mask).sum(dim=1)
    if num_sequences is None:
        num_sequences = values_B_T.shape[0]
    if mode == "token_mean":
        total = num_tokens if num_tokens is not None else mask.sum()
        return summed_B.sum() / max(float(total), 1.0)
    if mode == "sequence_mean":
        per_seq_B = summed_B / mask.sum(dim=1).clamp(min=1)
        return per_seq_B.sum() / max(num_sequences, 1)
    if mode == "constant":
        if constant is None:
            raise ValueError("loss_agg='constant' needs the constant normaliser")
        return summed_B.sum() / (max(num_sequences, 1) * constant)
    raise ValueError(f"unknown loss aggregation {mode!r}; expected token_mean, sequence_mean or constant")


def masked_mean(values_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens that count."""
    mask = mask_B_T.to(values_B_T.dtype)
    return (values_B_T * mask).sum() / mask.sum().clamp(min=1)


def entropy_from_logits(logits_B_T_V: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the sampling distribution."""
    logp = torch.log_softmax(logits_B_T_V, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def token_logprobs(logits_B_T_V: torch.Tensor, tokens_B_T: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chosen token; logits must already be divided by the temperature."""
    return torch.log_softmax(logits_B_T_V, dim=-1).gather(-1, tokens_B_T.unsqueeze(-1)).squeeze(-1)


def token_logprobs_and_entropy(logits_B_T_V: torch.Tensor, tokens_B_T: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` and a detached per-token entropy from one log-softmax."""
    logp_B_T_V = torch.log_softmax(logits_B_T_V, dim=-1)
    with torch.no_grad():
        entropy_B_T = -(logp_B_T_V.exp() * logp_B_T_V).sum(dim=-1)
    return logp_B_T_V.gather(-1, tokens_B_T.unsqueeze(-1)).squeeze(-1), entropy_B_T
