"""Logged production traces as training data: a frozen snapshot of the conversations a deployed
model had and the outcomes they led to (`POST /v1/traces`), for the algorithms that learn from
logged outcomes (`offline_pg`, `kto`, `filtered_sft`).

Each trace is one task: its prompt is the conversation up to the first assistant turn, the rest
is the logged reply the loss learns from (`Task.logged`), and its outcome labels are task
columns, as a dataset's columns are, so reward modules score them unchanged (`resolution` reads
`outcome` and `turns`). Nothing is rolled out on the training split. The held-out split is
another environment's, named in `eval` (the simulator's tickets): a model that learned from
traces is judged where its outcomes are measured, not logged.

    [environment]
    name = "traces"
    config = { select = { model = "support-agent", since = "2026-11-01T00:00:00Z" },
               eval = { name = "support_desk", config = { eval_size = 100 } } }

`select` chooses among the team's stored traces; the control plane freezes the selection into a
snapshot in its runs folder when the job is submitted (before its checks run, so they check the
very data the job trains on) and records the snapshot's hash and count on the job; restarts reuse
it, and traces that arrive later do not change the run. Outside the service, `snapshot` names a
file directly. The snapshot is a Parquet file with one row per trace: `trace_id`, `model`, `model_version`,
`messages`, `outcome` and `metadata` (the last three as JSON text), `created_at`. The control
plane writes it into the job's folder at launch from the job's filter (`flywheel traces export
--parquet` writes the same file by hand) and records its content hash on the job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from environments.base import DATA_PATH, EnvironmentConfigError, Episode, LoggedReply, Step, Task

COLUMNS = ("trace_id", "model", "model_version", "messages", "outcome", "metadata", "created_at")


class EvalEnvironment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    config: dict[str, Any] = Field(default_factory=dict)


class TraceSelection(BaseModel):
    """Which of the team's traces a job learns from, as `GET /v1/traces` filters them."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str | None = Field(default=None, min_length=1, max_length=200)
    model_version: str | None = Field(default=None, min_length=1, max_length=100)
    outcome: list[Annotated[str, Field(max_length=300, pattern=r"^[^:]+(:[\s\S]+)?$")]] = Field(default_factory=list,
                                                                                          max_length=20)
    """`KEY:VALUE` labels every trace must have (a bare VALUE is the `outcome` label)."""
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    limit: int | None = Field(default=None, ge=1, le=10_000_000)
    """At most this many traces, the most recent ones."""


class TracesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    select: TraceSelection | None = None
    """The traces to learn from, chosen from the team's in the control plane: it freezes them into a
    snapshot when the job is submitted and sets `snapshot` (and records its hash on the job)."""

    snapshot: str | None = Field(default=None, json_schema_extra=DATA_PATH)
    """The traces: a Parquet snapshot (see the module's doc for its columns)."""

    eval: EvalEnvironment | None = None
    """The environment whose `eval` split judges the model (`support_desk`); none: no evaluation."""

    require_outcome: bool = True
    """Leave out traces whose outcome is not known yet (none of their labels arrived)."""

    tool_calls: Literal["json", "call"] = "json"
    """How an assistant's logged `tool_calls` are written for the model: their JSON, or the
    `name(arg=value)` lines the support desk's agents write."""


def write_snapshot(traces: Iterable[dict[str, Any]], path: str | Path) -> tuple[int, str]:
    """Write traces (as the API gives them: `messages`, `outcome` and `metadata` as JSON values) to
    a Parquet snapshot; returns how many, and the file's content hash."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"trace_id": t["trace_id"], "model": t["model"], "model_version": t.get("model_version"),
             "messages": json.dumps(t["messages"]), "outcome": json.dumps(t["outcome"]) if t.get("outcome") else None,
             "metadata": json.dumps(t.get("metadata") or {}), "created_at": str(t.get("created_at") or "")}
            for t in traces]
    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return len(rows), snapshot_hash(path)


def snapshot_hash(path: str | Path) -> str:
    """The snapshot's content hash (sha256 of the file), as recorded on the job."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def message_text(message: dict[str, Any], tool_calls: str = "json") -> str:
    """A message's content as the model reads and writes it; an assistant's tool calls as their
    JSON, or (`"call"`) as `name(arg=value, ...)` lines, the support desk's own format."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content)
    calls = [c["function"] for c in message.get("tool_calls") or []]
    if calls and tool_calls == "call":
        lines = []
        for c in calls:
            args = json.loads(c["arguments"] or "{}")
            lines.append(f"{c['name']}({', '.join(f'{k}={v}' for k, v in args.items())})")
        content = "\n".join(([content] if content else []) + lines)
    elif calls:
        content = (content or "") + json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls])
    return content or ""


def _behaviour(message: dict[str, Any]) -> dict[str, list] | None:
    """The logged behaviour logprobs of an assistant message: token ids with their logprobs, or
    OpenAI's token strings with theirs; None when the trace has none."""
    lp = message.get("logprobs")
    if not lp:
        return None
    if lp.get("token_ids") is not None:
        return {"token_ids": lp["token_ids"], "logprobs": lp["logprobs"]}
    if lp.get("content") is not None:
        return {"tokens": [t["token"] for t in lp["content"]], "logprobs": [t["logprob"] for t in lp["content"]]}
    return None


def trace_task(row: dict[str, Any], where: str, tool_calls: str = "json") -> Task:
    """One snapshot row as a task: the prompt, the logged reply and the outcome labels as columns."""
    try:
        messages = json.loads(row["messages"])
        outcome = json.loads(row["outcome"]) if row.get("outcome") else {}
        metadata = json.loads(row["metadata"]) if row.get("metadata") else {}
    except (TypeError, json.JSONDecodeError) as exc:
        raise EnvironmentConfigError("snapshot", f"{where}: messages, outcome and metadata must be JSON text "
                                                 f"({exc})") from None
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
    if not first:
        raise EnvironmentConfigError("snapshot", f"{where}: expected context messages, then at least one "
                                                 "assistant message")
    plain = [{"role": m["role"], "content": message_text(m, tool_calls)} for m in messages]
    logged = LoggedReply(messages=plain[first:], behaviour=[_behaviour(m) if m["role"] == "assistant" else None
                                                            for m in messages[first:]],
                         model=row.get("model"), model_version=row.get("model_version"))
    columns = {**{f"metadata.{k}": v for k, v in metadata.items()}, **outcome, "trace_id": row["trace_id"]}
    return Task(id=str(row["trace_id"]), prompt=plain[:first], columns=columns, logged=logged)


def read_snapshot(path: str, require_outcome: bool, tool_calls: str = "json") -> list[Task]:
    import pyarrow.parquet as pq

    file = Path(path)
    if not file.is_file():
        raise EnvironmentConfigError("snapshot", f"no such file: {path}")
    try:
        table = pq.read_table(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
        raise EnvironmentConfigError("snapshot", f"{path}: not a Parquet file ({exc})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise EnvironmentConfigError("snapshot", f"{path}: missing columns {missing} (expected {list(COLUMNS)})")
    tasks = [trace_task(row, f"{path} row {i + 1}", tool_calls) for i, row in enumerate(table.to_pylist())
             if row.get("outcome") or not require_outcome]
    if not tasks:
        raise EnvironmentConfigError("snapshot", f"{path} holds no traces" + (" with an outcome" if require_outcome
                                                                             else ""))
    return tasks


class TracesEnvironment:
    """Logged production conversations and their outcomes (a Parquet snapshot); nothing is
    rolled out on them. The held-out split is another environment's (`eval`)."""

    config_model = TracesConfig

    def __init__(self, config: TracesConfig):
        from environments.registry import build

        self.config = config
        if config.snapshot is None:
            raise EnvironmentConfigError("snapshot", "expected a snapshot file; a `select` alone is frozen into one "
                                                     "by the control plane when the job is submitted (outside it, "
                                                     "write one with `flywheel traces export -o FILE.parquet`)")
        self._train = read_snapshot(config.snapshot, config.require_outcome, config.tool_calls)
        self._eval = None
        if config.eval is not None:
            if config.eval.name == "traces":
                raise EnvironmentConfigError("eval.name", "the held-out environment must be one that rolls "
                                                          "out (support_desk, dataset), not traces")
            self._eval = build(config.eval.name, config.eval.config)
        self.rollouts = self._eval
        """The environment whose episodes the rollout workers run: the held-out one (traces are
        never rolled out)."""
        self.multi_turn = bool(getattr(self._eval, "multi_turn", False))

    def tasks(self, split: str) -> Iterable[Task]:
        if split == "train":
            return self._train
        if split == "eval" and self._eval is not None:
            return self._eval.tasks("eval")
        raise EnvironmentConfigError(split, f"no {split!r} split: traces are the train split, and `eval` names "
                                            "the environment that judges the model")

    async def step(self, episode: Episode) -> Step:
        """Evaluation episodes are the held-out environment's."""
        if self._eval is None:
            raise EnvironmentConfigError("eval", "traces are not rolled out")
        return await self._eval.step(episode)
