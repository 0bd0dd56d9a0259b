"""`/v1/models`: the registry, one model version per succeeded job's export (team-scoped)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select

from service.api.deps import SessionDep, TeamDep
from service.api.model_schemas import MODEL_ID, ModelList, ModelOut
from service.core.errors import not_found
from service.core.store import ModelVersion
from service.models.registry import lineage

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelId = Annotated[str, Path(pattern=MODEL_ID)]


def model_out(session, m: ModelVersion) -> ModelOut:
    return ModelOut(id=m.id, name=m.name, kind=m.kind, job_id=m.job_id, base_model=m.base_model, parent_id=m.parent_id,
                    lineage=lineage(session, m), path=m.path, files=m.files, size_bytes=m.size_bytes,
                    traces_sha256=m.traces_sha256, rewards=m.rewards, evaluation=m.evaluation,
                    eval_environment=m.eval_environment, created_at=m.created_at)


def owned_model(session, team, model_id: str, field: str | None = None) -> ModelVersion:
    model = session.get(ModelVersion, model_id)
    if model is None or model.team_id != team.id:  # another team's model reads as a missing one
        error = not_found(f"model {model_id!r}")
        error.field = field
        raise error
    return model


@router.get("")
def list_models(session: SessionDep, team: TeamDep,
                kind: Annotated[str | None, Query(pattern="^(policy|outcome_model)$")] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> ModelList:
    """The team's model versions, newest first."""
    query = select(ModelVersion).where(ModelVersion.team_id == team.id)
    if kind:
        query = query.where(ModelVersion.kind == kind)
    rows = session.scalars(query.order_by(ModelVersion.created_at.desc(), ModelVersion.id).limit(limit)).all()
    return ModelList(models=[model_out(session, m) for m in rows])


@router.get("/{model_id}")
def get_model(model_id: ModelId, session: SessionDep, team: TeamDep) -> ModelOut:
    return model_out(session, owned_model(session, team, model_id))
