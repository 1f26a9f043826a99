"""Usage accounting: per tenant, model version and UTC day, requests and tokens
(`usage_daily`) and refusals by reason (`usage_refusals`), and the gateway batches applied
(`usage_batches`), so a batch delivered twice counts once.

No data moves. Counting starts when the gateways and the registry run this version.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _key() -> list[sa.Column]:
    return [sa.Column("tenant", sa.String(256), primary_key=True),
            sa.Column("day", sa.Date, primary_key=True),
            sa.Column("model", sa.String(128), primary_key=True),
            sa.Column("model_version", sa.String(64), primary_key=True)]


def upgrade() -> None:
    op.create_table(
        "usage_daily", *_key(),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "usage_refusals", *_key(),
        sa.Column("reason", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "usage_batches",
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_usage_batches_applied_at", "usage_batches", ["applied_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_batches_applied_at", "usage_batches")
    op.drop_table("usage_batches")
    op.drop_table("usage_refusals")
    op.drop_table("usage_daily")
