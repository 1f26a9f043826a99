"""Checkpoints with file checksums, versioned templates, rollouts with history.

Existing model versions keep their data: each gets a checkpoint row for its directory (file
checksums unknown until re-registered: such checkpoints have no file rows), a template version
for its prompt profile, and its model's stable version becomes the rollout's stable version.
Workers refuse to load a checkpoint without file rows unless started with
FLEET_ALLOW_UNRECORDED_CHECKPOINT=true; registering the directory again records them.

Revision ID: 0002
Revises: 0001
"""

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _template_sha(infill: bool, chat_format: str, chat_template: str) -> str:
    definition = {"infill": infill, "chat_format": chat_format, "chat_template": chat_template}
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("directory", sa.String(1024), nullable=False),
        sa.Column("source_repo", sa.String(256), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("quantization", sa.String(32), nullable=False),
        sa.Column("architecture", sa.String(128), nullable=False),
        sa.Column("vocab_size", sa.Integer, nullable=False),
        sa.Column("context_length", sa.Integer, nullable=False),
        sa.Column("tokenizer", sa.String(32), nullable=False),
        sa.Column("total_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "checkpoint_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("checkpoint_id", sa.Integer, sa.ForeignKey("checkpoints.id"), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.UniqueConstraint("checkpoint_id", "path"),
    )
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("infill", sa.Boolean, nullable=False),
        sa.Column("chat_format", sa.String(64), nullable=False),
        sa.Column("chat_template", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_table(
        "rollouts",
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("stable_version", sa.String(64), nullable=False),
        sa.Column("candidate_version", sa.String(64), nullable=True),
        sa.Column("candidate_weight", sa.Integer, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stable_version", sa.String(64), nullable=False),
        sa.Column("candidate_version", sa.String(64), nullable=True),
        sa.Column("candidate_weight", sa.Integer, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.UniqueConstraint("model_name", "revision"),
    )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("checkpoint_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("template_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("quantization", sa.String(32), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("created_by", sa.String(128), nullable=False,
                                   server_default="migration-0002"))

    bind = op.get_bind()
    now = datetime.now(UTC)
    checkpoints = sa.table("checkpoints", *(sa.column(c) for c in (
        "id", "name", "directory", "source_repo", "format", "dtype", "quantization",
        "architecture", "vocab_size", "context_length", "tokenizer", "total_bytes",
        "created_at", "created_by")))
    templates = sa.table("templates", *(sa.column(c) for c in (
        "id", "name", "version", "infill", "chat_format", "chat_template", "sha256",
        "created_at", "created_by")))
    versions = sa.table("model_versions", *(sa.column(c) for c in (
        "id", "model_name", "version", "checkpoint_dir", "chat_format", "supports_infill",
        "dtype", "context_limit", "checkpoint_id", "template_id")))
    template_ids: dict[tuple[bool, str], int] = {}
    for row in bind.execute(sa.select(versions)).mappings().all():
        key = (bool(row["supports_infill"]), row["chat_format"] or "")
        if key not in template_ids:
            name = f"migrated-{key[1] or 'completion'}{'-infill' if key[0] else ''}"
            bind.execute(templates.insert().values(
                name=name, version=1, infill=key[0], chat_format=key[1], chat_template="",
                sha256=_template_sha(key[0], key[1], ""), created_at=now,
                created_by="migration-0002"))
            template_ids[key] = bind.execute(sa.select(templates.c.id).where(
                templates.c.name == name, templates.c.version == 1)).scalar_one()
        checkpoint_name = f"{row['model_name']}-{row['version']}"
        bind.execute(checkpoints.insert().values(
            name=checkpoint_name, directory=row["checkpoint_dir"], source_repo="",
            format="safetensors", dtype=row["dtype"], quantization="", architecture="",
            vocab_size=0, context_length=row["context_limit"], tokenizer="", total_bytes=0,
            created_at=now, created_by="migration-0002"))
        checkpoint_id = bind.execute(sa.select(checkpoints.c.id).where(
            checkpoints.c.name == checkpoint_name)).scalar_one()
        bind.execute(versions.update().where(versions.c.id == row["id"]).values(
            checkpoint_id=checkpoint_id, template_id=template_ids[key]))

    models = sa.table("models", sa.column("name"), sa.column("stable_version"))
    rollouts = sa.table("rollouts", *(sa.column(c) for c in (
        "model_name", "stable_version", "candidate_version", "candidate_weight", "paused",
        "revision", "updated_at")))
    events = sa.table("rollout_events", *(sa.column(c) for c in (
        "model_name", "revision", "action", "actor", "reason", "at", "stable_version",
        "candidate_version", "candidate_weight", "paused")))
    for model in bind.execute(sa.select(models)).mappings().all():
        if model["stable_version"] is None:
            continue
        bind.execute(rollouts.insert().values(
            model_name=model["name"], stable_version=model["stable_version"],
            candidate_version=None, candidate_weight=0, paused=False, revision=1,
            updated_at=now))
        bind.execute(events.insert().values(
            model_name=model["name"], revision=1, action="create", actor="migration-0002",
            reason="rollout created from the model's stable version", at=now,
            stable_version=model["stable_version"], candidate_version=None,
            candidate_weight=0, paused=False))

    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("checkpoint_id", existing_type=sa.Integer, nullable=False)
        batch.alter_column("template_id", existing_type=sa.Integer, nullable=False)
        batch.create_foreign_key("fk_model_versions_checkpoint", "checkpoints",
                                 ["checkpoint_id"], ["id"])
        batch.create_foreign_key("fk_model_versions_template", "templates",
                                 ["template_id"], ["id"])
        batch.drop_column("checkpoint_dir")
        batch.drop_column("chat_format")
        batch.drop_column("supports_infill")
        batch.drop_column("supports_chat")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("stable_version")


def downgrade() -> None:
    raise NotImplementedError("0002 is not reversible: restore the database from a backup")
