"""Deployments: a named pointer at one model version, moved only through its gate.

Promotion compares the candidate's held-out evaluation with the current model's on the deployment's
gate (`gate.py`) and moves the pointer only when every row passes; a refusal is recorded with the
table that says why, and the deployment keeps its model. Rollback returns to the model served
before. Every change and every refusal is a deployment event.

The two evaluations must have run on the same held-out environment (`registry.held_out_environment`);
when they did not, or one is missing, the promotion is refused as not comparable.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.core.errors import ApiError
from service.core.store import Deployment, DeploymentEvent, ModelVersion, Team, now
from service.models.gate import Gate, judge, verdict_text


def _event(session: Session, dep: Deployment, kind: str, message: str, model_id: str | None,
           previous: str | None = None, verdict: dict | None = None) -> None:
    session.add(DeploymentEvent(deployment_id=dep.id, kind=kind, model_id=model_id, previous_model_id=previous,
                                message=message, verdict=verdict))


def servable(model: ModelVersion, field: str) -> None:
    if model.kind != "policy":
        raise ApiError(422, "not_a_policy", f"{model.id} is an {model.kind}: a reward for jobs, not a model a "
                                            "deployment serves", field)


def create(session: Session, team: Team, name: str, model: ModelVersion | None, gate: Gate) -> Deployment:
    if model is not None:
        servable(model, "model")
    dep = Deployment(team_id=team.id, name=name, model_id=model.id if model else None, history=[],
                     gate=gate.model_dump())
    session.add(dep)
    session.flush()
    _event(session, dep, "created", f"deployment {name!r} created" + (f", serving {model.id}" if model else ""),
           model.id if model else None)
    return dep


def after_evaluation(model: ModelVersion) -> dict | None:
    return ((model.evaluation or {}).get("after") or {}).get("metrics")


def comparable(current: ModelVersion, candidate: ModelVersion) -> str | None:
    """Why the two models' stored evaluations cannot be compared; None when they can."""
    for m in (current, candidate):
        if after_evaluation(m) is None:
            return f"{m.id} has no held-out evaluation (its job ran without schedule.eval_before_after)"
    if current.eval_environment != candidate.eval_environment:
        return (f"{current.id} was evaluated on {current.eval_environment} and {candidate.id} on "
                f"{candidate.eval_environment}: not the same held-out tasks")
    return None


def promote(session: Session, dep: Deployment, candidate: ModelVersion) -> dict | None:
    """Move the deployment to `candidate` if it passes the gate (the verdict; None for a first
    model, which has nothing to be compared with); a refusal is recorded, then raised as a 409."""
    servable(candidate, "model")
    if dep.model_id == candidate.id:
        raise ApiError(409, "already_serving", f"{dep.name!r} already serves {candidate.id}", "model")
    current = session.get(ModelVersion, dep.model_id) if dep.model_id else None
    verdict = None
    if current is not None:
        problem = comparable(current, candidate)
        if problem is not None:
            _event(session, dep, "refused", f"{candidate.id} refused: {problem}", candidate.id, current.id)
            session.commit()
            raise ApiError(409, "not_comparable", problem, "model")
        verdict = judge(Gate.model_validate(dep.gate), after_evaluation(current), after_evaluation(candidate))
        if not verdict["passed"]:
            message = f"{candidate.id} refused by the gate: {verdict_text(verdict)}"
            _event(session, dep, "refused", message, candidate.id, current.id, verdict)
            session.commit()
            raise ApiError(409, "gate_refused", message, "model", extra={"verdict": verdict})
        dep.history = [*dep.history, current.id]
    dep.model_id, dep.updated_at = candidate.id, now()
    _event(session, dep, "promoted", f"{candidate.id} promoted" + (f" over {current.id}" if current else ""),
           candidate.id, current.id if current else None, verdict)
    return verdict


def rollback(session: Session, dep: Deployment) -> None:
    """Serve the model served before the current one again."""
    if not dep.history:
        raise ApiError(409, "nothing_to_roll_back", f"{dep.name!r} has served no other model")
    previous, current = dep.history[-1], dep.model_id
    dep.history, dep.model_id, dep.updated_at = dep.history[:-1], previous, now()
    _event(session, dep, "rolled_back", f"rolled back from {current} to {previous}", previous, current)
