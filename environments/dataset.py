"""Single-turn dataset environment over local JSONL, Parquet or HF `datasets` folders.

Each row has a prompt column — a string (sent as one user message) or a list of chat messages —
and any number of other columns, which reach the reward modules unchanged (`answer`, `tests`, …).

    [environment]
    name = "dataset"
    config = { train = "configs/data/digits.jsonl", eval = "configs/data/digits_eval.jsonl" }

Every row is held in memory for sampling, so a file over `max_file_mb` is refused before it is
opened. The rows are read as a stream and checked one by one; the cluster-side checks keep only
the first `ROWS_KEPT` of them (enough for a dry run), so validating a large dataset costs them
memory for one row at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
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

    max_file_mb: int = Field(default=1024, ge=1, le=1_048_576)
    """Largest data file (or `datasets` folder) read, in MiB; a larger one is refused before it is
    opened, since every row is held in memory. Raise it where the trainer's machines hold more."""


ROWS_KEPT: ContextVar[int | None] = ContextVar("dataset_rows_kept", default=None)
"""Rows of each file kept as tasks; None: all. Every row is still read and checked. The checks on
the cluster (`python -m trainer.checks`) set it: they validate, and their dry run samples a few."""


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _read_rows(path: Path, key: str, limit_mb: int) -> Iterator[dict[str, Any]]:
    """The file's rows, one at a time, after its size is checked against `limit_mb`."""
    try:
        size = _size(path)
    except FileNotFoundError:
        raise EnvironmentConfigError(key, f"no such file or folder: {path}") from None
    except OSError as exc:
        raise EnvironmentConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if size > limit_mb << 20:
        raise EnvironmentConfigError(key, f"{path} is {size / 2**20:,.1f} MiB, over the dataset limit of "
                                          f"{limit_mb:,} MiB (`max_file_mb` in the environment's config): raise "
                                          "it where the trainer's machines hold the rows in memory, or use a "
                                          "smaller file")
    if path.is_dir():
        import datasets

        if not any((path / marker).is_file() for marker in ("state.json", "dataset_dict.json")):
            raise EnvironmentConfigError(key, f"{path} is a folder but not a `datasets` folder (one written by "
                                              "save_to_disk); name a .jsonl or .parquet file, or such a folder")
        ds = datasets.load_from_disk(str(path))  # memory-mapped: rows are read as they are iterated
        if isinstance(ds, datasets.DatasetDict):
            raise EnvironmentConfigError(key, f"{path} holds splits {list(ds)}; point at one split's folder")
        yield from ds
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                yield from batch.to_pylist()
        except pa.ArrowException as exc:
            raise EnvironmentConfigError(key, f"{path}: not a readable Parquet file ({exc})") from None
    elif path.suffix == ".jsonl":
        with path.open("rb") as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:  # not JSON, or not UTF-8
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                    raise EnvironmentConfigError(key, f"{path}:{lineno}: not valid JSON ({reason})") from None
                if not isinstance(row, dict):
                    raise EnvironmentConfigError(key, f"{path}:{lineno}: expected a JSON object per line")
                yield row
    else:
        raise EnvironmentConfigError(key, f"{path}: expected a .jsonl or .parquet file or a datasets folder")


def _prompt(value: Any, where: str, key: str, system: str | None) -> list[dict[str, str]]:
    if isinstance(value, str):
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": value}]
    if (isinstance(value, list) and value
            and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise EnvironmentConfigError(key, f"{where}: prompt must be a string or a list of {{role, content}} messages")


def load_tasks(path: str, key: str, cfg: DatasetConfig) -> list[Task]:
    """Read and check every row of a data file into tasks (the first `ROWS_KEPT` of them, if set)."""
    keep, tasks, count = ROWS_KEPT.get(), [], 0
    for i, row in enumerate(_read_rows(Path(path), key, cfg.max_file_mb)):
        count += 1
        where = f"{path} row {i + 1}"
        if cfg.prompt_column not in row:
            raise EnvironmentConfigError("prompt_column", f"{where} has no column {cfg.prompt_column!r} "
                                         f"(columns: {sorted(row)})")
        raw = row[cfg.prompt_column]
        prompt = _prompt(raw, where, key, cfg.system_prompt)
        if keep is None or i < keep:
            columns = {k: v for k, v in row.items() if k != cfg.prompt_column}
            tasks.append(Task(str(row.get("id", i)), prompt, columns, raw if isinstance(raw, str) else None))
    if not count:
        raise EnvironmentConfigError(key, f"{path} has no rows")
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
