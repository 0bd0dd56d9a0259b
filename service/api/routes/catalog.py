"""What a team can plug in: reward modules (and scoring samples with one) and environments."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from environments import available as environments_available
from rewards import available as rewards_available
from rewards import load
from rewards.base import RewardConfigError
from rewards.registry import UnknownRewardError
from rewards.scoring import score_async
from service.api.deps import TeamDep
from service.errors import ApiError

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/rewards")
def rewards(team: TeamDep) -> dict[str, Any]:
    return {"rewards": rewards_available()}


class ScoreRequest(BaseModel):
    prompts: list[Any] = Field(min_length=1)
    completions: list[Any] = Field(min_length=1)
    columns: dict[str, list[Any]] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0, le=300)


@router.post("/rewards/{name}/run")
async def run_reward(name: str, body: ScoreRequest, team: TeamDep) -> dict[str, Any]:
    """Score given samples with one module, as a job would (time limit, failures recorded)."""
    if len(body.prompts) != len(body.completions):
        raise ApiError(422, "invalid_request", "prompts and completions must have the same length", "completions")
    try:
        module = load(name, config=body.config, timeout_s=body.timeout_s)
    except UnknownRewardError as exc:
        raise ApiError(404, "not_found", str(exc), "name") from None
    except RewardConfigError as exc:
        raise ApiError(422, "invalid_config", str(exc), f"config.{exc.field}" if exc.field else "config") from None
    ids: list[list[int]] = [[] for _ in body.completions]
    result = await score_async([module], body.prompts, body.completions, ids, body.columns)
    return {"rewards": result.components[module.name], "failed": result.failed,
            "failures": [{"indices": f.indices, "error": f.error} for f in result.failures]}


@router.get("/environments")
def environments(team: TeamDep) -> dict[str, Any]:
    return {"environments": environments_available()}
