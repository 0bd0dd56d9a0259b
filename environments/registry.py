"""The environments Flywheel knows, in one explicit dict; an unknown name lists the valid ones."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from environments.base import Environment, EnvironmentConfigError
from environments.dataset import DatasetEnvironment
from environments.support_desk import SupportDeskEnvironment
from environments.traces import TracesEnvironment

ENVIRONMENTS: dict[str, type] = {
    "dataset": DatasetEnvironment,
    "support_desk": SupportDeskEnvironment,
    "traces": TracesEnvironment,
}


class UnknownEnvironmentError(LookupError):
    pass


def available() -> dict[str, dict[str, Any]]:
    return {name: {"doc": (cls.__doc__ or "").strip(), "config_schema": cls.config_model.model_json_schema()}
            for name, cls in ENVIRONMENTS.items()}


def build(name: str, config: dict[str, Any]) -> Environment:
    """Instantiate an environment from its registry name and validated config."""
    if name not in ENVIRONMENTS:
        raise UnknownEnvironmentError(f"unknown environment {name!r}; valid names: {', '.join(sorted(ENVIRONMENTS))}")
    cls = ENVIRONMENTS[name]
    try:
        cfg = cls.config_model.model_validate(config)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise EnvironmentConfigError(".".join(map(str, err["loc"])), err["msg"]) from None
    factory = getattr(cls, "from_config", None)  # an environment that holds another one builds it here
    return factory(cfg, build) if factory is not None else cls(cfg)
