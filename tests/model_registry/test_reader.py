"""Both RegistryReaders, the database one and the RegistryService one, on SQLite and PostgreSQL:
the same registered data reads the same, errors included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_cli.processes import free_port
from fleet_common.errors import NotFound
from model_registry.reader import (
    RegistryReader,
    RegistryUnavailable,
    StoreRegistryReader,
    open_registry_reader,
)
from model_registry.registration import register_checkpoint_dir, register_model
from model_registry.remote import GrpcRegistryReader
from model_registry.rollouts import Change, RolloutStore
from model_registry.store import NewModelVersion, RegistryStore
from tests.support.registry_service import InProcessRegistry

CUSTOM_CHAT = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"


def _register(store: RegistryStore, checkpoints: dict[str, Path]) -> None:
    """A paused canary, a custom hf-template on another pool, and a version outside rollouts."""
    for version in ("v1", "v2", "v3"):
        register_model(store, model="chat", version=version,
                       checkpoint_dir=checkpoints["infill"], variant="codellama-7b-instruct",
                       context_limit=2048)
    rollouts = RolloutStore(store)
    rollouts.start_canary(Change("chat", "alice", "try v2"), "v2", 25)
    rollouts.pause(Change("chat", "alice", "looking"), True)
    register_checkpoint_dir(store, "plain-ck", checkpoints["plain"])
    store.create_template_version("custom", infill=False, chat_format="hf-template",
                                  chat_template=CUSTOM_CHAT)
    store.create_model_version(NewModelVersion(
        model="big", version="v1", checkpoint="plain-ck", template_name="custom", pool="34b",
        max_model_len=1024, dtype="bfloat16", quantization="fp8"))


@pytest.fixture
def readers(store: RegistryStore, database_url: str, tiny_checkpoints: dict[str, Path],
            tmp_path: Path) -> Iterator[tuple[RegistryReader, RegistryReader]]:
    _register(store, tiny_checkpoints)
    with InProcessRegistry(database_url, tmp_path).start() as registry:
        remote = open_registry_reader(registry.url)
        try:
            yield StoreRegistryReader(store), remote
        finally:
            remote.close()


def test_both_readers_read_the_same_snapshot_versions_and_checkpoints(
        readers: tuple[RegistryReader, RegistryReader]) -> None:
    local, remote = readers
    assert isinstance(remote, GrpcRegistryReader)
    snapshot = remote.served_rollouts()
    assert snapshot == local.served_rollouts()
    big, chat = snapshot
    assert (chat.state.candidate_version, chat.state.candidate_weight, chat.state.paused,
            chat.state.revision) == ("v2", 25, True, 3)
    assert chat.candidate is not None and chat.candidate.version == "v2"
    assert (chat.stable.chat_format, chat.stable.supports_infill) == ("llama2", True)
    assert big.candidate is None
    assert (big.stable.pool, big.stable.queue, big.stable.tensor_parallel_size,
            big.stable.context_limit, big.stable.dtype, big.stable.quantization) == (
        "34b", "fleet.34b.big.v1", 2, 1024, "bfloat16", "fp8")
    assert (big.stable.chat_format, big.stable.chat_template, big.stable.supports_infill,
            big.stable.template) == ("hf-template", CUSTOM_CHAT, False, "custom@1")
    assert big.stable.checkpoint_dir and big.stable.created_at is not None

    for model, version in (("chat", None), ("chat", "v3"), ("big", None), ("big", "v1")):
        assert remote.get_version(model, version) == local.get_version(model, version)
    assert remote.get_version("chat").version == "v1"

    for name in {chat.stable.checkpoint, big.stable.checkpoint}:
        checkpoint = remote.get_checkpoint(name)
        assert checkpoint == local.get_checkpoint(name)
        assert checkpoint.files and all(len(f.sha256) == 64 for f in checkpoint.files)


def test_unknown_names_are_not_found_with_the_same_message(
        readers: tuple[RegistryReader, RegistryReader]) -> None:
    cases = [(lambda r: r.get_version("ghost"), "model 'ghost' is not registered"),
             (lambda r: r.get_version("chat", "v9"), "model 'chat' has no version 'v9'"),
             (lambda r: r.get_checkpoint("ghost"), "checkpoint 'ghost' is not registered")]
    for lookup, needle in cases:
        messages = []
        for reader in readers:
            with pytest.raises(NotFound) as caught:
                lookup(reader)
            messages.append(str(caught.value))
        assert messages[0] == messages[1] and needle in messages[0], messages


def test_an_unreachable_registry_is_unavailable_for_both_readers() -> None:
    remote = GrpcRegistryReader.from_url(f"grpc://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(RegistryUnavailable, match="GetServingSnapshot failed with UNAVAILABLE"):
        remote.served_rollouts()
    remote.close()
    local = open_registry_reader(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    assert isinstance(local, StoreRegistryReader)
    with pytest.raises(RegistryUnavailable, match="registry database unreachable"):
        local.served_rollouts()
    local.close()


def test_grpcs_speaks_tls(store: RegistryStore, database_url: str, tmp_path: Path) -> None:
    """A plaintext registry refuses a grpcs:// reader, so the reader did try TLS."""
    with InProcessRegistry(database_url, tmp_path).start() as registry:
        assert open_registry_reader(registry.url).served_rollouts() == []
        secure = open_registry_reader(f"grpcs://127.0.0.1:{registry.port}")
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="UNAVAILABLE"):
            secure.served_rollouts()
        assert time.monotonic() - started < 10
        secure.close()


@pytest.mark.parametrize("url", ["grpc://registry", "grpc://registry:port", "grpc://:50061",
                                 "grpc://user:secret@registry:50061", "grpc://registry:50061/x",
                                 "grpc://registry:50061?tls=1"])
def test_malformed_grpc_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="expected grpc://host:port"):
        open_registry_reader(url)
