"""Registry reads and writes: pools, checkpoints, templates, model versions. One transaction
per public method (or per `transaction()` block around several), so a failed call writes
nothing."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from fleet_common.errors import AlreadyExists, InvalidArgument, NotFound, OutOfBounds
from model_registry.records import (
    CheckpointRecord,
    FileRecord,
    RolloutState,
    ServedModel,
    ServedRollout,
    TemplateRecord,
)
from model_registry.schema import (
    Checkpoint,
    CheckpointFileRow,
    Model,
    ModelVersion,
    Pool,
    Rollout,
    RolloutEvent,
    Template,
)
from prompting.catalog import CATALOG, CodeLlamaVariant, catalog_entry

DEFAULT_POOLS: tuple[tuple[str, int, str], ...] = (
    ("7b", 1, "Code Llama 7B and 13B, one GPU per worker"),
    ("34b", 2, "Code Llama 34B fp16, two GPUs per worker"),
    ("70b", 4, "Code Llama 70B fp16, four GPUs per worker"),
)
CHAT_FORMATS = ("", "llama2", "codellama-70b", "hf-template")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(field: str, value: str) -> None:
    if not _NAME.match(value):
        raise InvalidArgument(field, f"must match {_NAME.pattern}, got {value!r}")


def template_sha256(infill: bool, chat_format: str, chat_template: str) -> str:
    definition = {"infill": infill, "chat_format": chat_format, "chat_template": chat_template}
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class NewCheckpoint:
    name: str
    directory: str
    files: tuple[FileRecord, ...]
    format: str = "safetensors"
    dtype: str = "auto"
    quantization: str = ""
    architecture: str = ""
    vocab_size: int = 0
    context_length: int = 0
    tokenizer: str = ""
    source_repo: str = ""


@dataclass(frozen=True)
class NewModelVersion:
    model: str
    version: str
    checkpoint: str
    template_name: str
    pool: str
    template_version: int = 0  # 0: the latest
    tensor_parallel_size: int = 0  # 0: the pool's
    max_model_len: int = 0  # 0: the checkpoint's context length
    dtype: str = "auto"
    quantization: str = ""
    # The Code Llama catalog variant whose limits apply; "": the one named like the model or
    # whose published weights the checkpoint was downloaded from, if any.
    variant: str = ""


def catalog_variant(new: NewModelVersion, source_repo: str) -> CodeLlamaVariant | None:
    if new.variant:
        return catalog_entry(new.variant)
    return next((v for v in CATALOG if v.name == new.model
                 or v.hf_repo.lower() == source_repo.lower()), None)


def served_model(row: ModelVersion) -> ServedModel:
    return ServedModel(
        model=row.model_name,
        version=row.version,
        pool=row.pool_name,
        checkpoint=row.checkpoint.name,
        checkpoint_dir=row.checkpoint.directory,
        template=f"{row.template.name}@{row.template.version}",
        chat_format=row.template.chat_format,
        chat_template=row.template.chat_template,
        supports_infill=row.template.infill,
        context_limit=row.context_limit,
        tensor_parallel_size=row.tensor_parallel_size,
        dtype=row.dtype,
        quantization=row.quantization,
        created_at=row.created_at,
    )


def checkpoint_record(row: Checkpoint, *, with_files: bool) -> CheckpointRecord:
    return CheckpointRecord(
        name=row.name, directory=row.directory, source_repo=row.source_repo, format=row.format,
        dtype=row.dtype, quantization=row.quantization, architecture=row.architecture,
        vocab_size=row.vocab_size, context_length=row.context_length, tokenizer=row.tokenizer,
        total_bytes=row.total_bytes, created_at=row.created_at,
        files=tuple(FileRecord(f.path, f.size_bytes, f.sha256) for f in row.files)
        if with_files else ())


def template_record(row: Template) -> TemplateRecord:
    return TemplateRecord(name=row.name, version=row.version, infill=row.infill,
                          chat_format=row.chat_format, chat_template=row.chat_template,
                          sha256=row.sha256, created_at=row.created_at)


def rollout_state(row: Rollout) -> RolloutState:
    return RolloutState(model=row.model_name, stable_version=row.stable_version,
                        candidate_version=row.candidate_version,
                        candidate_weight=row.candidate_weight, paused=row.paused,
                        revision=row.revision, updated_at=row.updated_at)


class RegistryStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._current: ContextVar[Session | None] = ContextVar(f"registry-{id(self)}",
                                                               default=None)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction; store calls made inside another `transaction` join it, so a
        workflow of several calls commits or rolls back as a whole."""
        outer = self._current.get()
        if outer is not None:
            yield outer
            return
        with self._sessions.begin() as session:
            token = self._current.set(session)
            try:
                yield session
            finally:
                self._current.reset(token)

    # Pools -------------------------------------------------------------------------------------

    def ensure_default_pools(self) -> None:
        with self.transaction() as session:
            for name, tp, description in DEFAULT_POOLS:
                if session.get(Pool, name) is None:
                    session.add(Pool(name=name, tensor_parallel_size=tp, description=description))

    def set_pool(self, name: str, tensor_parallel_size: int, description: str = "") -> None:
        check_name("pool", name)
        if tensor_parallel_size < 1:
            raise OutOfBounds("tensor_parallel_size", tensor_parallel_size, "at least 1")
        with self.transaction() as session:
            pool = session.get(Pool, name)
            if pool is None:
                session.add(Pool(name=name, tensor_parallel_size=tensor_parallel_size,
                                 description=description))
            else:
                pool.tensor_parallel_size = tensor_parallel_size
                pool.description = description or pool.description

    # Checkpoints -------------------------------------------------------------------------------

    def add_checkpoint(self, new: NewCheckpoint, actor: str = "") -> CheckpointRecord:
        check_name("name", new.name)
        if not new.files:
            raise InvalidArgument("files", f"checkpoint {new.name!r} has no files")
        try:
            with self.transaction() as session:
                row = Checkpoint(
                    name=new.name, directory=new.directory, source_repo=new.source_repo,
                    format=new.format, dtype=new.dtype, quantization=new.quantization,
                    architecture=new.architecture, vocab_size=new.vocab_size,
                    context_length=new.context_length, tokenizer=new.tokenizer,
                    total_bytes=sum(f.size_bytes for f in new.files), created_by=actor,
                    files=[CheckpointFileRow(path=f.path, size_bytes=f.size_bytes,
                                             sha256=f.sha256) for f in new.files])
                session.add(row)
                session.flush()
                return checkpoint_record(row, with_files=True)
        except IntegrityError as exc:
            raise AlreadyExists(f"checkpoint {new.name!r} is already registered") from exc

    def get_checkpoint(self, name: str) -> CheckpointRecord:
        with self.transaction() as session:
            row = session.scalars(select(Checkpoint).where(Checkpoint.name == name)
                                  .options(selectinload(Checkpoint.files))).first()
            if row is None:
                raise NotFound(f"checkpoint {name!r} is not registered")
            return checkpoint_record(row, with_files=True)

    def list_checkpoints(self) -> list[CheckpointRecord]:
        with self.transaction() as session:
            rows = session.scalars(select(Checkpoint).order_by(Checkpoint.name))
            return [checkpoint_record(row, with_files=False) for row in rows]

    # Templates ---------------------------------------------------------------------------------

    def create_template_version(self, name: str, *, infill: bool, chat_format: str,
                                chat_template: str = "", actor: str = "") -> TemplateRecord:
        """A new immutable version; an identical definition returns the version that has it."""
        check_name("name", name)
        if chat_format not in CHAT_FORMATS:
            raise InvalidArgument("chat_format", f"must be one of {', '.join(map(repr, CHAT_FORMATS))}"
                                                 f", got {chat_format!r}")
        if chat_template and chat_format != "hf-template":
            raise InvalidArgument("chat_template", "is only used with chat_format 'hf-template'")
        sha = template_sha256(infill, chat_format, chat_template)
        try:
            with self.transaction() as session:
                same = session.scalars(select(Template).where(
                    Template.name == name, Template.sha256 == sha)).first()
                if same is not None:
                    return template_record(same)
                latest = session.scalar(select(func.max(Template.version))
                                        .where(Template.name == name)) or 0
                row = Template(name=name, version=latest + 1, infill=infill,
                               chat_format=chat_format, chat_template=chat_template, sha256=sha,
                               created_by=actor)
                session.add(row)
                session.flush()
                return template_record(row)
        except IntegrityError as exc:
            raise AlreadyExists(f"template {name!r} got a new version concurrently; "
                                "retry") from exc

    def get_template(self, name: str, version: int = 0) -> TemplateRecord:
        with self.transaction() as session:
            return template_record(self._template_row(session, name, version))

    @staticmethod
    def _template_row(session: Session, name: str, version: int) -> Template:
        query = select(Template).where(Template.name == name)
        query = query.where(Template.version == version) if version else \
            query.order_by(Template.version.desc())
        row = session.scalars(query).first()
        if row is None:
            what = f"template {name!r}" + (f" version {version}" if version else "")
            raise NotFound(f"{what} does not exist")
        return row

    def list_templates(self, name: str = "") -> list[TemplateRecord]:
        with self.transaction() as session:
            query = select(Template).order_by(Template.name, Template.version)
            if name:
                query = query.where(Template.name == name)
            return [template_record(row) for row in session.scalars(query)]

    # Model versions ----------------------------------------------------------------------------

    def create_model_version(
        self, new: NewModelVersion, actor: str = "",
        fits: Callable[[CheckpointRecord, TemplateRecord], None] | None = None,
    ) -> ServedModel:
        """Adds a version; the first version of a model becomes its rollout's stable version.
        `fits` refuses a template that does not fit the checkpoint's tokenizer."""
        check_name("model", new.model)
        check_name("version", new.version)
        try:
            with self.transaction() as session:
                pool = session.get(Pool, new.pool)
                if pool is None:
                    known = ", ".join(sorted(session.scalars(select(Pool.name))))
                    raise NotFound(f"pool {new.pool!r} does not exist; pools: {known}")
                checkpoint = session.scalars(select(Checkpoint).where(
                    Checkpoint.name == new.checkpoint)).first()
                if checkpoint is None:
                    raise NotFound(f"checkpoint {new.checkpoint!r} is not registered")
                template = self._template_row(session, new.template_name, new.template_version)
                if fits is not None:
                    fits(checkpoint_record(checkpoint, with_files=False), template_record(template))
                context = new.max_model_len or checkpoint.context_length
                if context < 1:
                    raise InvalidArgument("engine.max_model_len", f"checkpoint "
                                          f"{checkpoint.name!r} records no context length; set it")
                bounds = [(checkpoint.context_length,
                           f"the checkpoint's {checkpoint.context_length}")]
                variant = catalog_variant(new, checkpoint.source_repo)
                if variant is not None:
                    bounds.append((variant.max_context_length,
                                   f"{variant.max_context_length} for {variant.name}"))
                limit, described = min((b for b in bounds if b[0]), default=(0, ""))
                if limit and context > limit:
                    raise OutOfBounds("engine.max_model_len", context, f"at most {described}")
                model = session.get(Model, new.model)
                first_version = model is None
                if first_version:
                    session.add(Model(name=new.model))
                row = ModelVersion(
                    model_name=new.model, version=new.version, pool_name=new.pool,
                    checkpoint=checkpoint, template=template, context_limit=context,
                    tensor_parallel_size=new.tensor_parallel_size or pool.tensor_parallel_size,
                    dtype=new.dtype or "auto", quantization=new.quantization, created_by=actor)
                session.add(row)
                session.flush()
                if first_version:
                    rollout = Rollout(model_name=new.model, stable_version=new.version,
                                      candidate_version=None, candidate_weight=0, paused=False,
                                      revision=1)
                    session.add(rollout)
                    session.flush()
                    session.add(RolloutEvent(
                        model_name=new.model, revision=1, action="create", actor=actor,
                        reason="first version", stable_version=new.version,
                        candidate_version=None, candidate_weight=0, paused=False))
                return served_model(row)
        except IntegrityError as exc:
            raise AlreadyExists(
                f"model {new.model!r} already has a version {new.version!r}") from exc

    def get_version(self, model: str, version: str | None = None) -> ServedModel:
        """A specific version, or the stable version of `model` when `version` is None."""
        with self.transaction() as session:
            if version is None:
                rollout = session.get(Rollout, model)
                if rollout is None:
                    known = ", ".join(sorted(session.scalars(select(Model.name)))) or "none"
                    raise NotFound(f"model {model!r} is not registered; registered models: "
                                   f"{known}")
                version = rollout.stable_version
            row = self._version_row(session, model, version)
            return served_model(row)

    @staticmethod
    def _version_row(session: Session, model: str, version: str) -> ModelVersion:
        row = session.scalars(select(ModelVersion).where(
            ModelVersion.model_name == model, ModelVersion.version == version)).first()
        if row is None:
            raise NotFound(f"model {model!r} has no version {version!r}")
        return row

    def list_versions(self, model: str = "") -> list[ServedModel]:
        with self.transaction() as session:
            query = select(ModelVersion).order_by(ModelVersion.model_name, ModelVersion.id)
            if model:
                query = query.where(ModelVersion.model_name == model)
            return [served_model(row) for row in session.scalars(query)]

    def served_rollouts(self) -> list[ServedRollout]:
        """Every model's rollout with its versions resolved: what the gateway routes by."""
        with self.transaction() as session:
            rows = session.scalars(select(ModelVersion).options(
                joinedload(ModelVersion.checkpoint), joinedload(ModelVersion.template)))
            versions = {(v.model_name, v.version): served_model(v) for v in rows}
            result = []
            for row in session.scalars(select(Rollout).order_by(Rollout.model_name)):
                candidate = versions.get((row.model_name, row.candidate_version or ""))
                result.append(ServedRollout(rollout_state(row),
                                            versions[(row.model_name, row.stable_version)],
                                            candidate))
            return result

    def stable_versions(self) -> list[ServedModel]:
        return [r.stable for r in self.served_rollouts()]

    def require_versions(self, model: str, *versions: str) -> None:
        with self.transaction() as session:
            for version in versions:
                self._version_row(session, model, version)
