"""RLOO (Ahmadian et al., 2024): each sample's baseline is the mean of the rest of its group."""

from __future__ import annotations

import torch

from trainer.algorithms.advantages import rloo_advantages
from trainer.algorithms.base import Algorithm


class RLOO(Algorithm):
    def advantages(self, rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
        return rloo_advantages(rewards_P_G, valid_P_G)
