"""Rules for the values a spec's fields hold beyond their types: how many actors and how small a
CPU share, which Ray resources a role may ask for, paths the filesystem can take, and configs
(whose path fields only their module knows) without a NUL."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints

MAX_ACTORS_PER_ROLE = 256
"""Most rollout workers, learner ranks or critic ranks a job may ask for: each is a Ray actor, a
process with a copy of the model, and a cluster this service schedules runs far fewer."""
MIN_ACTOR_CPUS = 0.01
"""Least CPU share an actor may reserve: below it Ray packs more torch processes onto a core than
it can run (and Ray counts resources in 1/10,000ths, so a smaller share can round to nothing)."""

ResourceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,100}$")]
CustomResources = Annotated[dict[ResourceName, Annotated[float, Field(gt=0, le=1e6)]], Field(max_length=16)]
BUILT_IN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def custom_only(resources: dict[str, float]) -> dict[str, float]:
    """Custom Ray resources, none of Ray's own: an actor's CPUs are its `num_cpus`, and on a
    cluster with GPUs each actor gets one."""
    taken = [k for k in resources if k in BUILT_IN_RESOURCES]
    if taken:
        raise ValueError(f"{taken[0]!r} is not a custom resource (CPUs are `num_cpus`; on a cluster with GPUs "
                         "each actor gets one)")
    return resources


def _first_nul(value: Any, where: list[str]) -> list[str] | None:
    """The key path of the first string in a config that holds a NUL (of the mapping, for a key)."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return where
        found = _first_nul(item, [*where, str(key)])
        if found is not None:
            return found
    return None


def nul_free_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config (an environment's or a reward module's) whose strings hold no NUL: its path fields
    are known only to the module that reads them, and no file call takes a NUL, so none may."""
    found = _first_nul(config, [])
    if found is not None:
        raise ValueError(".".join(found) + (": " if found else "") + "a NUL character is not allowed here "
                         "(no path can hold one)")
    return config


def usable_path(path: str) -> str:
    """A path the filesystem can take: Linux refuses a part over 255 bytes or a whole over 4096."""
    if len(path.encode()) > 4096 or any(len(part.encode()) > 255 for part in path.split("/")):
        raise ValueError("not a usable path: at most 4096 bytes, and 255 in each part between slashes")
    return path
