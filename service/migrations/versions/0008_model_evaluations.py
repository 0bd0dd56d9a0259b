"""Evaluations of a model version on held-out tasks other than its own job's: the evaluation
jobs a deployment's gate starts, and their metrics.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table("model_evaluations",
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("model_id", sa.String(40), sa.ForeignKey("models.id"), nullable=False),
                    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False, unique=True),
                    sa.Column("environment", sa.JSON, nullable=False),
                    sa.Column("metrics", sa.JSON(none_as_null=True), nullable=True),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False))
    op.create_index("ix_model_evaluations_model_id", "model_evaluations", ["model_id"])


def downgrade() -> None:
    op.drop_table("model_evaluations")
