"""REINFORCE++ (Hu et al., 2025): rewards whitened over the whole batch; with `baseline`, the
group mean is subtracted first (REINFORCE++-baseline)."""

from __future__ import annotations

import torch

from trainer.algorithms.advantages import reinforce_pp_advantages
from trainer.algorithms.base import Algorithm


class ReinforcePP(Algorithm):
    def advantages(self, rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
        return reinforce_pp_advantages(rewards_P_G, valid_P_G, baseline=self.config.baseline)
