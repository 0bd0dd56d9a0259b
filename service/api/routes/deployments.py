"""`/v1/deployments`: named deployments, each serving one model version, moved through its gate
(`service/models/deployments.py`): create, list, show, promote, roll back, the events, and the
keys the callers of its model server present."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service.api.deps import SessionDep, TeamDep
from service.api.model_schemas import (
    DEPLOYMENT_KEY_ID,
    DEPLOYMENT_NAME,
    DeploymentEventOut,
    DeploymentEvents,
    DeploymentIn,
    DeploymentKeyCreated,
    DeploymentKeyIn,
    DeploymentKeyList,
    DeploymentKeyOut,
    DeploymentList,
    DeploymentOut,
    PromoteIn,
    PromoteOut,
)
from service.api.routes.models import owned_model
from service.core.errors import ApiError, not_found
from service.core.store import Deployment, DeploymentEvent, DeploymentKey
from service.models import deployments

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])

Name = Annotated[str, Path(pattern=DEPLOYMENT_NAME)]
KeyId = Annotated[str, Path(pattern=DEPLOYMENT_KEY_ID)]


def deployment_out(d: Deployment) -> DeploymentOut:
    return DeploymentOut(id=d.id, name=d.name, model=d.model_id, history=d.history, gate=d.gate,
                         created_at=d.created_at, updated_at=d.updated_at)


def owned_deployment(session, team, name: str) -> Deployment:
    dep = session.scalar(select(Deployment).where(Deployment.team_id == team.id, Deployment.name == name))
    if dep is None:
        raise not_found(f"deployment {name!r}")
    return dep


@router.post("", status_code=201)
def create_deployment(body: DeploymentIn, session: SessionDep, team: TeamDep) -> DeploymentOut:
    model = owned_model(session, team, body.model, "model") if body.model else None
    try:
        dep = deployments.create(session, team, body.name, model, body.gate)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ApiError(409, "already_exists", f"deployment {body.name!r} exists", "name") from None
    return deployment_out(dep)


@router.get("")
def list_deployments(session: SessionDep, team: TeamDep) -> DeploymentList:
    rows = session.scalars(select(Deployment).where(Deployment.team_id == team.id).order_by(Deployment.name)).all()
    return DeploymentList(deployments=[deployment_out(d) for d in rows])


@router.get("/{name}")
def get_deployment(name: Name, session: SessionDep, team: TeamDep) -> DeploymentOut:
    return deployment_out(owned_deployment(session, team, name))


@router.post("/{name}/promote", responses={202: {"model": PromoteOut, "description": "the comparison waits for "
                                                 "evaluation jobs (`evaluating`); nothing moved yet"}})
def promote(name: Name, body: PromoteIn, request: Request, response: Response, session: SessionDep,
            team: TeamDep) -> PromoteOut:
    """Serve `model` if it passes the deployment's gate against the current one; a refusal is a 409
    with the verdict table (`error.verdict`), recorded as an event, and the deployment keeps its model.
    When the gate must first measure a model on its held-out tasks (`gate.evaluation`), the answer
    is 202 with the evaluation jobs; promote again once they have succeeded."""
    dep = owned_deployment(session, team, name)
    verdict, pending = deployments.promote(session, dep, owned_model(session, team, body.model, "model"),
                                           str(request.app.state.settings.runs_dir))
    session.commit()
    if pending:
        response.status_code = 202
    return PromoteOut(deployment=deployment_out(dep), verdict=verdict, evaluating=pending)


@router.post("/{name}/rollback")
def rollback(name: Name, session: SessionDep, team: TeamDep) -> DeploymentOut:
    dep = owned_deployment(session, team, name)
    deployments.rollback(session, dep)
    session.commit()
    return deployment_out(dep)


@router.get("/{name}/events")
def events(name: Name, session: SessionDep, team: TeamDep) -> DeploymentEvents:
    dep = owned_deployment(session, team, name)
    rows = session.scalars(select(DeploymentEvent).where(DeploymentEvent.deployment_id == dep.id)
                           .order_by(DeploymentEvent.id)).all()
    return DeploymentEvents(events=[DeploymentEventOut(kind=e.kind, model=e.model_id, previous_model=e.previous_model_id,
                                                       message=e.message, verdict=e.verdict, created_at=e.created_at)
                                    for e in rows])


def key_out(k: DeploymentKey) -> DeploymentKeyOut:
    return DeploymentKeyOut(id=k.id, name=k.name, prefix=k.prefix, key_sha256=k.key_hash, created_at=k.created_at,
                            revoked_at=k.revoked_at)


@router.post("/{name}/keys", status_code=201)
def create_key(name: Name, session: SessionDep, team: TeamDep, body: DeploymentKeyIn | None = None
               ) -> DeploymentKeyCreated:
    """A key for the callers of the deployment's model server; the key itself is in this answer only."""
    row, key = deployments.issue_key(session, owned_deployment(session, team, name), (body or DeploymentKeyIn()).name)
    session.commit()
    return DeploymentKeyCreated(**key_out(row).model_dump(), key=key)


@router.get("/{name}/keys")
def list_keys(name: Name, session: SessionDep, team: TeamDep) -> DeploymentKeyList:
    """The deployment's keys (their hashes, never the keys), revoked ones included: what its model
    server accepts, refreshed on every poll."""
    return DeploymentKeyList(keys=[key_out(k) for k in deployments.keys(session, owned_deployment(session, team, name))])


@router.delete("/{name}/keys/{key_id}")
def revoke_key(name: Name, key_id: KeyId, session: SessionDep, team: TeamDep) -> DeploymentKeyOut:
    """Revoke the key: the model server refuses it from its next poll of the deployment on."""
    row = deployments.revoke_key(session, owned_deployment(session, team, name), key_id)
    session.commit()
    return key_out(row)
