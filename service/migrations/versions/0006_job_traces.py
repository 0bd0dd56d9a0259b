"""A job that learns from production traces records the snapshot it was given: the content hash
of the Parquet file the selection was frozen into, and how many traces it holds.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("traces_sha256", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("traces_count", sa.Integer, nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "traces_count")
    op.drop_column("jobs", "traces_sha256")
