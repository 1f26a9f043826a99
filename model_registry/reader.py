"""What gateways and workers read from the registry, and the factory that picks how they read it.

`FLEET_REGISTRY_URL` decides: `grpc://host:port` (or `grpcs://`) reads through the registry's
RegistryService, so the pod needs no database credentials, only an API key of any scope
(FLEET_REGISTRY_API_KEY; gateways and workers use an `inference` key); any other URL is an
SQLAlchemy URL read directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from fleet_common.errors import Unavailable
from model_registry.records import AuthSnapshot, CheckpointRecord, ServedModel, ServedRollout

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from model_registry.store import RegistryStore

GRPC_SCHEMES = ("grpc", "grpcs")


class RegistryUnavailable(Unavailable):
    """The registry (its service or its database) cannot be reached right now."""


class RegistryReader(Protocol):
    """The registry's read side as serving needs it. Errors: `NotFound` for an unknown name,
    `RegistryUnavailable` when the registry cannot be reached, `Unauthenticated` or
    `PermissionDenied` when the registry service refuses the reader's API key."""

    def served_rollouts(self) -> list[ServedRollout]:
        """Every model's rollout with its stable and candidate versions resolved."""
        ...

    def get_version(self, model: str, version: str | None = None) -> ServedModel:
        """One version of `model`, or its stable version when `version` is None."""
        ...

    def get_checkpoint(self, name: str) -> CheckpointRecord:
        """One checkpoint with every file's size and sha256."""
        ...

    def auth_snapshot(self) -> AuthSnapshot:
        """Every usable API key (as its sha256), and whether gateways require one."""
        ...

    def close(self) -> None:
        """Releases connections; the reader is not used afterwards."""
        ...


class StoreRegistryReader:
    """Reads the registry database directly (the registry itself, tools, single-host fleets).
    `close` disposes `engine` when one is given."""

    def __init__(self, store: RegistryStore, engine: Engine | None = None) -> None:
        self._store = store
        self._engine = engine

    def served_rollouts(self) -> list[ServedRollout]:
        with _database_errors():
            return self._store.served_rollouts()

    def get_version(self, model: str, version: str | None = None) -> ServedModel:
        with _database_errors():
            return self._store.get_version(model, version)

    def get_checkpoint(self, name: str) -> CheckpointRecord:
        with _database_errors():
            return self._store.get_checkpoint(name)

    def auth_snapshot(self) -> AuthSnapshot:
        from model_registry.tenants import TenantStore

        with _database_errors():
            return TenantStore(self._store).auth_snapshot()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


@contextmanager
def _database_errors() -> Iterator[None]:
    """Turns "the database cannot be reached" into RegistryUnavailable; other errors pass."""
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        raise RegistryUnavailable(f"registry database unreachable: {exc.orig}") from exc


def is_grpc_url(url: str) -> bool:
    return url.partition("://")[0].lower() in GRPC_SCHEMES


def open_registry_reader(url: str, api_key: str = "") -> RegistryReader:
    """A reader for `url`: the RegistryService for grpc:// and grpcs://, sending `api_key`;
    else the database, whose credentials are in the URL (`api_key` is not used)."""
    if is_grpc_url(url):
        from model_registry.remote import GrpcRegistryReader

        return GrpcRegistryReader.from_url(url, api_key=api_key)
    from model_registry.database import open_engine
    from model_registry.store import RegistryStore

    engine = open_engine(url)
    return StoreRegistryReader(RegistryStore(engine), engine)
