"""What a training job tells the control plane, as typed messages: the trainer builds them
(`trainer/driver/reporting.py` numbers and sends them) and the service parses them
(`POST /v1/jobs/{id}/report`, with the job's own token). Pure pydantic, like the rest of the spec.

On the wire a report is `{seq, kind, message, data}`: `seq` numbers the job's reports from 1 (a
retried report keeps its number and is stored once), `kind` says what `data` holds.

    started     the run (re)started: where its wandb run is
    step        one training step's metrics
    evaluation  a held-out evaluation (`before`, `after`, or on the way)
    checkpoint  a checkpoint saved
    finished    the run ended well: the export folder it declares (none: nothing exported)
    failed      the run failed: the error
    warm_start  the supervised warm start's progress
    log         free text
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

INT32 = 2**31 - 1
"""Bound on a sequence number or step: the store keeps them as 32-bit integers."""
StepNumber = Annotated[int, Field(ge=0, le=INT32)]
MAX_MESSAGE = 100_000
"""Characters of a report's message."""


def _finite(value: Any) -> Any:
    """NaN and infinities as null: they are not JSON, and a diverged loss must still be reported."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


Metrics = Annotated[dict[str, Any], AfterValidator(_finite)]


class _Strict(BaseModel):
    """Types as the schema says them (no `false` for 0): what a trainer sends is exact."""
    model_config = ConfigDict(strict=True)


class StepData(_Strict):
    step: StepNumber
    metrics: Metrics


class EvaluationData(_Strict):
    phase: str = Field(min_length=1, max_length=40)
    step: StepNumber
    metrics: Metrics


class CheckpointData(_Strict):
    step: StepNumber
    path: str = Field(min_length=1, max_length=500)


class RunData(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    wandb: str | None = Field(default=None, max_length=500)


class FinishedData(RunData):
    export_dir: str | None = Field(default=None, max_length=500)
    """The folder the run exported its model to; the registry registers it (none: no export)."""


class _Report(_Strict):
    message: str = Field(default="", max_length=MAX_MESSAGE)


class StartedReport(_Report):
    kind: Literal["started"] = "started"
    data: RunData | None = None


class StepReport(_Report):
    kind: Literal["step"] = "step"
    data: StepData


class EvaluationReport(_Report):
    kind: Literal["evaluation"] = "evaluation"
    data: EvaluationData


class CheckpointReport(_Report):
    kind: Literal["checkpoint"] = "checkpoint"
    data: CheckpointData


class FinishedReport(_Report):
    kind: Literal["finished"] = "finished"
    data: FinishedData | None = None


class FailedReport(_Report):
    kind: Literal["failed"] = "failed"
    data: dict[str, Any] | None = None


class WarmStartReport(_Report):
    kind: Literal["warm_start"] = "warm_start"
    data: dict[str, Any] | None = None


class LogReport(_Report):
    kind: Literal["log"] = "log"
    data: dict[str, Any] | None = None


TrainerReport = (StartedReport | StepReport | EvaluationReport | CheckpointReport | FinishedReport | FailedReport
                 | WarmStartReport | LogReport)
"""A report as the trainer builds it, before it is numbered."""

REPLAYED = ("step", "checkpoint")
"""Reports a resumed run makes again for the steps it replays (the reporter skips those stored)."""


class _Numbered(_Strict):
    seq: int = Field(ge=1, le=INT32)


class NumberedStarted(StartedReport, _Numbered):
    pass


class NumberedStep(StepReport, _Numbered):
    pass


class NumberedEvaluation(EvaluationReport, _Numbered):
    pass


class NumberedCheckpoint(CheckpointReport, _Numbered):
    pass


class NumberedFinished(FinishedReport, _Numbered):
    pass


class NumberedFailed(FailedReport, _Numbered):
    pass


class NumberedWarmStart(WarmStartReport, _Numbered):
    pass


class NumberedLog(LogReport, _Numbered):
    pass


# One kind per member: the OpenAPI discriminator then maps each kind to exactly one schema.
Report = Annotated[NumberedStarted | NumberedStep | NumberedEvaluation | NumberedCheckpoint | NumberedFinished
                   | NumberedFailed | NumberedWarmStart | NumberedLog, Field(discriminator="kind")]
"""One report as the service receives it: a `TrainerReport` with its sequence number."""
