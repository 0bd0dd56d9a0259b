"""The job spec: the schema shared by the REST API, the CLI and the trainer, and the only part of
the trainer the control plane imports. Pure pydantic: importing it loads no torch, no Ray, and no
team code (docs/architecture.md, "Import rules").

    from trainer.spec import JobSpec, SpecError, load_spec, parse_spec
"""

from trainer.spec.algorithms import ALGORITHM_SPECS, ALGORITHM_TAGS, POLICY_TAGS, AlgorithmSpec
from trainer.spec.job import (
    EnvironmentSpec,
    JobSpec,
    LearnerSpec,
    LoggingSpec,
    ModelSpec,
    RewardSpec,
    RolloutSpec,
    ScheduleSpec,
    VLLMSpec,
    WarmStartSpec,
)
from trainer.spec.loading import SpecError, describe_errors, load_spec, parse_overrides, parse_spec

__all__ = ["ALGORITHM_SPECS", "ALGORITHM_TAGS", "AlgorithmSpec", "EnvironmentSpec", "JobSpec", "LearnerSpec",
           "LoggingSpec", "ModelSpec", "POLICY_TAGS", "RewardSpec", "RolloutSpec", "ScheduleSpec", "SpecError", "VLLMSpec", "WarmStartSpec",
           "describe_errors", "load_spec", "parse_overrides", "parse_spec"]
