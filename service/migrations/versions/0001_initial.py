"""Initial schema: teams, API keys, jobs, job events, metrics and checkpoints.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("max_concurrent_jobs", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), nullable=False, index=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("ray_job_id", sa.String(100)),
        sa.Column("report_token_hash", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("latest_metrics", sa.JSON),
        sa.Column("wandb", sa.String(500)),
        sa.Column("run_dir", sa.String(500)),
        sa.Column("created_at", TS, nullable=False, index=True),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.UniqueConstraint("team_id", "idempotency_key"),
    )
    op.create_index("ix_jobs_queue", "jobs", ["state", "priority", "created_at"])
    for table, extra in (
        ("job_events", [sa.Column("seq", sa.Integer, nullable=False), sa.Column("kind", sa.String(40), nullable=False),
                        sa.Column("message", sa.Text, nullable=False), sa.Column("data", sa.JSON)]),
        ("job_metrics", [sa.Column("step", sa.Integer, nullable=False), sa.Column("values", sa.JSON, nullable=False)]),
        ("job_checkpoints", [sa.Column("step", sa.Integer, nullable=False),
                             sa.Column("path", sa.String(500), nullable=False)]),
    ):
        key = "seq" if table == "job_events" else "step"
        op.create_table(
            table,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False, index=True),
            *extra,
            sa.Column("created_at", TS, nullable=False),
            sa.UniqueConstraint("job_id", key),
        )


def downgrade() -> None:
    for table in ("job_checkpoints", "job_metrics", "job_events", "jobs", "api_keys", "teams"):
        op.drop_table(table)
