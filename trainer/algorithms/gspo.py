"""GSPO (Zheng et al., 2025): GRPO's advantages, one clipped importance ratio per sequence."""

from __future__ import annotations

import torch

from trainer.algorithms.advantages import grpo_advantages
from trainer.algorithms.base import Algorithm
from trainer.algorithms.losses import gspo_policy_loss


class GSPO(Algorithm):
    def advantages(self, rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards_P_G, valid_P_G, scale_std=self.config.scale_std)

    def policy_loss(self, logprobs_B_T: torch.Tensor, old_logprobs_B_T: torch.Tensor, advantages: torch.Tensor,
                    mask_B_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gspo_policy_loss(logprobs_B_T, old_logprobs_B_T, advantages, mask_B_T,
                                self.config.clip_eps_low, self.config.clip_eps_high)
