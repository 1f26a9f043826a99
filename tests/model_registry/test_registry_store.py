"""Registry behaviour on both databases: checkpoints, templates, versions, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleet_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfBounds,
)
from model_registry.registration import register_checkpoint_dir, register_model
from model_registry.schema import Checkpoint, Model, ModelVersion, Rollout, Template
from model_registry.store import NewModelVersion, RegistryStore
from model_registry.template_fit import check_template_fits


def _count(store: RegistryStore, table: type) -> int:
    with store.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(table)))


def test_checkpoint_records_every_file_with_size_and_sha256(
        store: RegistryStore, tiny_checkpoints: dict[str, Path]) -> None:
    import hashlib

    record = register_checkpoint_dir(store, "tiny-infill", tiny_checkpoints["infill"],
                                     actor="ops")
    fetched = store.get_checkpoint("tiny-infill")
    assert fetched == record
    by_path = {f.path: f for f in fetched.files}
    weights = tiny_checkpoints["infill"] / "model.safetensors"
    assert by_path["model.safetensors"].size_bytes == weights.stat().st_size
    assert by_path["model.safetensors"].sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert {"config.json", "tokenizer.model", "tokenizer.json"} <= set(by_path)
    assert fetched.architecture == "LlamaForCausalLM" and fetched.vocab_size == 32016
    assert fetched.tokenizer == "sentencepiece" and fetched.dtype == "float32"
    assert fetched.total_bytes == sum(f.size_bytes for f in fetched.files)
    with pytest.raises(AlreadyExists):
        register_checkpoint_dir(store, "tiny-infill", tiny_checkpoints["infill"])


def test_templates_are_immutable_versions(store: RegistryStore) -> None:
    first = store.create_template_version("chatml", infill=False, chat_format="hf-template",
                                          chat_template="{{ messages }}")
    same = store.create_template_version("chatml", infill=False, chat_format="hf-template",
                                         chat_template="{{ messages }}")
    changed = store.create_template_version("chatml", infill=False, chat_format="hf-template",
                                            chat_template="{{ messages | length }}")
    assert (first.version, same.version, changed.version) == (1, 1, 2)
    assert store.get_template("chatml").version == 2
    assert store.get_template("chatml", 1).chat_template == "{{ messages }}"
    with pytest.raises(InvalidArgument, match="chat_format"):
        store.create_template_version("x", infill=False, chat_format="alpaca")


def test_first_version_becomes_stable_and_routes_by_queue(
        store: RegistryStore, tiny_checkpoints: dict[str, Path]) -> None:
    served = register_model(store, model="tiny-7b", version="v1",
                            checkpoint_dir=tiny_checkpoints["infill"],
                            variant="codellama-7b-instruct", context_limit=2048)
    assert served.queue == "fleet.7b.tiny-7b.v1"
    assert served.modes == ("completion", "infill", "chat") and served.chat_format == "llama2"
    assert store.get_version("tiny-7b") == served
    [rollout] = store.served_rollouts()
    assert rollout.state.stable_version == "v1" and rollout.candidate is None


def test_tensor_parallel_size_comes_from_the_pool_unless_the_operator_sets_one(
        store: RegistryStore, tiny_checkpoints: dict[str, Path]) -> None:
    store.set_pool("34b", tensor_parallel_size=8, description="eight GPUs per worker")
    from_pool = register_model(store, model="big", version="v1",
                               checkpoint_dir=tiny_checkpoints["plain"], variant="codellama-34b",
                               context_limit=2048)
    pinned = register_model(store, model="big", version="v2",
                            checkpoint_dir=tiny_checkpoints["plain"], variant="codellama-34b",
                            context_limit=2048, tensor_parallel_size=2)
    assert (from_pool.pool, from_pool.tensor_parallel_size) == ("34b", 8)
    assert (pinned.pool, pinned.tensor_parallel_size) == ("34b", 2)


def test_register_model_refused_leaves_no_checkpoint_or_template(
        store: RegistryStore, tiny_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(NotFound, match="pool '13b' does not exist"):
        register_model(store, model="m", version="v1", checkpoint_dir=tiny_checkpoints["infill"],
                       variant="codellama-7b", pool="13b", context_limit=2048)
    with pytest.raises(FailedPrecondition):  # the 34B tokenizer has no infill pieces
        register_model(store, model="m", version="v1", checkpoint_dir=tiny_checkpoints["plain"],
                       variant="codellama-7b", context_limit=2048)
    assert _count(store, Checkpoint) == 0 and _count(store, Template) == 0
    assert _count(store, ModelVersion) == 0
    # The same call with a pool that exists registers all three, and again is a no-op.
    first = register_model(store, model="m", version="v1",
                           checkpoint_dir=tiny_checkpoints["infill"], variant="codellama-7b",
                           context_limit=2048)
    again = register_model(store, model="m", version="v1",
                           checkpoint_dir=tiny_checkpoints["infill"], variant="codellama-7b",
                           context_limit=2048)
    assert first == again and _count(store, Checkpoint) == 1 and _count(store, Template) == 1


BAD_VERSIONS = [
    ("unknown checkpoint", {"checkpoint": "nope"}, NotFound, "checkpoint 'nope'"),
    ("unknown template", {"template_name": "nope"}, NotFound, "template 'nope'"),
    ("unknown pool", {"pool": "13b"}, NotFound, "pool '13b'"),
    ("bad name", {"version": "V 1"}, InvalidArgument, "version:"),
    ("too long", {"max_model_len": 99_999}, OutOfBounds,
     "engine.max_model_len: must be at most the checkpoint's 16384, got 99999"),
    # Meta's 4,096 positions for 70B Python and Instruct (codellama issue 188), though the
    # checkpoint's config says 16,384: by the variant named, or named like the model.
    ("beyond the variant", {"variant": "codellama-70b-python", "max_model_len": 4097},
     OutOfBounds, "must be at most 4096 for codellama-70b-python, got 4097"),
    ("beyond the model's variant", {"model": "codellama-70b-instruct"}, OutOfBounds,
     "must be at most 4096 for codellama-70b-instruct, got 16384"),
    ("unknown variant", {"variant": "codellama-8b"}, NotFound, "unknown Code Llama variant"),
]


@pytest.mark.parametrize(("case", "override", "error", "needle"), BAD_VERSIONS,
                         ids=[c[0] for c in BAD_VERSIONS])
def test_bad_model_version_writes_nothing(store: RegistryStore, tiny_checkpoints: dict[str, Path],
                                          case: str, override: dict, error: type,
                                          needle: str) -> None:
    register_checkpoint_dir(store, "ck", tiny_checkpoints["infill"])
    store.create_template_version("t", infill=True, chat_format="llama2")
    fields = {"model": "m", "version": "v1", "checkpoint": "ck", "template_name": "t",
              "pool": "7b"}
    fields.update(override)
    with pytest.raises(error, match=needle):
        store.create_model_version(NewModelVersion(**fields), fits=check_template_fits)
    assert _count(store, Model) == 0 and _count(store, ModelVersion) == 0
    assert _count(store, Rollout) == 0


def test_the_catalog_bounds_max_model_len_of_every_way_to_register(
        store: RegistryStore, tiny_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(OutOfBounds, match="at most 4096 for codellama-70b-instruct, got 8192"):
        register_model(store, model="big", version="v1", checkpoint_dir=tiny_checkpoints["70b"],
                       variant="codellama-70b-instruct", context_limit=8192)
    assert _count(store, Checkpoint) == 0 and _count(store, ModelVersion) == 0
    served = register_model(store, model="big", version="v1",
                            checkpoint_dir=tiny_checkpoints["70b"],
                            variant="codellama-70b-instruct", context_limit=4096)
    assert served.context_limit == 4096
    # A checkpoint downloaded from the variant's published repository names the variant.
    register_checkpoint_dir(store, "hub", tiny_checkpoints["70b"],
                            source_repo="codellama/CodeLlama-70b-Instruct-hf")
    new = NewModelVersion(model="m", version="v1", checkpoint="hub",
                          template_name=served.template.partition("@")[0], pool="70b",
                          max_model_len=4097)
    with pytest.raises(OutOfBounds, match="at most 4096 for codellama-70b-instruct"):
        store.create_model_version(new, fits=check_template_fits)
    # Where the variant allows more, the checkpoint's own limit still binds.
    with pytest.raises(OutOfBounds, match="at most the checkpoint's 16384, got 16385"):
        register_model(store, model="small", version="v1",
                       checkpoint_dir=tiny_checkpoints["infill"], variant="codellama-7b",
                       context_limit=16_385)


def test_duplicate_version_is_already_exists_and_leaves_the_first(
        store: RegistryStore, tiny_checkpoints: dict[str, Path]) -> None:
    register_checkpoint_dir(store, "ck", tiny_checkpoints["infill"])
    store.create_template_version("t", infill=True, chat_format="llama2")
    new = NewModelVersion(model="m", version="v1", checkpoint="ck", template_name="t", pool="7b")
    store.create_model_version(new)
    with pytest.raises(AlreadyExists, match="already has a version 'v1'"):
        store.create_model_version(new)
    assert _count(store, ModelVersion) == 1


@pytest.mark.parametrize(("layout", "infill", "chat_format", "missing"), [
    ("plain", True, "", "▁<PRE>"),
    ("infill", False, "codellama-70b", "<step>"),
])
def test_template_that_does_not_fit_the_tokenizer_is_refused(
        store: RegistryStore, tiny_checkpoints: dict[str, Path], layout: str, infill: bool,
        chat_format: str, missing: str) -> None:
    register_checkpoint_dir(store, "ck", tiny_checkpoints[layout])
    store.create_template_version("t", infill=infill, chat_format=chat_format)
    with pytest.raises(FailedPrecondition, match=missing):
        store.create_model_version(NewModelVersion(model="m", version="v1", checkpoint="ck",
                                                   template_name="t", pool="7b"),
                                   fits=check_template_fits)
    assert _count(store, Model) == 0


def test_hf_template_needs_a_template_that_renders(store: RegistryStore,
                                                   tiny_checkpoints: dict[str, Path]) -> None:
    register_checkpoint_dir(store, "ck", tiny_checkpoints["infill"])
    store.create_template_version("broken", infill=False, chat_format="hf-template",
                                  chat_template="{% for m in messages %}{{ m.content ")
    with pytest.raises(FailedPrecondition, match="does not render|has none"):
        store.create_model_version(NewModelVersion(model="m", version="v1", checkpoint="ck",
                                                   template_name="broken", pool="7b"),
                                   fits=check_template_fits)


def test_checkpoint_directory_without_weights_is_refused(store: RegistryStore,
                                                         tiny_checkpoints: dict[str, Path],
                                                         tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(tiny_checkpoints["infill"], partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(InvalidArgument, match="safetensors"):
        register_checkpoint_dir(store, "partial", partial)
    assert _count(store, Checkpoint) == 0
