"""Where reward modules come from: one explicit dict of built-ins, installed packages through the
`flywheel.rewards` entry-point group, and `import_path` for ad-hoc code.

    fn = resolve(name="regex")                               # built-in or entry point
    fn = resolve(import_path="my_team.rewards:resolved")      # dotted module
    fn = resolve(import_path="experiments/score.py:resolved") # a file
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rewards import builtin
from rewards.base import RewardModule, bind, config_schema
from rewards.http import http
from rewards.outcome_model import outcome_model
from rewards.resolution import resolution

ENTRY_POINT_GROUP = "flywheel.rewards"

BUILTINS: dict[str, Callable[..., Any]] = {
    "exact_match": builtin.exact_match,
    "contains": builtin.contains,
    "regex": builtin.regex,
    "json_valid": builtin.json_valid,
    "json_schema": builtin.json_schema,
    "length_penalty": builtin.length_penalty,
    "repetition_penalty": builtin.repetition_penalty,
    "think_format": builtin.think_format,
    "http": http,
    "resolution": resolution,
    "outcome_model": outcome_model,
}


class UnknownRewardError(LookupError):
    """No module of that name, or an import path that does not load."""


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, dict[str, Any]]:
    """Every named module with its source, docstring and config schema (for listings)."""
    out = {}
    for name, fn in BUILTINS.items():
        out[name] = {"source": "builtin", "doc": inspect.getdoc(fn), "config_schema": config_schema(fn)}
    for name, ep in _entry_points().items():
        out.setdefault(name, {"source": f"entry point {ep.value}", "doc": None, "config_schema": None})
    return out


def _load_import_path(import_path: str) -> Callable[..., Any]:
    target, _, attr = import_path.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            spec = importlib.util.spec_from_file_location(f"flywheel_reward_{path.stem}", path)
            if spec is None or not path.exists():
                raise FileNotFoundError(f"no file {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except (ImportError, FileNotFoundError) as exc:
        raise UnknownRewardError(f"import_path {import_path!r}: cannot import {target!r}: {exc}") from None
    except MemoryError:
        raise  # the checks name their memory limit
    except Exception as exc:  # noqa: BLE001 - the module's own code failed as it was imported: name it
        raise UnknownRewardError(f"import_path {import_path!r}: importing {target!r} raised "
                                 f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UnknownRewardError(f"import_path {import_path!r}: {target!r} has no callable {attr!r}")
    return fn


def resolve(name: str | None = None, import_path: str | None = None) -> Callable[..., Any]:
    """The reward function for a registry name or an import path."""
    if import_path is not None:
        return _load_import_path(import_path)
    if name in BUILTINS:
        return BUILTINS[name]
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    valid = sorted(BUILTINS) + sorted(set(eps) - set(BUILTINS))
    raise UnknownRewardError(f"unknown reward module {name!r}; valid names: {', '.join(valid)} "
                             "(or give an import_path)")


def load(name: str | None = None, import_path: str | None = None, config: dict | None = None,
         weight: float = 1.0, timeout_s: float = 30.0, label: str | None = None) -> RewardModule:
    """Resolve a module and bind its validated config."""
    fn = resolve(name, import_path)
    return bind(label or name or import_path, fn, config or {}, weight, timeout_s)  # type: ignore[arg-type]
