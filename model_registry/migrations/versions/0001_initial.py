"""Pools, models and model versions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("tensor_parallel_size", sa.Integer, nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("stable_version", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("pool_name", sa.String(64), sa.ForeignKey("pools.name"), nullable=False),
        sa.Column("checkpoint_dir", sa.String(1024), nullable=False),
        sa.Column("chat_format", sa.String(64), nullable=False),
        sa.Column("supports_infill", sa.Boolean, nullable=False),
        sa.Column("supports_chat", sa.Boolean, nullable=False),
        sa.Column("context_limit", sa.Integer, nullable=False),
        sa.Column("tensor_parallel_size", sa.Integer, nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model_name", "version"),
    )


def downgrade() -> None:
    op.drop_table("model_versions")
    op.drop_table("models")
    op.drop_table("pools")
