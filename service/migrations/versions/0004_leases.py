"""Leases: which of several service processes does a piece of work that must run once (the
scheduler), held until a time and renewed by its holder.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table("leases",
                    sa.Column("name", sa.String(40), primary_key=True),
                    sa.Column("holder", sa.String(200), nullable=False),
                    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False))


def downgrade() -> None:
    op.drop_table("leases")
