"""Reading run files and turning pydantic's errors into `{field, message}` rows that name the
field a user wrote (`algorithm.group_size`, not `algorithm.grpo.group_size`).

    spec = load_spec("configs/demo.toml")          # SpecError lists every bad field
    spec = parse_spec(payload)                      # the same for a REST body
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trainer.spec.algorithms import ALGORITHM_TAGS
from trainer.spec.job import JobSpec


class SpecError(ValueError):
    """A spec that failed validation; `errors` holds one `{field, message}` per problem."""

    def __init__(self, errors: list[dict[str, str]], source: str = "spec"):
        self.errors = errors
        lines = "\n".join(f"  {e['field'] or '(spec)'}: {e['message']}" for e in errors)
        super().__init__(f"invalid {source}:\n{lines}")


def describe_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Flatten a pydantic error into `{field, message}` rows with dotted field paths.

    Discriminated-union tags (`grpo`) are dropped from the path, so a user reads
    `algorithm.group_size`, the key they wrote.
    """
    rows = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p not in ALGORITHM_TAGS]
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (not part of this section's schema)"
        field = ".".join(loc)
        # Cross-field validators name the field they blame as a `path: ` prefix of the message.
        prefix, sep, rest = message.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)*", prefix):
            field, message = ".".join(filter(None, [field, prefix])), rest
        rows.append({"field": field, "message": message})
    return rows


def parse_spec(data: dict[str, Any], source: str = "spec") -> JobSpec:
    """Validate a mapping into a JobSpec, raising SpecError with every bad field named."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(describe_errors(exc), source) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set schedule.steps=5` pairs as dotted keys and YAML-typed values, for `load_spec`."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SpecError([{"field": key, "message": "--set takes key=value, e.g. schedule.steps=5"}], "--set")
        out[key] = yaml.safe_load(value)
    return out


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read a TOML, YAML or JSON run file; `overrides` are dotted keys (`schedule.steps`)."""
    path = Path(path)
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = tomllib.loads(text)
    elif suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    elif suffix == ".json":
        data = json.loads(text)
    else:
        raise SpecError([{"field": "", "message": f"unknown run-file type {suffix!r}; "
                          "expected .toml, .yaml, .yml or .json"}], str(path))
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_spec(data, str(path))
