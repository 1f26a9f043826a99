"""Operator workflows over the store: register a checkpoint directory (hashing every file),
and the one-call path from a directory to a served model version with catalog defaults."""

from __future__ import annotations

from pathlib import Path

from fleet_common.errors import AlreadyExists, NotFound
from model_registry.checkpoints import inspect_checkpoint
from model_registry.records import CheckpointRecord, FileRecord, ServedModel
from model_registry.store import NewCheckpoint, NewModelVersion, RegistryStore
from model_registry.template_fit import check_template_fits
from prompting.catalog import CodeLlamaVariant, catalog_entry
from prompting.tokenizer_files import read_chat_template


def register_checkpoint_dir(store: RegistryStore, name: str, directory: Path, *,
                            source_repo: str = "", actor: str = "",
                            progress: bool = False) -> CheckpointRecord:
    return store.add_checkpoint(_new_checkpoint(name, directory, source_repo, progress),
                                actor=actor)


def _new_checkpoint(name: str, directory: Path, source_repo: str = "",
                    progress: bool = False) -> NewCheckpoint:
    """Reads and hashes every file: slow for big checkpoints, so done outside transactions."""
    info = inspect_checkpoint(directory, progress=progress)
    return NewCheckpoint(
        name=name, directory=str(Path(info.directory).resolve()),
        files=tuple(FileRecord(f.path, f.size_bytes, f.sha256) for f in info.files),
        format=info.format, dtype=info.dtype, quantization=info.quantization,
        architecture=info.architecture, vocab_size=info.vocab_size,
        context_length=info.context_length, tokenizer=info.tokenizer, source_repo=source_repo)


def _existing_checkpoint(store: RegistryStore, name: str) -> CheckpointRecord | None:
    try:
        return store.get_checkpoint(name)
    except NotFound:
        return None


def _variant(name: str | None) -> CodeLlamaVariant | None:
    if name is None:
        return None
    try:
        return catalog_entry(name)
    except NotFound:
        return None


def register_model(
    store: RegistryStore,
    *,
    model: str,
    version: str,
    checkpoint_dir: Path,
    variant: str | None = None,
    pool: str | None = None,
    chat_format: str | None = None,
    supports_infill: bool | None = None,
    context_limit: int | None = None,
    tensor_parallel_size: int | None = None,
    dtype: str = "auto",
    actor: str = "operator",
    progress: bool = False,
) -> ServedModel:
    """Checkpoint + template + version in one go. A Code Llama variant (named, or the model
    name itself) supplies modes, chat format, pool and context, the pool its tensor parallel
    size; arguments override."""
    entry = _variant(variant) or _variant(model)
    if variant is not None and entry is None:
        catalog_entry(variant)  # raises NotFound naming the known variants
    checkpoint_name = f"{model}-{version}"
    existing = _existing_checkpoint(store, checkpoint_name)
    hashed = None if existing else _new_checkpoint(checkpoint_name, checkpoint_dir,
                                                   progress=progress)
    # Checkpoint, template and version in one transaction: a refused version (unknown pool,
    # template that does not fit, ...) leaves no checkpoint or template behind.
    try:
        with store.transaction():
            try:
                return store.get_version(model, version)
            except NotFound:
                pass
            checkpoint = existing or store.add_checkpoint(hashed, actor=actor)
            return _add_version(store, entry, checkpoint, model=model, version=version,
                                pool=pool, chat_format=chat_format,
                                supports_infill=supports_infill, context_limit=context_limit,
                                tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                                actor=actor)
    except AlreadyExists:
        # Someone registered the same checkpoint or version meanwhile; ours rolled back.
        return store.get_version(model, version)


def _add_version(store: RegistryStore, entry: CodeLlamaVariant | None,
                 checkpoint: CheckpointRecord, *, model: str, version: str, pool: str | None,
                 chat_format: str | None, supports_infill: bool | None,
                 context_limit: int | None, tensor_parallel_size: int | None, dtype: str,
                 actor: str) -> ServedModel:
    if entry is not None:
        default_chat = entry.chat_format.value if entry.chat_format else ""
        default_infill, default_pool = entry.supports_infill, entry.pool
        default_context = min(checkpoint.context_length, entry.context_length)
    else:
        has_template = read_chat_template(Path(checkpoint.directory)) is not None
        default_chat = "hf-template" if has_template else ""
        default_infill, default_pool = False, "7b"
        default_context = checkpoint.context_length
    chosen_chat = default_chat if chat_format is None else chat_format
    infill = default_infill if supports_infill is None else supports_infill
    template_name = (f"{'codellama' if entry else 'generic'}-{chosen_chat or 'completion'}"
                     f"{'-infill' if infill else ''}")
    template = store.create_template_version(template_name, infill=infill,
                                             chat_format=chosen_chat, actor=actor)
    return store.create_model_version(NewModelVersion(
        model=model, version=version, checkpoint=checkpoint.name,
        template_name=template.name, template_version=template.version,
        pool=pool or default_pool,
        # 0 leaves it to the pool, so an operator sizes a pool's workers in one place.
        tensor_parallel_size=tensor_parallel_size or 0,
        max_model_len=context_limit or default_context, dtype=dtype,
        variant=entry.name if entry else ""), actor=actor,
        fits=check_template_fits)
