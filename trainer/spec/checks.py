"""What the control plane asks a check on the cluster and what the check answers, as typed
messages (`service/jobs/checks.py` writes the request, `python -m trainer.checks FOLDER` reads it
and writes the progress and the result). Pure pydantic, like the rest of the spec.

    FOLDER/request.json   a PreflightRequest or a ScoreSamplesRequest
    FOLDER/progress.json  a CheckProgress, before each step (what a timeout names)
    FOLDER/result.json    a CheckResult
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field


class PreflightRequest(BaseModel):
    """The spec's checks (its code and data), then with `dry_run` > 0 a dry run of that many tasks."""

    kind: Literal["preflight"] = "preflight"
    spec: dict[str, Any]
    dry_run: int = 0
    data_roots: list[str] | None = None
    """Every path the spec names must lie under one of these (none: no such rule)."""


class ScoreSamplesRequest(BaseModel):
    """One reward module on given samples."""

    kind: Literal["score"] = "score"
    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float
    prompts: list[Any]
    completions: list[Any]
    columns: dict[str, list[Any]] = Field(default_factory=dict)


CheckRequest = Annotated[PreflightRequest | ScoreSamplesRequest, Field(discriminator="kind")]


class CheckProgress(BaseModel):
    field: str | None
    """The spec field the check is working on."""
    what: str


class SpecFieldError(BaseModel):
    field: str | None
    message: str


class CheckError(BaseModel):
    """A refusal the control plane answers as it is: status, code, message and the field."""

    status: int
    code: str
    message: str
    field: str | None = None


class ScoreFailure(BaseModel):
    indices: list[int]
    error: str


class CheckResult(BaseModel):
    """The check's answer: errors in the spec's fields, another refusal, or what it found."""

    spec_errors: list[SpecFieldError] | None = None
    error: CheckError | None = None
    dry_run: dict[str, Any] | None = None
    """A preflight request's dry run: the reward distribution, failures, tied groups."""
    rewards: list[float | None] | None = None
    """A score request's rewards, one per sample."""
    failed: list[bool] | None = None
    failures: list[ScoreFailure] | None = None

    def answer(self) -> dict[str, Any]:
        """What the control plane returns to its client: the fields that were set."""
        return self.model_dump(mode="json", exclude_none=True)
