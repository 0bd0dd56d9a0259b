"""The system of record: teams, API keys, jobs, each job's events, metrics and checkpoints, the
production traces (conversations and their outcomes) that later jobs learn from, the models the
jobs trained, and the deployments that serve them.

SQLAlchemy 2 models; the schema is created and upgraded by Alembic (`service/migrations`), the
same code on SQLite and Postgres. Rows that a trainer reports carry a per-job sequence number or
step with a unique constraint, so a retried report is stored once.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    or_,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator


def now() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class UTCDateTime(TypeDecorator):
    """A timestamp that reads back timezone-aware (UTC) from every store: SQLite keeps none, so
    without this a stored `...Z` time came back naive and the API answered it without a zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("team"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    max_concurrent_jobs: Mapped[int] = mapped_column(Integer, default=2)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Jobs the team may have waiting at once; None: the service's `max_queued_jobs_per_team`."""
    max_trace_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Bytes of traces the team may store; None: the service's `max_trace_bytes_per_team`."""
    trace_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Bytes of traces the team has stored (their JSON), counted at ingest."""
    created_at: Mapped[datetime] = mapped_column(default=now)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("team_id", "idempotency_key"),
                      Index("ix_jobs_queue", "state", "priority", "created_at"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ray_job_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    report_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    latest_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Evaluations by phase: `before` (after any warm start, before RL) and `after` (the end)."""
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Times the job was restarted from its checkpoint after an infrastructure failure."""
    not_before: Mapped[datetime | None] = mapped_column(nullable=True)
    """A restarted job waits in the queue until then (the backoff)."""
    wandb: Mapped[str | None] = mapped_column(String(500), nullable=True)
    run_dir: Mapped[str | None] = mapped_column(String(500), nullable=True)
    traces_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """A job on the traces environment: the content hash of the snapshot its selection was frozen into."""
    traces_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    traces_snapshot: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    """That snapshot's file, which the job's checks and its trainer read (the stored spec keeps the
    selection as the client sent it)."""
    export_dir: Mapped[str | None] = mapped_column(String(500), nullable=True)
    """The folder the trainer declared it exported the model to (its `finished` report)."""
    export_files: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    """That folder's files (`name`, `bytes`, `sha256`), hashed when the report arrived, before any
    write: registration copies them, and a deployment serves only files that match."""
    created_at: Mapped[datetime] = mapped_column(default=now, index=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class JobMetric(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=now)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=now)


class Trace(Base):
    """One production conversation: OpenAI-format `messages` (assistant turns may carry their
    behaviour logprobs), the model that wrote them, and the outcome labels, which may come later."""

    __tablename__ = "traces"
    __table_args__ = (UniqueConstraint("team_id", "trace_id"),
                      Index("ix_traces_team_created", "team_id", "created_at", "id"),
                      Index("ix_traces_team_model_created", "team_id", "model", "created_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    trace_id: Mapped[str] = mapped_column(String(200))
    """The client's id: the same id sent twice is stored once."""
    model: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    """Labels (`{"outcome": "resolved"}`, `{"accepted": false}`, numbers); SQL NULL until known."""
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=now)
    """When the conversation happened (the client's time, else when it arrived)."""
    received_at: Mapped[datetime] = mapped_column(default=now)
    outcome_at: Mapped[datetime | None] = mapped_column(nullable=True)


class TraceOutcomeChange(Base):
    """An outcome rewritten after it was first set: who (the API key's prefix), when, and the
    labels before and after. The trace keeps only the latest; this keeps the rest."""

    __tablename__ = "trace_outcome_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trace_row_id: Mapped[int] = mapped_column(ForeignKey("traces.id"), index=True)
    key_prefix: Mapped[str | None] = mapped_column(String(16), nullable=True)
    old: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    new: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    changed_at: Mapped[datetime] = mapped_column(default=now)


class ModelVersion(Base):
    """A trained model: the export of one succeeded job, with what it was trained from and on, and
    its held-out evaluation (the registry; `service/models/registry.py`)."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_team_created", "team_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mdl"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))
    """`policy`, or `outcome_model` (a classifier for the outcome_model reward)."""
    base_model: Mapped[str] = mapped_column(String(500))
    """The job's `model.path`: what it started from."""
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    """The registered model the job started from, when it started from one (lineage)."""
    path: Mapped[str] = mapped_column(String(500))
    files: Mapped[list[Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    traces_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rewards: Mapped[list[Any]] = mapped_column(JSON)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    """The job's held-out evaluation by phase (`before`, `after`)."""
    eval_environment: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    """The environment whose held-out split that evaluation ran on: two evaluations compare only
    when this is the same."""
    created_at: Mapped[datetime] = mapped_column(default=now)


class ModelEvaluation(Base):
    """A model version measured on held-out tasks other than its own job's: the evaluation job a
    deployment's gate started for it (`metrics` once the job succeeded)."""

    __tablename__ = "model_evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The held-out environment, as `registry.held_out_environment` writes it."""
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Deployment(Base):
    """A named deployment (`support-agent`): the model version it serves, the ones it served
    before (for rollback), and the gate a candidate must pass to replace it."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("team_id", "name"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dep"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    name: Mapped[str] = mapped_column(String(100))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """The model versions served before the current one, oldest first: rollback takes the last."""
    gate: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now)


class DeploymentEvent(Base):
    """Every change to a deployment, and every refusal: created, promoted, refused, rolled_back."""

    __tablename__ = "deployment_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    previous_model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class DeploymentKey(Base):
    """A key the callers of a deployment's model server present (`Authorization: Bearer fwd_...`),
    stored only as its SHA-256. A revoked key keeps its row (`revoked_at`): the traces logged under
    its id stay attributable."""

    __tablename__ = "deployment_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dk"))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=now)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Lease(Base):
    """Work that one process of several must do alone (the scheduler): its holder until a time."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


def hold_lease(session: Session, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the lease `name` for `ttl_s` seconds; False while another holder's is live.
    One conditional UPDATE (or the first INSERT), so two processes can never both succeed."""
    t = now()
    taken = session.execute(update(Lease).where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < t))
                            .values(holder=holder, expires_at=t + timedelta(seconds=ttl_s))).rowcount
    if not taken and session.get(Lease, name) is None:
        session.add(Lease(name=name, holder=holder, expires_at=t + timedelta(seconds=ttl_s)))
        taken = 1
    try:
        session.commit()
    except IntegrityError:  # another process inserted it first
        session.rollback()
        return False
    return bool(taken)


def release_lease(session: Session, name: str, holder: str) -> None:
    """Give the lease up now (a graceful stop), so another process need not wait for it to expire."""
    session.execute(update(Lease).where(Lease.name == name, Lease.holder == holder).values(expires_at=now()))
    session.commit()


POOL_SIZE = 40  # anyio's default thread-pool size, which FastAPI's sync routes and dependencies share


def _private_file(path: Path) -> None:
    """The SQLite file, created (or narrowed) to its owner's use alone: it holds every team's
    traces and key hashes. SQLite gives its -wal and -shm files the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists():
            os.chmod(file, 0o600)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        _private_file(Path(url.removeprefix("sqlite:///")))
        # The pool is as large as the request thread pool (40), so no request waits for a connection.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=POOL_SIZE, max_overflow=10)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")

        return engine
    return create_engine(url, pool_size=POOL_SIZE, max_overflow=10, pool_pre_ping=True)


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision."""
    if url.startswith("sqlite:///"):
        _private_file(Path(url.removeprefix("sqlite:///")))
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parents[1] / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def create_team_with_key(url: str, name: str, quota: int) -> str:
    """Migrate the store, add a team and one API key for it; returns the plaintext key (the demo
    and the load benchmark start from an empty store this way)."""
    from service.core.auth import new_api_key

    migrate(url)
    with session_factory(make_engine(url))() as s:
        team = Team(name=name, max_concurrent_jobs=quota)
        s.add(team)
        s.flush()
        key, key_hash, prefix = new_api_key()
        s.add(ApiKey(team_id=team.id, key_hash=key_hash, prefix=prefix))
        s.commit()
    return key
