"""PPO's pieces for outcome rewards (Schulman et al., 2017; Ouyang et al., 2022, "InstructGPT").

Per-token rewards: the outcome reward R on the last policy token, and optionally a KL penalty on
every token, with the k1 estimate against the frozen reference:

    r_t = -beta * (logp_old_t - logp_ref_t)  +  [t = last] * R

Generalised advantage estimation (Schulman et al., 2016, eq. 16), backwards over the policy's
own tokens (tokens the environment wrote are skipped: they are not actions):

    delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last token is 0)
    A_t     = delta_t + gamma * lambda * A_{t+1}
    G_t     = A_t + V_t                            (the critic's target)

Clipped value loss (as in OpenAI's baselines PPO2):

    V_clip = V_old + clip(V - V_old, -c, c)
    L_V    = 0.5 * max((V - G)^2, (V_clip - G)^2)

Adaptive KL coefficient (Ziegler et al., 2019, "Fine-Tuning LMs from Human Preferences", eq. 2):

    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.algorithms.base import Algorithm


def token_rewards(outcome_B: torch.Tensor, mask_B_T: torch.Tensor, kl_B_T: torch.Tensor | None = None,
                  beta: float = 0.0) -> torch.Tensor:
    """Per-token rewards: -beta * kl on every policy token, the outcome on the last one."""
    mask = mask_B_T.to(outcome_B.dtype)
    rewards = torch.zeros_like(mask)
    if kl_B_T is not None and beta:
        rewards = rewards - beta * kl_B_T * mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last_B = torch.where(mask_B_T, positions, -1).max(dim=1).values
    has_tokens = last_B >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards[rows, last_B[has_tokens]] += outcome_B[has_tokens]
    return rewards


def gae(rewards_B_T: torch.Tensor, values_B_T: torch.Tensor, mask_B_T: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns over the masked tokens (0 elsewhere)."""
    B, T = rewards_B_T.shape
    advantages = torch.zeros_like(rewards_B_T)
    next_value = torch.zeros(B, dtype=rewards_B_T.dtype, device=rewards_B_T.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask_B_T[:, t]
        delta = rewards_B_T[:, t] + gamma * next_value - values_B_T[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m, adv, 0.0)
        next_adv = torch.where(m, adv, next_adv)
        next_value = torch.where(m, values_B_T[:, t], next_value)
    returns = (advantages + values_B_T) * mask_B_T
    return advantages, returns


def clipped_value_loss(values_B_T: torch.Tensor, old_values_B_T: torch.Tensor, returns_B_T: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped value loss, and where the clipped branch was the larger."""
    clipped_values = old_values_B_T + torch.clamp(values_B_T - old_values_B_T, -clip, clip)
    unclipped_loss = (values_B_T - returns_B_T) ** 2
    clipped_loss = (clipped_values - returns_B_T) ** 2
    return 0.5 * torch.maximum(unclipped_loss, clipped_loss), clipped_loss > unclipped_loss


@dataclass
class AdaptiveKL:
    """Ziegler et al.'s proportional controller for the KL coefficient."""

    beta: float
    target: float
    horizon: int

    def update(self, kl: float, n_samples: int) -> float:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.beta *= 1 + error * n_samples / self.horizon
        return self.beta


class PPO(Algorithm):
    """Advantages come from GAE over the critic's values (the driver's PPO step, which runs
    `token_rewards`, `gae` and the critic's `clipped_value_loss`), not from the group."""

    needs_critic = True

    @property
    def kl_in_loss(self) -> bool:
        return self.needs_reference and self.config.kl_mode == "loss"

    @property
    def kl_in_reward(self) -> bool:
        """InstructGPT's per-token penalty `-beta * (logp - logp_ref)` in the reward."""
        return self.needs_reference and self.config.kl_mode == "reward"

    def kl_controller(self) -> AdaptiveKL | None:
        c = self.config
        return AdaptiveKL(c.kl_beta, c.kl_target, c.kl_horizon) if self.kl_in_reward and c.kl_target else None
