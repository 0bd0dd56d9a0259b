"""Deployments: a named pointer at one model version, moved only through its gate.

Promotion compares the candidate's held-out evaluation with the current model's on the deployment's
gate (`gate.py`) and moves the pointer only when every row passes; a refusal is recorded with the
table that says why, and the deployment keeps its model. Rollback returns to the model served
before. Every change and every refusal is a deployment event.

The two evaluations must have run on the same held-out tasks (`registry.held_out_environment`).
When they did not, or one is missing, a gate with an `evaluation` measures each model that lacks
one on its held-out tasks: an evaluation job per model (`schedule.steps = 0`, no export), queued
like any job of the team; the promotion answers 202 with the jobs, and asked again once they have
succeeded it compares the measures. A gate without `evaluation` refuses it as not comparable.

A deployment's keys are what callers of its model server (`python -m serving`) present: issued
here (the plaintext once), stored as SHA-256 hashes, revoked by time stamp. The model server reads
the hashes with its team's key and refreshes them with each poll of the deployment.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.auth import hash_secret
from service.core.errors import ApiError, not_found
from service.core.states import TERMINAL
from service.core.store import (
    Deployment,
    DeploymentEvent,
    DeploymentKey,
    Job,
    ModelEvaluation,
    ModelVersion,
    Team,
    now,
)
from service.jobs import logic
from service.models.gate import Gate, HeldOut, judge, verdict_text
from service.models.registry import held_out_environment
from trainer.spec import JobSpec, SpecError, parse_spec


def _event(session: Session, dep: Deployment, kind: str, message: str, model_id: str | None,
           previous: str | None = None, verdict: dict | None = None) -> None:
    session.add(DeploymentEvent(deployment_id=dep.id, kind=kind, model_id=model_id, previous_model_id=previous,
                                message=message, verdict=verdict))


def servable(model: ModelVersion, field: str) -> None:
    if model.kind != "policy":
        raise ApiError(422, "not_a_policy", f"{model.id} is an {model.kind}: a reward for jobs, not a model a "
                                            "deployment serves", field)


def evaluation_spec(path: str, name: str, held_out: HeldOut) -> JobSpec:
    """The job that measures the model at `path` on the gate's held-out tasks, and nothing else."""
    try:
        return parse_spec({"name": name, "model": {"path": path}, "environment": held_out.environment.model_dump(),
                           "rewards": [r.model_dump(exclude_none=True) for r in held_out.rewards],
                           "schedule": {"steps": 0, "eval_before_after": True}, "logging": {"wandb_mode": "disabled"}})
    except SpecError as exc:
        first = exc.errors[0]
        raise ApiError(422, "invalid_gate", f"gate.evaluation: {first['message']}",
                       f"gate.evaluation.{first['field']}") from None


def create(session: Session, team: Team, name: str, model: ModelVersion | None, gate: Gate) -> Deployment:
    if gate.evaluation is not None:
        evaluation_spec("model", "evaluate", gate.evaluation)  # refused now, not at the first promotion
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


def evaluation_of(session: Session, model: ModelVersion, held_out: HeldOut, runs_dir: str
                  ) -> tuple[dict | None, str | None]:
    """The model's measures on the held-out tasks, or the id of the evaluation job that will
    measure them (started now when none is queued, running or done; a failed one is started again)."""
    spec = evaluation_spec(model.path, f"evaluate-{model.id}", held_out)
    where = held_out_environment(spec, None)
    if model.eval_environment == where and after_evaluation(model) is not None:
        return after_evaluation(model), None
    rows = session.scalars(select(ModelEvaluation).where(ModelEvaluation.model_id == model.id)
                           .order_by(ModelEvaluation.id.desc())).all()
    for row in (r for r in rows if r.environment == where):  # JSON compared here: stores differ on it in SQL
        if row.metrics is not None:
            return row.metrics, None
        if session.get(Job, row.job_id).state not in TERMINAL:
            return None, row.job_id
        break
    job, _ = logic.create_job(session, session.get(Team, model.team_id), spec, runs_dir)
    session.add(ModelEvaluation(model_id=model.id, job_id=job.id, environment=where))
    session.flush()
    return None, job.id


def promote(session: Session, dep: Deployment, candidate: ModelVersion, runs_dir: str
            ) -> tuple[dict | None, list[str]]:
    """Move the deployment to `candidate` if it passes the gate: (the verdict, no jobs); None as
    the verdict for a first model, which has nothing to be compared with. While an evaluation the
    comparison needs is still to come: (None, the evaluation jobs), and nothing moves. A refusal
    is recorded, then raised as a 409."""
    servable(candidate, "model")
    if dep.model_id == candidate.id:
        raise ApiError(409, "already_serving", f"{dep.name!r} already serves {candidate.id}", "model")
    current = session.get(ModelVersion, dep.model_id) if dep.model_id else None
    verdict = None
    if current is not None:
        gate = Gate.model_validate(dep.gate)
        if gate.evaluation is None:
            problem = comparable(current, candidate)
            if problem is not None:
                _event(session, dep, "refused", f"{candidate.id} refused: {problem}", candidate.id, current.id)
                session.commit()
                raise ApiError(409, "not_comparable", problem, "model")
            measured = after_evaluation(current), after_evaluation(candidate)
        else:
            (was, job_a), (now_, job_b) = (evaluation_of(session, m, gate.evaluation, runs_dir)
                                           for m in (current, candidate))
            pending = [j for j in (job_a, job_b) if j]
            if pending:
                _event(session, dep, "evaluating", f"{candidate.id} waits for its comparison on the gate's held-out "
                       f"tasks: evaluation jobs {', '.join(pending)}", candidate.id, current.id)
                return None, pending
            measured = was, now_
        verdict = judge(gate, *measured)
        if not verdict["passed"]:
            message = f"{candidate.id} refused by the gate: {verdict_text(verdict)}"
            _event(session, dep, "refused", message, candidate.id, current.id, verdict)
            session.commit()
            raise ApiError(409, "gate_refused", message, "model", extra={"verdict": verdict})
        dep.history = [*dep.history, current.id]
    dep.model_id, dep.updated_at = candidate.id, now()
    _event(session, dep, "promoted", f"{candidate.id} promoted" + (f" over {current.id}" if current else ""),
           candidate.id, current.id if current else None, verdict)
    return verdict, []


def rollback(session: Session, dep: Deployment) -> None:
    """Serve the model served before the current one again."""
    if not dep.history:
        raise ApiError(409, "nothing_to_roll_back", f"{dep.name!r} has served no other model")
    previous, current = dep.history[-1], dep.model_id
    dep.history, dep.model_id, dep.updated_at = dep.history[:-1], previous, now()
    _event(session, dep, "rolled_back", f"rolled back from {current} to {previous}", previous, current)


MAX_KEYS = 100
"""Live keys a deployment may have (its model server fetches them all on every poll)."""


def issue_key(session: Session, dep: Deployment, name: str) -> tuple[DeploymentKey, str]:
    """A new key for the deployment's callers: (its row, the plaintext, which is not stored)."""
    live = session.scalars(select(DeploymentKey.id).where(DeploymentKey.deployment_id == dep.id,
                                                          DeploymentKey.revoked_at.is_(None))).all()
    if len(live) >= MAX_KEYS:
        raise ApiError(409, "too_many_keys", f"{dep.name!r} has {len(live)} live keys, the most a deployment may "
                                             "have: revoke one first")
    key = "fwd_" + secrets.token_urlsafe(32)
    row = DeploymentKey(deployment_id=dep.id, name=name, key_hash=hash_secret(key), prefix=key[:10])
    session.add(row)
    session.flush()
    _event(session, dep, "key_issued", f"key {row.id} ({row.prefix}...) issued" + (f": {name}" if name else ""),
           dep.model_id)
    return row, key


def keys(session: Session, dep: Deployment) -> list[DeploymentKey]:
    return list(session.scalars(select(DeploymentKey).where(DeploymentKey.deployment_id == dep.id)
                                .order_by(DeploymentKey.created_at, DeploymentKey.id)))


def revoke_key(session: Session, dep: Deployment, key_id: str) -> DeploymentKey:
    """Revoke the key (its model server refuses it from its next poll on); revoking it again changes nothing."""
    row = session.get(DeploymentKey, key_id)
    if row is None or row.deployment_id != dep.id:
        raise not_found(f"key {key_id!r} of deployment {dep.name!r}")
    if row.revoked_at is None:
        row.revoked_at = now()
        _event(session, dep, "key_revoked", f"key {row.id} ({row.prefix}...) revoked", dep.model_id)
    return row
