"""A database at the first schema, populated, upgrades in place and keeps serving its models."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from model_registry.database import migrate
from model_registry.rollouts import RolloutStore
from model_registry.store import RegistryStore


def _populate_first_schema(engine: Engine, checkpoint_dir: Path) -> None:
    now = datetime.now(UTC)
    with engine.begin() as db:
        db.execute(text("INSERT INTO pools (name, tensor_parallel_size, description) VALUES "
                        "('7b', 1, 'one GPU'), ('34b', 2, 'two GPUs')"))
        db.execute(text("INSERT INTO models (name, stable_version, created_at) VALUES "
                        "('chatty', 'v2', :now), ('plain', 'v1', :now)"), {"now": now})
        rows = [("chatty", "v1", "7b", "llama2", True, True, 4096, 1),
                ("chatty", "v2", "7b", "llama2", True, True, 8192, 1),
                ("plain", "v1", "34b", "", False, False, 16384, 2)]
        for model, version, pool, chat, infill, chat_ok, context, tp in rows:
            db.execute(text(
                "INSERT INTO model_versions (model_name, version, pool_name, checkpoint_dir, "
                "chat_format, supports_infill, supports_chat, context_limit, "
                "tensor_parallel_size, dtype, created_at) VALUES (:m, :v, :p, :d, :c, :i, :ch, "
                ":ctx, :tp, 'float32', :now)"),
                {"m": model, "v": version, "p": pool, "d": str(checkpoint_dir), "c": chat,
                 "i": infill, "ch": chat_ok, "ctx": context, "tp": tp, "now": now})


def test_first_schema_with_data_upgrades_in_place(engine: Engine,
                                                  tiny_checkpoints: dict[str, Path]) -> None:
    migrate(engine, "0001")
    assert "checkpoints" not in inspect(engine).get_table_names()
    _populate_first_schema(engine, tiny_checkpoints["infill"])

    migrate(engine)
    store = RegistryStore(engine)

    chatty = store.get_version("chatty")
    assert (chatty.version, chatty.pool, chatty.context_limit) == ("v2", "7b", 8192)
    assert chatty.checkpoint_dir == str(tiny_checkpoints["infill"])
    assert chatty.supports_infill and chatty.chat_format == "llama2"
    assert chatty.modes == ("completion", "infill", "chat")
    assert store.get_version("chatty", "v1").context_limit == 4096
    plain = store.get_version("plain")
    assert plain.modes == ("completion",) and plain.tensor_parallel_size == 2
    assert plain.template != chatty.template
    assert store.get_checkpoint(chatty.checkpoint).files == ()  # checksums unknown until
    rollouts = RolloutStore(store)                                # re-registered
    assert rollouts.get("chatty").stable_version == "v2"
    assert [e.action for e in rollouts.events("plain")] == ["create"]
    columns = {c["name"] for c in inspect(engine).get_columns("model_versions")}
    assert "checkpoint_dir" not in columns and {"checkpoint_id", "template_id"} <= columns

    migrate(engine)  # idempotent
    assert store.get_version("chatty").version == "v2"
