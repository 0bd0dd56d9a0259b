"""Reward modules: the TRL `reward_funcs` contract, a registry, built-ins and a time-limited scorer."""

from rewards.base import RewardModule, completion_text, reward_config
from rewards.registry import BUILTINS, UnknownRewardError, available, load, resolve
from rewards.scoring import RewardFailure, ScoreResult, score

__all__ = [
    "BUILTINS", "RewardFailure", "RewardModule", "ScoreResult", "UnknownRewardError", "available",
    "completion_text", "load", "resolve", "reward_config", "score",
]
