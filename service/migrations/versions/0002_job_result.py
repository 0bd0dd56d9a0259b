"""Jobs keep their evaluation result: the `before` and `after` tables (and any at intervals).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("result", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "result")
