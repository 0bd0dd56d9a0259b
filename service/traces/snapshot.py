"""A job's trace selection, frozen: when a job on the `traces` environment is submitted with a
`select`, the team's matching traces are written to a Parquet snapshot named by its content hash
(`RUNS_DIR/traces/SHA256.parquet`), and its path, hash and count are recorded on the job beside
the spec, which stays as the client sent it. The job's checks and its runs (restarts too) get the
spec with that path as `environment.config.snapshot` (`attach`), so traces that arrive later
never change it, and two jobs on the same selection of the same traces share one file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from environments.snapshot import TraceSelection, write_snapshot
from service.core.errors import ApiError
from service.core.store import Trace
from service.traces.logic import TraceFilter
from trainer.spec import JobSpec

FIELD = "environment.config.select"


@dataclass(frozen=True)
class Frozen:
    """A selection frozen into a snapshot: its file, content hash and how many traces it holds."""

    path: str
    sha256: str
    count: int


def attach(spec: dict[str, Any], frozen_path: str | None) -> dict[str, Any]:
    """The spec as the checks and the trainer read it: with the snapshot its selection was frozen
    into (a spec with no frozen selection is returned as it is)."""
    if frozen_path is None:
        return spec
    environment = spec["environment"]
    return {**spec, "environment": {**environment, "config": {**environment["config"], "snapshot": frozen_path}}}


def folder(runs_dir: str | Path) -> Path:
    return Path(runs_dir).resolve() / "traces"


def freeze(session: Session, team_id: str, spec: JobSpec, runs_dir: str | Path) -> Frozen | None:
    """The snapshot the spec's selection of the team's traces was frozen into; None when the spec
    selects no traces."""
    config = spec.environment.config
    if spec.environment.name != "traces" or "select" not in config:
        return None
    if config.get("snapshot") is not None:
        raise ApiError(422, "invalid_spec", "environment.config.snapshot: give `select` (the service freezes the "
                                            "selection into a snapshot) or `snapshot` (a file), not both",
                       "environment.config.snapshot")
    try:
        selection = TraceSelection.model_validate(config["select"])
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join([FIELD, *map(str, err["loc"])])
        raise ApiError(422, "invalid_spec", f"{field}: {err['msg']}", field) from None
    rows = list(_selected(session, team_id, selection))
    if not rows:
        raise ApiError(422, "invalid_spec", f"{FIELD}: no trace of this team matches the selection", FIELD)
    target = folder(runs_dir)
    target.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=target, suffix=".parquet.tmp")
    os.close(fd)
    try:
        count, digest = write_snapshot(rows, scratch)
        os.chmod(scratch, 0o600)  # a team's traces: readable by the service's user alone
        path = target / f"{digest}.parquet"
        os.replace(scratch, path)
    finally:
        Path(scratch).unlink(missing_ok=True)
    return Frozen(str(path), digest, count)


def _selected(session: Session, team_id: str, s: TraceSelection) -> Iterator[dict]:
    """The selected traces, oldest first (the most recent `limit` of them)."""
    where = TraceFilter(model=s.model, model_version=s.model_version, outcome=tuple(s.outcome), since=s.since,
                        until=s.until)
    query = where.apply(select(Trace), team_id).order_by(Trace.created_at.desc(), Trace.id.desc())
    if s.limit is not None:
        query = query.limit(s.limit)
    rows = [{"trace_id": t.trace_id, "model": t.model, "model_version": t.model_version, "messages": t.messages,
             "outcome": t.outcome, "metadata": t.meta, "created_at": t.created_at.isoformat()}
            for t in session.scalars(query)]
    return reversed(rows)
