"""Batch jobs: `jobs` and their `job_items` (each item's request, lease and one result), the
webhook outbox `job_webhook_events`, written in the same transaction as a job's end, and each
tenant's webhook signing secret (`tenant_webhook_secrets`).

No data moves: the tables start empty.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _job_reference() -> sa.Column:
    return sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                     nullable=False)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(256), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("webhook_url", sa.String(2048), nullable=False),
        sa.Column("trace_parent", sa.String(128), nullable=False),
        sa.Column("total_items", sa.Integer, nullable=False),
    )
    op.create_index("ix_jobs_tenant", "jobs", ["tenant"])
    op.create_index("ix_jobs_state_created_at", "jobs", ["state", "created_at"])
    op.create_table(
        "job_items",
        _job_reference(),
        sa.Column("item_index", sa.Integer, nullable=False),
        sa.Column("custom_id", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("request", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.LargeBinary, nullable=True),
        sa.Column("error_code", sa.Integer, nullable=True),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "item_index"),
        sa.UniqueConstraint("job_id", "custom_id", name="uq_job_items_job_id_custom_id"),
    )
    op.create_index("ix_job_items_job_id_state", "job_items", ["job_id", "state"])
    op.create_table(
        "job_webhook_events",
        sa.Column("webhook_id", sa.String(64), primary_key=True),
        _job_reference(),
        sa.Column("tenant", sa.String(256), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=False),
    )
    op.create_index("ix_job_webhook_events_job_id", "job_webhook_events", ["job_id"])
    op.create_index("ix_job_webhook_events_state_next_attempt_at", "job_webhook_events",
                    ["state", "next_attempt_at"])
    op.create_table(
        "tenant_webhook_secrets",
        sa.Column("tenant", sa.String(256), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tenant_webhook_secrets")
    op.drop_index("ix_job_webhook_events_state_next_attempt_at", "job_webhook_events")
    op.drop_index("ix_job_webhook_events_job_id", "job_webhook_events")
    op.drop_table("job_webhook_events")
    op.drop_index("ix_job_items_job_id_state", "job_items")
    op.drop_table("job_items")
    op.drop_index("ix_jobs_state_created_at", "jobs")
    op.drop_index("ix_jobs_tenant", "jobs")
    op.drop_table("jobs")
