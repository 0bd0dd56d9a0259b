"""What several teams sharing one service needs in the store: the hashed files of a job's export
(hashed when the trainer reports it, outside any write), per-team caps on queued jobs and on the
bytes of stored traces (with the running total), and the history of every outcome rewrite.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("export_files", sa.JSON, nullable=True))
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("max_queued_jobs", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_trace_bytes", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("trace_bytes", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "trace_outcome_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("trace_row_id", sa.Integer, sa.ForeignKey("traces.id"), nullable=False, index=True),
        sa.Column("key_prefix", sa.String(16), nullable=True),
        sa.Column("old", sa.JSON, nullable=True),
        sa.Column("new", sa.JSON, nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trace_outcome_changes")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("trace_bytes")
        batch.drop_column("max_trace_bytes")
        batch.drop_column("max_queued_jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("export_files")
