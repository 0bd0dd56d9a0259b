"""What a team can plug in: reward modules (and scoring samples with one, on the cluster) and
environments. Listings read registry metadata only; no team code is imported here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from environments import available as environments_available
from rewards import available as rewards_available
from service.api.deps import ChecksDep, TeamDep
from service.api.schemas import ScoreRequest
from service.core.errors import ApiError
from trainer.spec.checks import ScoreSamplesRequest

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/rewards")
def rewards(team: TeamDep) -> dict[str, Any]:
    return {"rewards": rewards_available()}


@router.post("/rewards/{name}/run")
async def run_reward(request: Request, name: str, body: ScoreRequest, team: TeamDep,
                     checks: ChecksDep) -> dict[str, Any]:
    """Score given samples with one module, as a job would (time limit, failures recorded), on
    the cluster."""
    if len(body.prompts) != len(body.completions):
        raise ApiError(422, "invalid_request", "prompts and completions must have the same length", "completions")
    return await checks.run(ScoreSamplesRequest(name=name, **body.model_dump()),
                            request.app.state.settings.check_timeout_s + body.timeout_s, team.id)


@router.get("/environments")
def environments(team: TeamDep) -> dict[str, Any]:
    return {"environments": environments_available()}
