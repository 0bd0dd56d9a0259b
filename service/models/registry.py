"""The model registry: every succeeded job's export becomes a model version, recorded with what it
started from (the base model, and the registered parent when it started from one: lineage), what it
learned from (the trace snapshot's hash, the reward modules), its held-out evaluation and the
environment that evaluation ran on, and its files. Registered when the job turns `succeeded`
(`service.jobs.logic.transition`), once per job.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.store import Job, ModelEvaluation, ModelVersion
from trainer.spec import JobSpec

MAX_EXPORT_FILES = 10_000


class ExportRefused(ValueError):
    """An export the registry will not take: outside the job's run folder, or not plain files."""


def export_files(run_dir: str | None, export_dir: str) -> list[dict[str, Any]]:
    """The files of a job's export, each with its size and SHA-256, read once when the trainer
    reports it (before the report is written, so no store lock is held while hashing). The export
    must lie inside the job's own run folder and hold only plain files: a trainer (or anything
    that got hold of its token) cannot register another folder of the machine as the team's model."""
    if not run_dir:
        raise ExportRefused("the job has no run folder for its export to be in")
    root, folder = Path(run_dir).resolve(), Path(export_dir).resolve()
    if not folder.is_relative_to(root):
        raise ExportRefused(f"the export must be inside the job's run folder, {root}")
    if not folder.is_dir():
        return []
    files = []
    for top, dirs, names in os.walk(folder):
        for name in sorted(names) + [d for d in dirs if Path(top, d).is_symlink()]:
            path = Path(top, name)
            if path.is_symlink() or not path.is_file():
                raise ExportRefused(f"{path.relative_to(folder)} is a link or not a plain file: an export "
                                    "holds plain files only")
            if len(files) >= MAX_EXPORT_FILES:
                raise ExportRefused(f"the export holds more than {MAX_EXPORT_FILES:,} files")
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            files.append({"name": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
                          "sha256": digest.hexdigest()})
    return sorted(files, key=lambda f: f["name"])


def held_out_environment(spec: JobSpec, traces_sha256: str | None) -> dict[str, Any] | None:
    """What a job's held-out evaluation ran on: its environment's eval split as configured (fields
    that only choose training tasks, `train*`, aside), the `traces` environment's `eval` one, or,
    for an outcome model, its held-out share of one trace snapshot. Two evaluations compare only
    when this is equal."""
    env = spec.environment
    if spec.algorithm.fits_classifier:
        return {"name": "traces", "snapshot_sha256": traces_sha256, "holdout": spec.algorithm.holdout}
    if env.name == "traces":
        inner = env.config.get("eval")
        if not isinstance(inner, dict):
            return None
        env_name, config = inner.get("name"), inner.get("config", {})
    else:
        env_name, config = env.name, env.config
    return {"name": env_name, "config": {k: v for k, v in sorted(config.items()) if not k.startswith("train")}}


def register(session: Session, job: Job) -> ModelVersion | None:
    """The job's model version, registered now if it is not yet; None when the job exported nothing."""
    existing = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))
    if existing is not None:
        return existing
    # The trainer's reports arrive in other sessions: the job object may have been read before its
    # `finished` (or last `evaluation`) report was stored.
    session.refresh(job, ["export_dir", "export_files", "result"])
    export = job.export_dir
    if not export:
        return None
    spec = JobSpec.model_validate(job.spec)
    path = Path(export).resolve()
    base = str(Path(spec.model.path).resolve()) if Path(spec.model.path).exists() else spec.model.path
    parent = session.scalar(select(ModelVersion.id).where(ModelVersion.team_id == job.team_id,
                                                          ModelVersion.path == base))
    files = job.export_files or []
    version = ModelVersion(team_id=job.team_id, job_id=job.id, name=job.name,
                           kind="outcome_model" if spec.algorithm.fits_classifier else "policy",
                           base_model=spec.model.path, parent_id=parent, path=str(path), files=files,
                           size_bytes=sum(f["bytes"] for f in files), traces_sha256=job.traces_sha256,
                           rewards=[{"name": r.label, "weight": r.weight} for r in spec.rewards],
                           evaluation=job.result, eval_environment=held_out_environment(spec, job.traces_sha256))
    session.add(version)
    session.flush()
    return version


def record_evaluation(session: Session, job: Job) -> ModelEvaluation | None:
    """A succeeded evaluation job's measures, on the model it evaluated."""
    row = session.scalar(select(ModelEvaluation).where(ModelEvaluation.job_id == job.id))
    if row is not None:
        row.metrics = ((job.result or {}).get("after") or {}).get("metrics")
    return row


def lineage(session: Session, model: ModelVersion) -> list[str]:
    """The model's ancestors' ids, parent first."""
    out, seen = [], {model.id}
    parent = model.parent_id
    while parent is not None and parent not in seen:
        out.append(parent)
        seen.add(parent)
        parent = session.scalar(select(ModelVersion.parent_id).where(ModelVersion.id == parent))
    return out
