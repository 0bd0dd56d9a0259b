"""Single-turn dataset environment over local JSONL, Parquet or HF `datasets` folders.

Each row has a prompt column — a string (sent as one user message) or a list of chat messages —
and any number of other columns, which reach the reward modules unchanged (`answer`, `tests`, …).

    [environment]
    name = "dataset"
    config = { train = "configs/data/digits.jsonl", eval = "configs/data/digits_eval.jsonl" }
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from environments.base import DATA_PATH, EnvironmentConfigError, Episode, Step, Task


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    train: str = Field(json_schema_extra=DATA_PATH)
    """Training data: a .jsonl or .parquet file, or a folder written by `datasets.save_to_disk`."""

    eval: str | None = Field(default=None, json_schema_extra=DATA_PATH)
    """Held-out data in the same format; evaluation is skipped without it."""

    prompt_column: str = "prompt"
    """Column with the prompt (a string or a list of `{role, content}` messages)."""

    system_prompt: str | None = None
    """Optional system message put before string prompts."""


def _read_rows(path: Path, key: str) -> list[dict[str, Any]]:
    if not path.exists():
        raise EnvironmentConfigError(key, f"no such file or folder: {path}")
    if path.is_dir():
        import datasets

        if not any((path / marker).is_file() for marker in ("state.json", "dataset_dict.json")):
            raise EnvironmentConfigError(key, f"{path} is a folder but not a `datasets` folder (one written by "
                                              "save_to_disk); name a .jsonl or .parquet file, or such a folder")
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            raise EnvironmentConfigError(key, f"{path} holds splits {list(ds)}; point at one split's folder")
        return ds.to_list()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EnvironmentConfigError(key, f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise EnvironmentConfigError(key, f"{path}:{lineno}: expected a JSON object per line")
            rows.append(row)
        return rows
    raise EnvironmentConfigError(key, f"{path}: expected a .jsonl or .parquet file or a datasets folder")


def _prompt(value: Any, where: str, key: str, system: str | None) -> list[dict[str, str]]:
    if isinstance(value, str):
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": value}]
    if (isinstance(value, list) and value
            and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise EnvironmentConfigError(key, f"{where}: prompt must be a string or a list of {{role, content}} messages")


def load_tasks(path: str, key: str, cfg: DatasetConfig) -> list[Task]:
    """Read and check every row of a data file into tasks."""
    rows = _read_rows(Path(path), key)
    if not rows:
        raise EnvironmentConfigError(key, f"{path} has no rows")
    tasks = []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"
        if cfg.prompt_column not in row:
            raise EnvironmentConfigError("prompt_column", f"{where} has no column {cfg.prompt_column!r} "
                                         f"(columns: {sorted(row)})")
        columns = {k: v for k, v in row.items() if k != cfg.prompt_column}
        raw = row[cfg.prompt_column]
        tasks.append(Task(str(row.get("id", i)), _prompt(raw, where, key, cfg.system_prompt), columns,
                          raw if isinstance(raw, str) else None))
    return tasks


class DatasetEnvironment:
    """Prompts from a file; the episode ends after the policy's one reply."""

    config_model = DatasetConfig

    def __init__(self, config: DatasetConfig):
        self.config = config
        self._splits = {"train": load_tasks(config.train, "train", config)}
        if config.eval:
            self._splits["eval"] = load_tasks(config.eval, "eval", config)

    def tasks(self, split: str) -> Iterable[Task]:
        if split not in self._splits:
            raise EnvironmentConfigError(split, f"this dataset has no {split!r} split (has {sorted(self._splits)})")
        return self._splits[split]

    async def step(self, episode: Episode) -> Step:
        return Step(done=True)
