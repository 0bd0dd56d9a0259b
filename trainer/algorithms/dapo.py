"""DAPO (Yu et al., 2025): GRPO's advantages with clip-higher and a token-mean loss (both set by
the spec), plus dynamic sampling, the soft overlong punishment and truncation filtering."""

from __future__ import annotations

import torch

from trainer.algorithms.advantages import grpo_advantages, overlong_penalty
from trainer.algorithms.base import Algorithm


class DAPO(Algorithm):
    @property
    def refills_groups(self) -> bool:
        return self.config.dynamic_sampling

    @property
    def filters_truncated(self) -> bool:
        return self.config.filter_truncated

    def shape_rewards(self, rewards_P_G: torch.Tensor, lengths_P_G: torch.Tensor,
                      max_new_tokens: int) -> torch.Tensor:
        if not self.config.overlong_buffer:
            return rewards_P_G
        return rewards_P_G + overlong_penalty(lengths_P_G, max_new_tokens, self.config.overlong_buffer,
                                              self.config.overlong_penalty)

    def advantages(self, rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards_P_G, valid_P_G, scale_std=True)
