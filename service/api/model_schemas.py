"""Request and response bodies of `/v1/models` and `/v1/deployments`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.models.gate import Gate

MODEL_ID = r"^mdl_[0-9a-f]{16}$"
DEPLOYMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class ModelFile(BaseModel):
    name: str
    bytes: int
    sha256: str | None = None
    """The file's SHA-256 as registered; a model server serves only files that match it."""


class ModelOut(BaseModel):
    id: str
    name: str
    """The job's name."""
    kind: str
    """`policy`, or `outcome_model` (a classifier for the outcome_model reward)."""
    job_id: str
    base_model: str
    parent_id: str | None
    lineage: list[str]
    """Ancestors' ids, parent first."""
    path: str
    files: list[ModelFile]
    size_bytes: int
    traces_sha256: str | None
    rewards: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    eval_environment: dict[str, Any] | None
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelOut]


class DeploymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DEPLOYMENT_NAME)
    """Letters, digits, `_`, `.`, `-` (`support-agent`)."""
    model: str | None = Field(default=None, pattern=MODEL_ID)
    """The model version it serves first; none: the first promotion sets it."""
    gate: Gate = Field(default_factory=Gate)


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_ID)


class DeploymentOut(BaseModel):
    id: str
    name: str
    model: str | None
    """The model version it serves."""
    history: list[str]
    """The versions it served before, oldest first."""
    gate: Gate
    created_at: datetime
    updated_at: datetime


class DeploymentList(BaseModel):
    deployments: list[DeploymentOut]


class PromoteOut(BaseModel):
    deployment: DeploymentOut
    verdict: dict[str, Any] | None
    """The gate's table (None for a first model, and while `evaluating`)."""
    evaluating: list[str] = Field(default_factory=list)
    """The evaluation jobs the comparison waits for (a 202): promote again once they succeeded."""


class DeploymentEventOut(BaseModel):
    kind: str
    """created, evaluating, promoted, refused, rolled_back, key_issued or key_revoked."""
    model: str | None
    previous_model: str | None
    message: str
    verdict: dict[str, Any] | None
    created_at: datetime


class DeploymentEvents(BaseModel):
    events: list[DeploymentEventOut]


DEPLOYMENT_KEY_ID = r"^dk_[0-9a-f]{16}$"


class DeploymentKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")
    """A label to recognise the key by (`support-frontend`)."""


class DeploymentKeyOut(BaseModel):
    id: str
    """Also the caller's part of every trace id the model server logs for it (`dk_...:conversation`)."""
    name: str
    prefix: str
    """The key's first characters, to recognise it by."""
    key_sha256: str
    """The key's SHA-256: what the model server compares a caller's key with (the key itself is never stored)."""
    created_at: datetime
    revoked_at: datetime | None


class DeploymentKeyCreated(DeploymentKeyOut):
    key: str
    """The key itself, shown this once: callers send it as `Authorization: Bearer <key>` (the
    `openai` client's `api_key`)."""


class DeploymentKeyList(BaseModel):
    keys: list[DeploymentKeyOut]
    """Every key of the deployment, revoked ones included, oldest first."""
