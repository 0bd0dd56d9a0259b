"""Production traces: one conversation per row, team-scoped, unique by the client's trace id, with
indexes for the filters the API offers (time, and model then time).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table("traces",
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), nullable=False),
                    sa.Column("trace_id", sa.String(200), nullable=False),
                    sa.Column("model", sa.String(200), nullable=False),
                    sa.Column("model_version", sa.String(100), nullable=True),
                    sa.Column("messages", sa.JSON, nullable=False),
                    sa.Column("outcome", sa.JSON(none_as_null=True), nullable=True),
                    sa.Column("metadata", sa.JSON, nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=True),
                    sa.UniqueConstraint("team_id", "trace_id"))
    op.create_index("ix_traces_team_created", "traces", ["team_id", "created_at", "id"])
    op.create_index("ix_traces_team_model_created", "traces", ["team_id", "model", "created_at"])


def downgrade() -> None:
    op.drop_table("traces")
