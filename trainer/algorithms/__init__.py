"""Algorithms as pure torch functions: advantage estimators and policy losses.

`advantages_for` and `policy_loss_for` map a spec's `algorithm` (trainer.spec.AlgorithmSpec) to
them; each module's docstring gives the formulas and the papers.
"""

import torch

from trainer.algorithms.advantages import (
    grpo_advantages,
    overlong_penalty,
    reinforce_pp_advantages,
    rloo_advantages,
    tied_groups,
)
from trainer.algorithms.losses import aggregate, clipped_policy_loss, gspo_policy_loss, k3_kl, masked_mean

ALGORITHMS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "dapo", "gspo")


def advantages_for(algorithm, rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
    """Per-completion advantages [P, G] for an algorithm sub-spec."""
    kind = algorithm.type
    if kind in ("grpo", "dr_grpo", "gspo"):
        return grpo_advantages(rewards_P_G, valid_P_G, scale_std=algorithm.scale_std)
    if kind == "dapo":
        return grpo_advantages(rewards_P_G, valid_P_G, scale_std=True)
    if kind == "rloo":
        return rloo_advantages(rewards_P_G, valid_P_G)
    if kind == "reinforce_pp":
        return reinforce_pp_advantages(rewards_P_G, valid_P_G, baseline=algorithm.baseline)
    raise ValueError(f"unknown algorithm {kind!r}; valid: {', '.join(ALGORITHMS)}")


def policy_loss_for(algorithm, logprobs_B_T: torch.Tensor, old_B_T: torch.Tensor, advantages_B: torch.Tensor,
                    mask_B_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token policy loss and clip indicator: GSPO's sequence ratio, else the token ratio."""
    eps_low, eps_high = algorithm.clip_eps_low, algorithm.clip_eps_high
    if algorithm.type == "gspo":
        return gspo_policy_loss(logprobs_B_T, old_B_T, advantages_B, mask_B_T, eps_low, eps_high)
    return clipped_policy_loss(logprobs_B_T, old_B_T, advantages_B, eps_low, eps_high)


__all__ = ["ALGORITHMS", "advantages_for", "aggregate", "clipped_policy_loss", "grpo_advantages", "gspo_policy_loss",
           "k3_kl", "masked_mean", "overlong_penalty", "policy_loss_for", "reinforce_pp_advantages",
           "rloo_advantages", "tied_groups"]
