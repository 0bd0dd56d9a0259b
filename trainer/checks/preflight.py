"""Checks a job before anything expensive starts: the model is there, the environment builds
from its config and data, and every reward module resolves and accepts its config.

Each failure is a `SpecError` naming the field (`environment.config.train`, `rewards.1.config.pattern`,
`model.path`), so the CLI and the REST API report it the same way as a schema error.
"""

from __future__ import annotations

from pathlib import Path

from environments import EnvironmentConfigError, UnknownEnvironmentError
from environments import build as build_environment
from rewards.base import RewardConfigError
from rewards.registry import UnknownRewardError, load
from trainer.spec import JobSpec, SpecError


def _looks_local(path: str) -> bool:
    # A hub id is `name` or `org/name`; anything else is a filesystem path.
    return path.startswith(("/", ".", "~")) or path.count("/") > 1


def check_model(spec: JobSpec) -> None:
    path = spec.model.path
    if Path(path).expanduser().exists():
        if not (Path(path).expanduser() / "config.json").exists():
            raise SpecError([{"field": "model.path", "message": f"{path} has no config.json: "
                              "expected a model folder in Hugging Face format"}])
    elif _looks_local(path):
        raise SpecError([{"field": "model.path", "message": f"no such model folder: {path}"}])


def preflight(spec: JobSpec):
    """Run every check and return the built environment."""
    check_model(spec)
    try:
        env = build_environment(spec.environment.name, spec.environment.config)
    except UnknownEnvironmentError as exc:
        raise SpecError([{"field": "environment.name", "message": str(exc)}]) from None
    except EnvironmentConfigError as exc:
        raise SpecError([{"field": f"environment.config.{exc.field}", "message": exc.message}]) from None
    errors = []
    if spec.warm_start is not None:
        from trainer.sft import DemonstrationError, read_demonstrations

        try:
            read_demonstrations(spec.warm_start.data)
        except DemonstrationError as exc:
            errors.append({"field": "warm_start.data", "message": str(exc)})
    for i, r in enumerate(spec.rewards):
        try:
            load(r.name, r.import_path, r.config, r.weight, r.timeout_s, r.label)
        except UnknownRewardError as exc:
            errors.append({"field": f"rewards.{i}.{'name' if r.name else 'import_path'}", "message": str(exc)})
        except RewardConfigError as exc:
            errors.append({"field": f"rewards.{i}.config{'.' + exc.field if exc.field else ''}",
                           "message": exc.message})
    if errors:
        raise SpecError(errors)
    return env
