"""Request and response bodies of the REST API (the job spec itself is `trainer.spec.JobSpec`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TracesSnapshot(BaseModel):
    sha256: str
    count: int


class JobOut(BaseModel):
    id: str
    name: str
    state: str
    priority: int
    queue_position: int | None
    step: int
    steps: int
    progress: float
    latest_metrics: dict[str, Any] | None
    result: dict[str, Any] | None
    """Evaluations by phase (`before`, `after`): {step, metrics}."""
    wandb: str | None
    run_dir: str | None
    traces: TracesSnapshot | None = None
    """On the traces environment: the snapshot the job's selection was frozen into."""
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    jobs: list[JobOut]
    total: int
    offset: int
    limit: int


class ScoreRequest(BaseModel):
    prompts: list[Any] = Field(min_length=1)
    completions: list[Any] = Field(min_length=1)
    columns: dict[str, list[Any]] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0, le=300)


INT32 = 2**31 - 1
"""Bound on a sequence number or step: the store keeps them as 32-bit integers."""
Step = Annotated[int, Field(ge=0, le=INT32)]
Metrics = dict[str, Any]


class _Strict(BaseModel):
    """Types as the schema says them (no `false` for 0): what a trainer sends is exact."""
    model_config = ConfigDict(strict=True)


class _Report(_Strict):
    seq: int = Field(ge=1, le=INT32)
    message: str = Field(default="", max_length=100_000)


class StepData(_Strict):
    step: Step
    metrics: Metrics


class EvaluationData(_Strict):
    phase: str = Field(min_length=1, max_length=40)
    step: Step
    metrics: Metrics


class CheckpointData(_Strict):
    step: Step
    path: str = Field(min_length=1, max_length=500)


class RunData(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    wandb: str | None = Field(default=None, max_length=500)


class StepReport(_Report):
    kind: Literal["step"]
    data: StepData


class EvaluationReport(_Report):
    kind: Literal["evaluation"]
    data: EvaluationData


class CheckpointReport(_Report):
    kind: Literal["checkpoint"]
    data: CheckpointData


class StartedReport(_Report):
    kind: Literal["started"]
    data: RunData | None = None


class FinishedReport(_Report):
    kind: Literal["finished"]
    data: RunData | None = None


class WarmStartReport(_Report):
    kind: Literal["warm_start"]
    data: dict[str, Any] | None = None


class FailedReport(_Report):
    kind: Literal["failed"]
    data: dict[str, Any] | None = None


class LogReport(_Report):
    kind: Literal["log"]
    data: dict[str, Any] | None = None


# One kind per member: the OpenAPI discriminator then maps each kind to exactly one schema.
Report = Annotated[StartedReport | StepReport | EvaluationReport | CheckpointReport | FinishedReport
                   | WarmStartReport | FailedReport | LogReport, Field(discriminator="kind")]
"""One trainer report; what `data` holds depends on `kind` (trainer/driver/reporting.py sends them)."""
