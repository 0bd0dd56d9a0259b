"""Service settings, from the environment (prefix `FLYWHEEL_`) or a `.env` file.

    FLYWHEEL_DATABASE_URL=postgresql+psycopg://flywheel:pw@127.0.0.1:5432/flywheel flywheel serve
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", env_file=".env", extra="ignore",
                                      use_attribute_docstrings=True)

    database_url: str = "sqlite:///runs/flywheel.db"
    """SQLAlchemy URL of the store: a SQLite file by default, Postgres at scale."""

    host: str = "127.0.0.1"
    port: int = 8000

    public_url: str | None = None
    """URL the trainers use to report back; defaults to http://host:port."""

    ray_address: str | None = None
    """An existing Ray cluster's dashboard address (http://head:8265). Unset: the service starts a
    local Ray head on loopback and stops it on shutdown."""

    ray_dashboard_port: int = 8265
    """Dashboard (Jobs API) port of the local Ray head the service starts."""

    data_roots: list[Path] | None = None
    """The folders a spec may name files in (models, datasets, demonstrations, reward files), as a
    JSON list: FLYWHEEL_DATA_ROOTS='["/data", "/models"]'. Any other path is refused with one
    message that says nothing of what exists. Unset: the project's runs/ and configs/ folders and
    `runs_dir`."""

    stop_jobs_on_exit: bool = False
    """On a graceful stop, cancel live jobs and stop the local Ray head (`flywheel serve
    --stop-jobs`). Off, live jobs keep running and the next start adopts them."""

    runs_dir: Path = Path("runs/jobs")
    """Where job folders (spec, checkpoints, exported model, wandb files) are written."""

    launch: bool = True
    """Launch queued jobs on Ray. Off, jobs stay queued (for tests of the API alone); a spec's
    checks still run on the cluster."""

    check_timeout_s: float = 120.0
    """Time limit for a spec's checks on the cluster (importing its reward modules, reading its
    data); past it the request fails, naming the field and module or file the check was on."""

    dry_run_timeout_s: float = 600.0
    """Time limit for `POST /v1/jobs:validate?dry_run=N` (checks, model load, rollouts, scoring)."""

    check_memory_mb: int | None = None
    """Memory limit of each check on the cluster, in MiB; unset: the check's own default (4 GiB,
    16 GiB for a dry run). Past it the request fails with `check_memory_limit`, naming the field."""

    max_concurrent_checks: int = 4
    """Checks beyond each team's first that this service runs on the cluster at once (each is a
    Python process); others wait. A team's first check always runs at once, on a slot of its own,
    so other teams' slow checks never hold up its validation."""

    max_body_bytes: int = 1_048_576
    """Largest request body accepted; a larger one is refused with 413 before it is parsed."""

    max_trace_batch: int = 1000
    """Traces one `POST /v1/traces` may carry; more is refused with 413 before anything is written."""

    max_trace_bytes: int = 1_048_576
    """Largest single trace (its JSON); a larger one is refused with 413 naming it."""

    max_trace_batch_bytes: int = 33_554_432
    """Largest `POST /v1/traces` body (the other routes keep `max_body_bytes`)."""

    max_checks_per_team: int = 2
    """Validations, dry runs and reward runs one team may have running or waiting at once; more
    are refused with 429 and Retry-After, so one team cannot hold the others up."""

    max_event_streams: int = 200
    """Event streams (`GET /v1/jobs/{id}/events` as server-sent events) the service keeps open at
    once; beyond it a new one is refused with 429."""

    max_event_streams_per_key: int = 20
    """Event streams one API key may keep open at once; beyond it a new one is refused with 429."""

    shutdown_grace_s: float = 5.0
    """On SIGTERM, how long open requests (event streams among them) may take to finish before
    they are cut and the service stops."""

    scheduler_interval_s: float = 1.0
    """How often queued jobs are considered for launch and live jobs are checked against Ray."""

    scheduler_lease_s: float = 15.0
    """With several service processes, one schedules at a time: it holds a lease in the store
    for this long and renews it every tick; if it dies, another takes over when it expires."""

    workers: int = 1
    """Service processes answering the API (`flywheel serve --workers N`); they share the store,
    and one of them at a time runs the scheduler."""

    default_team_quota: int = 2
    """Concurrent jobs a new team may run."""

    max_queued_jobs_per_team: int = 50
    """Jobs one team may have waiting at once (a team's own `max_queued_jobs` overrides it); beyond
    it a submission is refused with 429."""

    max_job_wall_clock_s: float = 7 * 24 * 3600.0
    """The longest any job may run; past it the job is stopped and failed (a spec may ask for less,
    `schedule.max_wall_clock_s`)."""

    max_trace_bytes_per_team: int = 10 * 1024**3
    """Bytes of traces (their JSON) one team may store (a team's own `max_trace_bytes` overrides
    it); a batch that would pass it is refused with 413, naming it."""

    max_running_jobs: int = 1
    """Jobs the cluster runs at once; the rest wait in the queue. Size it to the cluster (a job of
    the default shape needs about 2 CPUs)."""

    @property
    def report_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
