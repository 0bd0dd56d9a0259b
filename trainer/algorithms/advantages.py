"""Advantage estimators for outcome rewards: one scalar reward per completion, G per prompt.

GRPO (Shao et al., 2024, "DeepSeekMath", eq. 3):   A_i = (r_i - mean(r)) / (std(r) + eps)
    with `scale_std=False` (Liu et al., 2025, "Dr. GRPO"):  A_i = r_i - mean(r)
RLOO (Ahmadian et al., 2024, "Back to Basics"):     A_i = r_i - mean_{j != i}(r_j)
REINFORCE++ (Hu et al., 2025, arXiv 2501.03262):   A_i = whiten_batch(r_i)
    and its baseline variant ("REINFORCE++-baseline"): A_i = whiten_batch(r_i - mean_group(r))
    where whiten_batch(x) = (x - mean(x)) / (std(x) + 1e-8) over every valid sample of the
    whole batch (global-batch normalisation, instead of GRPO's per-group std).

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


WHITEN_EPS = 1e-8


def reinforce_pp_advantages(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor | None = None,
                            baseline: bool = False) -> torch.Tensor:
    """REINFORCE++ (and, with `baseline`, REINFORCE++-baseline): whitened over the whole batch.

    With `baseline`, a group that ties is 0 before whitening and stays 0 after (the group-centred
    values have batch mean 0). Fewer than two valid samples in the batch: all zeros.
    """
    if valid_P_G is None:
        valid_P_G = torch.ones_like(rewards_P_G, dtype=torch.bool)
    x_P_G = rewards_P_G
    if baseline:
        _, n_P, _, mean_P = _valid_stats(rewards_P_G, valid_P_G)
        x_P_G = torch.where(n_P >= 2, rewards_P_G - mean_P, torch.zeros_like(rewards_P_G))
    return whiten(x_P_G, valid_P_G, WHITEN_EPS)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = WHITEN_EPS) -> torch.Tensor:
    """(x - mean) / (std + eps) over the masked entries (unbiased std); 0 elsewhere, and 0
    throughout when fewer than two entries count."""
    m = mask.to(values.dtype)
    n = m.sum()
    if n < 2:
        return torch.zeros_like(values)
    mean = (values * m).sum() / n
    std = (((values - mean) * m) ** 2).sum().div(n - 1).sqrt()
    return (values - mean) / (std + eps) * m


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13): 0 up to max_tokens - buffer,
    then falling linearly to -factor at max_tokens (and beyond)."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_tokens - buffer)).clamp(min=0)
    return -factor * (over / buffer).clamp(max=1.0)


def tied_groups(rewards_P_G: torch.Tensor, valid_P_G: torch.Tensor | None = None) -> torch.Tensor:
    """Groups whose valid rewards all tie (or with fewer than two valid): no GRPO signal. [P] bool."""
    if valid_P_G is None:
        valid_P_G = torch.ones_like(rewards_P_G, dtype=torch.bool)
    big = torch.finfo(rewards_P_G.dtype).max
    high = torch.where(valid_P_G, rewards_P_G, -big).max(dim=1).values
    low = torch.where(valid_P_G, rewards_P_G, big).min(dim=1).values
    return (valid_P_G.sum(dim=1) < 2) | (high == low)
