"""Request and response bodies of the REST API (the job spec itself is `trainer.spec.JobSpec`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


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
