"""The reward-module contract.

A reward module is any function with TRL's `reward_funcs` signature, so functions written for
TRL's GRPOTrainer plug in unchanged:

    def resolved(prompts, completions, **columns) -> list[float | None]: ...

It is batched; it may be `async def`; `completions` are strings or message lists; every dataset
column and every outcome field arrives as a keyword list; `None` means "no opinion" and is left
out of the weighted sum. A module that takes parameters declares a pydantic model with
`@reward_config(Model)` and receives the validated instance as the keyword `config`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

RewardFn = Callable[..., Any]


def reward_config(model: type[BaseModel]) -> Callable[[RewardFn], RewardFn]:
    """Declare the pydantic config model of a reward module."""

    def mark(fn: RewardFn) -> RewardFn:
        fn.config_model = model  # type: ignore[attr-defined]
        return fn

    return mark


DATA_PATH = {"format": "path"}
"""`json_schema_extra` of a config field (a reward module's or an environment's) that names a file
or folder to read: the service allows only paths under its data roots there (`path_fields`)."""


def path_fields(config_model: type[BaseModel] | None) -> list[str]:
    """The fields of a config model that name files or folders."""
    if config_model is None:
        return []
    return [name for name, f in config_model.model_fields.items() if (f.json_schema_extra or {}) == DATA_PATH]


class RewardConfigError(ValueError):
    """A reward module's config failed its model; `field` is the dotted path inside `config`."""

    def __init__(self, module: str, field: str, message: str):
        self.module, self.field, self.message = module, field, message
        super().__init__(f"reward {module!r}: config.{field}: {message}" if field else
                         f"reward {module!r}: {message}")


@dataclass(frozen=True)
class RewardModule:
    """A loaded reward module: a name, a weight, a time limit and the bound function."""

    name: str
    fn: RewardFn
    weight: float = 1.0
    timeout_s: float = 30.0

    @property
    def is_async(self) -> bool:
        target = self.fn.func if isinstance(self.fn, functools.partial) else self.fn
        return inspect.iscoroutinefunction(target)


def bind(name: str, fn: RewardFn, config: dict[str, Any], weight: float = 1.0,
         timeout_s: float = 30.0) -> RewardModule:
    """Validate `config` against the module's declared model and bind it as `config=`."""
    model = getattr(fn, "config_model", None)
    if model is None:
        if config:
            raise RewardConfigError(name, "", f"takes no config, got keys {sorted(config)}")
        return RewardModule(name, fn, weight, timeout_s)
    try:
        cfg = model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RewardConfigError(name, ".".join(map(str, first["loc"])), first["msg"]) from None
    return RewardModule(name, functools.partial(fn, config=cfg), weight, timeout_s)


def config_schema(fn: RewardFn) -> dict[str, Any] | None:
    """JSON schema of a module's config model, for listings."""
    model = getattr(fn, "config_model", None)
    return model.model_json_schema() if model else None


def completion_text(completion: Any) -> str:
    """The text of a completion, whether a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")
