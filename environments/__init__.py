"""Environments: the contract, single-turn datasets, and (later) multi-turn simulators."""

from environments.base import DATA_PATH, Environment, EnvironmentConfigError, Episode, Step, Task, path_fields
from environments.registry import ENVIRONMENTS, UnknownEnvironmentError, available, build

__all__ = ["DATA_PATH", "ENVIRONMENTS", "Environment", "EnvironmentConfigError", "Episode", "Step", "Task",
           "UnknownEnvironmentError", "available", "build", "path_fields"]
