"""Logged production traces as training data: a frozen snapshot of the conversations a deployed
model had and the outcomes they led to (`POST /v1/traces`), for the algorithms that learn from
logged outcomes (`offline_pg`, `kto`, `filtered_sft`).

Each trace is one task: its prompt is the conversation up to the first assistant turn, the rest
is the logged reply the loss learns from (`Task.logged`), and its outcome labels are task
columns, as a dataset's columns are, so reward modules score them unchanged (`resolution` reads
`outcome` and `turns`). Nothing is rolled out on the training split. The held-out split is
another environment's, named in `eval` (the simulator's tickets): a model that learned from
traces is judged where its outcomes are measured, not logged.

Only what the model wrote is learned from. A trace logged by the model server says which of its
assistant turns the server sampled (`metadata.sampled_messages`, their indices in `messages`); a
client sends the whole history with each request and may write assistant turns of its own. Those
are context, never a target: the prompt runs up to the first sampled turn (client-written turns
before it included), and the logged reply ends before the next assistant turn the server did not
sample (what follows it is not learned from, as what follows the last turn is not). A trace
without that field (imported from elsewhere) is learned from as it is.

    [environment]
    name = "traces"
    config = { select = { model = "support-agent", since = "2026-11-01T00:00:00Z" },
               eval = { name = "support_desk", config = { eval_size = 100 } } }

`select` chooses among the team's stored traces; the control plane freezes the selection into a
snapshot in its runs folder when the job is submitted (before its checks run, so they check the
very data the job trains on) and records the snapshot's hash and count on the job; restarts reuse
it, and traces that arrive later do not change the run. Outside the service, `snapshot` names a
file directly; its format is `environments/snapshot.py`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from environments.base import DATA_PATH, Environment, EnvironmentConfigError, Episode, LoggedReply, Step, Task
from environments.messages import message_text
from environments.snapshot import SnapshotError, TraceSelection, read_rows


class EvalEnvironment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    config: dict[str, Any] = Field(default_factory=dict)


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


def _learned_span(messages: list[dict[str, Any]], sampled: Any, where: str) -> tuple[int, int]:
    """Where the logged reply starts and ends: from the first assistant turn the model wrote to
    before the next one it did not (`sampled`: the indices of the turns the server sampled; None
    for a trace that does not say, whose assistant turns are all the model's)."""
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if sampled is not None and not (isinstance(sampled, list) and all(type(i) is int for i in sampled)):
        raise EnvironmentConfigError("snapshot", f"{where}: metadata.sampled_messages must be a list of message "
                                                 "indices")
    written = assistant if sampled is None else [i for i in assistant if i in set(sampled)]
    if not written or written[0] == 0:
        raise EnvironmentConfigError("snapshot", f"{where}: expected context messages, then at least one "
                                                 "assistant message" + ("" if sampled is None else " the model sampled"))
    first = written[0]
    end = next((i for i in assistant if i > first and i not in written), len(messages))
    return first, end


def trace_task(row: dict[str, Any], where: str, tool_calls: str = "json") -> Task:
    """One snapshot row as a task: the prompt, the logged reply and the outcome labels as columns."""
    try:
        messages = json.loads(row["messages"])
        outcome = json.loads(row["outcome"]) if row.get("outcome") else {}
        metadata = json.loads(row["metadata"]) if row.get("metadata") else {}
    except (TypeError, json.JSONDecodeError) as exc:
        raise EnvironmentConfigError("snapshot", f"{where}: messages, outcome and metadata must be JSON text "
                                                 f"({exc})") from None
    first, end = _learned_span(messages, metadata.pop("sampled_messages", None), where)
    plain = [{"role": m["role"], "content": message_text(m, tool_calls)} for m in messages]
    logged = LoggedReply(messages=plain[first:end], behaviour=[_behaviour(m) if m["role"] == "assistant" else None
                                                               for m in messages[first:end]],
                         model=row.get("model"), model_version=row.get("model_version"))
    columns = {**{f"metadata.{k}": v for k, v in metadata.items()}, **outcome, "trace_id": row["trace_id"]}
    return Task(id=str(row["trace_id"]), prompt=plain[:first], columns=columns, logged=logged)


def read_snapshot(path: str, require_outcome: bool, tool_calls: str = "json") -> list[Task]:
    """The snapshot's traces as tasks (those with an outcome, unless `require_outcome` is off)."""
    try:
        rows = read_rows(path)
    except SnapshotError as exc:
        raise EnvironmentConfigError("snapshot", str(exc)) from None
    tasks = [trace_task(row, f"{path} row {i + 1}", tool_calls) for i, row in enumerate(rows)
             if row.get("outcome") or not require_outcome]
    if not tasks:
        raise EnvironmentConfigError("snapshot", f"{path} holds no traces" + (" with an outcome" if require_outcome
                                                                             else ""))
    return tasks


class TracesEnvironment:
    """Logged production conversations and their outcomes (a Parquet snapshot); nothing is
    rolled out on them. The held-out split is another environment's (`eval`)."""

    config_model = TracesConfig

    @classmethod
    def from_config(cls, config: TracesConfig, build: Callable[[str, dict], Environment]) -> TracesEnvironment:
        """The registry's constructor: `build` (the registry's) builds the held-out environment."""
        return cls(config, build)

    def __init__(self, config: TracesConfig, build: Callable[[str, dict], Environment]):
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
