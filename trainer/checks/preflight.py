"""Checks a job before anything expensive starts: the model is there, the environment builds
from its config and data, the demonstrations parse, and every reward module imports and accepts
its config. This runs team code and reads team data, so the control plane never calls it in its
own process: it runs on the cluster (`python -m trainer.checks`), and in the trainer's driver.

Each failure is a `SpecError` naming the field (`environment.config.train`, `rewards.1.config.pattern`,
`model.path`), so the CLI and the REST API report it the same way as a schema error. `progress`
is told each field before its check starts, so a check that hangs can be named.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from environments import ENVIRONMENTS, EnvironmentConfigError, UnknownEnvironmentError, path_fields
from environments import build as build_environment
from rewards.base import RewardConfigError
from rewards.registry import BUILTINS, UnknownRewardError, load
from trainer.driver import outcomes
from trainer.driver.demonstrations import DemonstrationError, iter_demonstrations
from trainer.driver.offline import TraceLayoutError, prepare
from trainer.driver.outcomes import OutcomeLabelError
from trainer.spec import JobSpec, SpecError

Progress = Callable[[str, str], None]
"""Called with (field, what) before each check: `("rewards.1.import_path", "importing 'x.py:fn'")`."""


def _silent(field: str, what: str) -> None:
    pass


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


def named_paths(spec: JobSpec) -> dict[str, str]:
    """Every file or folder a spec asks to read, by field: the model, the demonstrations, a reward
    module given as a file, and the environment's path fields (`DATA_PATH`)."""
    paths = {"model.path": spec.model.path}
    if spec.warm_start is not None:
        paths["warm_start.data"] = spec.warm_start.data
    for i, r in enumerate(spec.rewards):
        target = (r.import_path or "").rpartition(":")[0]
        if target.endswith(".py") or "/" in target:
            paths[f"rewards.{i}.import_path"] = target
        builtin = BUILTINS.get(r.name) if r.name else None
        for key in path_fields(getattr(builtin, "config_model", None)):
            if isinstance(r.config.get(key), str):
                paths[f"rewards.{i}.config.{key}"] = r.config[key]
    return {**paths, **environment_paths(spec.environment.name, spec.environment.config, "environment")}


def environment_paths(name: str, config: dict, prefix: str) -> dict[str, str]:
    """An environment's path fields, and those of the environment it names for evaluation (`traces`)."""
    env, paths = ENVIRONMENTS.get(name), {}
    for key in path_fields(env.config_model) if env is not None else []:
        if isinstance(config.get(key), str):
            paths[f"{prefix}.config.{key}"] = config[key]
    inner = config.get("eval")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str) and isinstance(inner.get("config", {}), dict):
        paths.update(environment_paths(inner["name"], inner.get("config", {}), f"{prefix}.config.eval"))
    return paths


def _under(path: str, roots: list[Path]) -> bool:
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):  # no usable path (a symlink loop, say) is under any root
        return False
    return any(resolved.is_relative_to(root) for root in roots)


def check_data_roots(spec: JobSpec, roots: list[str]) -> None:
    """Refuse any named path outside `roots` (after symlinks, relative to the working folder) with
    one message for all of them, before anything is opened: the answer says nothing of what exists."""
    allowed = [Path(r).expanduser().resolve() for r in roots]
    errors = [{"field": field, "message": "not a path this service may read: data, models and reward files "
               "must lie under the data roots its operator set (FLYWHEEL_DATA_ROOTS)"}
              for field, path in named_paths(spec).items() if not _under(path, allowed)]
    if errors:
        raise SpecError(errors)


def check_demonstrations(path: str, limit_mb: int) -> None:
    """The warm start's demonstrations, every line read and checked as the trainer reads them,
    none kept."""
    for _ in iter_demonstrations(path, limit_mb):
        pass


def preflight(spec: JobSpec, progress: Progress = _silent):
    """Run every check and return the built environment."""
    progress("model.path", f"checking the model folder {spec.model.path}")
    check_model(spec)
    progress("environment.config", f"building environment {spec.environment.name!r} from {spec.environment.config}")
    try:
        env = build_environment(spec.environment.name, spec.environment.config)
    except UnknownEnvironmentError as exc:
        raise SpecError([{"field": "environment.name", "message": str(exc)}]) from None
    except EnvironmentConfigError as exc:
        raise SpecError([{"field": f"environment.config.{exc.field}", "message": exc.message}]) from None
    errors = []
    if spec.warm_start is not None:
        progress("warm_start.data", f"reading the demonstrations {spec.warm_start.data}")
        try:
            check_demonstrations(spec.warm_start.data, spec.warm_start.max_file_mb)
        except DemonstrationError as exc:
            errors.append({"field": "warm_start.data", "message": str(exc)})
    for i, r in enumerate(spec.rewards):
        source = f"rewards.{i}.{'name' if r.name else 'import_path'}"
        progress(source, f"loading reward module {r.name or r.import_path!r}")
        try:
            load(r.name, r.import_path, r.config, r.weight, r.timeout_s, r.label)
        except UnknownRewardError as exc:
            errors.append({"field": source, "message": str(exc)})
        except RewardConfigError as exc:
            errors.append({"field": f"rewards.{i}.config{'.' + exc.field if exc.field else ''}",
                           "message": exc.message})
    if spec.algorithm.fits_classifier:
        progress("algorithm.label", "finding the traces labelled on both sides, and the held-out ones")
        try:
            outcomes.split(list(env.tasks("train")), spec.algorithm)
        except OutcomeLabelError as exc:
            errors.append({"field": exc.field, "message": exc.message})
    elif spec.algorithm.offline:
        progress("environment.config.snapshot", "laying out every trace as the learner will read it")
        try:
            prepare(list(env.tasks("train")), spec)
        except TraceLayoutError as exc:
            errors.append({"field": "environment.config.snapshot", "message": str(exc)})
    if errors:
        raise SpecError(errors)
    return env
