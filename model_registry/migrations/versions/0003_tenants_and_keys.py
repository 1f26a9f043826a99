"""Tenants and their API keys (only each key's sha256 is stored).

No data moves: a database upgraded to 0003 has no keys, so its gateways keep authenticating by
FLEET_API_KEYS alone until the first key is created. The registry service authenticates every
call by default (FLEET_REGISTRY_AUTH=required): create the first operator key with
`python -m model_registry bootstrap-key --tenant ops` before using `fleet ops`.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(16), nullable=False, unique=True),
        sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("tenant_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("tenants")
