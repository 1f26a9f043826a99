"""Each tenant's policy: quotas (0 = no limit), fair-share weight, priority ceiling.

Existing tenants get no limits, weight 1 and ceiling "high": what they had before.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_LIMITS = ("max_concurrent", "requests_per_minute", "tokens_per_minute", "max_queued_job_items")


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        for name in _LIMITS:
            batch.add_column(sa.Column(name, sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("weight", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("max_priority", sa.String(16), nullable=False,
                                   server_default="high"))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        for name in ("max_priority", "weight", *reversed(_LIMITS)):
            batch.drop_column(name)
