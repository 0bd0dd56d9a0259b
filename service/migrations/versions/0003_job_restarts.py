"""Jobs restart from their last checkpoint after an infrastructure failure: how many times they
have, and when the next attempt may start (the backoff).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("restarts", sa.Integer, nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "not_before")
    op.drop_column("jobs", "restarts")
