"""The model registry and deployments: a model version per succeeded job's export, a named
deployment pointing at one of them (and those it served before), and each deployment's events.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table("models",
                    sa.Column("id", sa.String(40), primary_key=True),
                    sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), nullable=False),
                    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False, unique=True),
                    sa.Column("name", sa.String(64), nullable=False),
                    sa.Column("kind", sa.String(20), nullable=False),
                    sa.Column("base_model", sa.String(500), nullable=False),
                    sa.Column("parent_id", sa.String(40), sa.ForeignKey("models.id"), nullable=True),
                    sa.Column("path", sa.String(500), nullable=False),
                    sa.Column("files", sa.JSON, nullable=False),
                    sa.Column("size_bytes", sa.BigInteger, nullable=False),
                    sa.Column("traces_sha256", sa.String(64), nullable=True),
                    sa.Column("rewards", sa.JSON, nullable=False),
                    sa.Column("evaluation", sa.JSON(none_as_null=True), nullable=True),
                    sa.Column("eval_environment", sa.JSON(none_as_null=True), nullable=True),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False))
    op.create_index("ix_models_team_created", "models", ["team_id", "created_at"])
    op.create_table("deployments",
                    sa.Column("id", sa.String(40), primary_key=True),
                    sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), nullable=False),
                    sa.Column("name", sa.String(100), nullable=False),
                    sa.Column("model_id", sa.String(40), sa.ForeignKey("models.id"), nullable=True),
                    sa.Column("history", sa.JSON, nullable=False),
                    sa.Column("gate", sa.JSON, nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
                    sa.UniqueConstraint("team_id", "name"))
    op.create_table("deployment_events",
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("deployment_id", sa.String(40), sa.ForeignKey("deployments.id"), nullable=False),
                    sa.Column("kind", sa.String(20), nullable=False),
                    sa.Column("model_id", sa.String(40), nullable=True),
                    sa.Column("previous_model_id", sa.String(40), nullable=True),
                    sa.Column("message", sa.Text, nullable=False),
                    sa.Column("verdict", sa.JSON(none_as_null=True), nullable=True),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False))
    op.create_index("ix_deployment_events_deployment_id", "deployment_events", ["deployment_id"])


def downgrade() -> None:
    op.drop_table("deployment_events")
    op.drop_table("deployments")
    op.drop_table("models")
