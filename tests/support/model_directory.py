"""A gateway's ModelDirectory over a fresh SQLite registry with tiny checkpoints registered, for
tests that run the real servicers in-process."""

from __future__ import annotations

from pathlib import Path

from gateway.model_directory import ModelDirectory
from model_registry.database import migrate, open_engine
from model_registry.reader import StoreRegistryReader
from model_registry.registration import register_model
from model_registry.store import RegistryStore


def tiny_model_directory(directory: Path, checkpoints: dict[str, Path],
                         models: list[tuple[str, str, str]], context_limit: int = 2048
                         ) -> ModelDirectory:
    """`models`: (model name, checkpoint layout, catalog variant), each registered as v1."""
    engine = open_engine(f"sqlite:///{directory / 'registry.db'}")
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    for model, layout, variant in models:
        register_model(store, model=model, version="v1", checkpoint_dir=checkpoints[layout],
                       variant=variant, context_limit=context_limit, dtype="float32")
    served = ModelDirectory(StoreRegistryReader(store, engine), refresh_s=3600)
    served.load()
    return served
