"""GRPO (Shao et al., 2024) and its Dr. GRPO preset (Liu et al., 2025): group-normalised
advantages, the clipped token ratio. The formulas are in `advantages.py` and `losses.py`."""

from __future__ import annotations

import torch

from trainer.algorithms.advantages import grpo_advantages
from trainer.algorithms.base import Algorithm


class GRPO(Algorithm):
    def advantages(self, rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards_P_G, valid_P_G, scale_std=self.config.scale_std)


class DrGRPO(GRPO):
    """The spec fixes `scale_std = False` and `loss_agg = "constant"`; the object is GRPO's."""
