"""Advantage estimators for outcome rewards: one scalar reward per completion, G per prompt.

GRPO (Shao et al., 2024, "DeepSeekMath", eq. 3):   A_i = (r_i - mean(r)) / (std(r) + eps)
    with `scale_std=False` (Liu et al., 2025, "Dr. GRPO"):  A_i = r_i - mean(r)
RLOO (Ahmadian et al., 2024, "Back to Basics"):     A_i = r_i - mean_{j != i}(r_j)

Samples whose reward failed (`valid_P_G` False) take no part in their group's statistics and get
advantage 0; a group with fewer than two valid samples has no baseline and gets 0 throughout. The
std is the unbiased sample std, as in TRL's GRPOTrainer, and eps = 1e-4 likewise.
"""

from __future__ import annotations

import torch

STD_EPS = 1e-4


def _valid_stats(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor):
    valid = valid_P_G.to(rewards_P_G.dtype)
    n_P = valid.sum(dim=1, keepdim=True)
    sum_P = (rewards_P_G * valid).sum(dim=1, keepdim=True)
    mean_P = sum_P / n_P.clamp(min=1)
    return valid, n_P, sum_P, mean_P


def grpo_advantages(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor | None = None,
                    scale_std: bool = True) -> torch.Tensor:
    """Group-normalised advantages; all-equal groups give exactly 0."""
    if valid_P_G is None:
        valid_P_G = torch.ones_like(rewards_P_G, dtype=torch.bool)
    valid, n_P, _, mean_P = _valid_stats(rewards_P_G, valid_P_G)
    centred_P_G = (rewards_P_G - mean_P) * valid
    if scale_std:
        var_P = (centred_P_G ** 2).sum(dim=1, keepdim=True) / (n_P - 1).clamp(min=1)
        centred_P_G = centred_P_G / (var_P.sqrt() + STD_EPS)
    return torch.where(n_P >= 2, centred_P_G, torch.zeros_like(centred_P_G))


def rloo_advantages(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor | None = None) -> torch.Tensor:
    """Leave-one-out baseline: each sample is compared with the mean of the rest of its group."""
    if valid_P_G is None:
        valid_P_G = torch.ones_like(rewards_P_G, dtype=torch.bool)
    valid, n_P, sum_P, _ = _valid_stats(rewards_P_G, valid_P_G)
    baseline_P_G = (sum_P - rewards_P_G) / (n_P - 1).clamp(min=1)
    adv_P_G = (rewards_P_G - baseline_P_G) * valid
    return torch.where(n_P >= 2, adv_P_G, torch.zeros_like(adv_P_G))
