"""Deployment keys: the keys a deployment's model server accepts from its callers, stored as their
SHA-256 hashes; a revoked key keeps its row.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.create_table("deployment_keys",
                    sa.Column("id", sa.String(40), primary_key=True),
                    sa.Column("deployment_id", sa.String(40), sa.ForeignKey("deployments.id"), nullable=False),
                    sa.Column("name", sa.String(100), nullable=False),
                    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
                    sa.Column("prefix", sa.String(16), nullable=False),
                    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
                    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_deployment_keys_deployment_id", "deployment_keys", ["deployment_id"])


def downgrade() -> None:
    op.drop_table("deployment_keys")
