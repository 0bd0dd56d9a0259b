"""Environments: the contract, single-turn datasets, and (later) multi-turn simulators."""

from environments.base import Environment, EnvironmentConfigError, Episode, Step, Task
from environments.registry import ENVIRONMENTS, UnknownEnvironmentError, available, build

__all__ = ["ENVIRONMENTS", "Environment", "EnvironmentConfigError", "Episode", "Step", "Task",
           "UnknownEnvironmentError", "available", "build"]
