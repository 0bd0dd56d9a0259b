"""Algorithms as pure torch functions: advantage estimators and policy losses.

`ADVANTAGES` names every estimator a spec's `algorithm.type` can select.
"""

from collections.abc import Callable

import torch

from trainer.algorithms.advantages import grpo_advantages, rloo_advantages
from trainer.algorithms.losses import aggregate, clipped_policy_loss, k3_kl, masked_mean

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": grpo_advantages,
    "rloo": rloo_advantages,
}


def advantages_for(algorithm, rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
    """Advantages for an algorithm sub-spec (`trainer.spec.AlgorithmSpec`)."""
    if algorithm.type == "grpo":
        return grpo_advantages(rewards_P_G, valid_P_G, scale_std=algorithm.scale_std)
    if algorithm.type in ADVANTAGES:
        return ADVANTAGES[algorithm.type](rewards_P_G, valid_P_G)
    raise ValueError(f"unknown algorithm {algorithm.type!r}; valid: {', '.join(ADVANTAGES)}")


__all__ = ["ADVANTAGES", "advantages_for", "aggregate", "clipped_policy_loss", "grpo_advantages",
           "k3_kl", "masked_mean", "rloo_advantages"]
