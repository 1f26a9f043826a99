import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from codellama.fleet.v1 import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApiKeyScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_KEY_SCOPE_UNSPECIFIED: _ClassVar[ApiKeyScope]
    API_KEY_SCOPE_INFERENCE: _ClassVar[ApiKeyScope]
    API_KEY_SCOPE_JOBS: _ClassVar[ApiKeyScope]
    API_KEY_SCOPE_OPERATOR: _ClassVar[ApiKeyScope]
API_KEY_SCOPE_UNSPECIFIED: ApiKeyScope
API_KEY_SCOPE_INFERENCE: ApiKeyScope
API_KEY_SCOPE_JOBS: ApiKeyScope
API_KEY_SCOPE_OPERATOR: ApiKeyScope

class CheckpointFile(_message.Message):
    __slots__ = ("path", "size_bytes", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("name", "directory", "source_repo", "format", "dtype", "quantization", "architecture", "vocab_size", "context_length", "tokenizer", "files", "total_bytes", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_REPO_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    directory: str
    source_repo: str
    format: str
    dtype: str
    quantization: str
    architecture: str
    vocab_size: int
    context_length: int
    tokenizer: str
    files: _containers.RepeatedCompositeFieldContainer[CheckpointFile]
    total_bytes: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., directory: _Optional[str] = ..., source_repo: _Optional[str] = ..., format: _Optional[str] = ..., dtype: _Optional[str] = ..., quantization: _Optional[str] = ..., architecture: _Optional[str] = ..., vocab_size: _Optional[int] = ..., context_length: _Optional[int] = ..., tokenizer: _Optional[str] = ..., files: _Optional[_Iterable[_Union[CheckpointFile, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterCheckpointRequest(_message.Message):
    __slots__ = ("name", "directory", "hf_repo_id", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    HF_REPO_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    directory: str
    hf_repo_id: str
    actor: str
    def __init__(self, name: _Optional[str] = ..., directory: _Optional[str] = ..., hf_repo_id: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class RegisterCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class TemplateVersion(_message.Message):
    __slots__ = ("name", "version", "infill", "chat_format", "chat_template", "sha256", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INFILL_FIELD_NUMBER: _ClassVar[int]
    CHAT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    infill: bool
    chat_format: str
    chat_template: str
    sha256: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., infill: _Optional[bool] = ..., chat_format: _Optional[str] = ..., chat_template: _Optional[str] = ..., sha256: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTemplateVersionRequest(_message.Message):
    __slots__ = ("name", "infill", "chat_format", "chat_template", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INFILL_FIELD_NUMBER: _ClassVar[int]
    CHAT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    infill: bool
    chat_format: str
    chat_template: str
    actor: str
    def __init__(self, name: _Optional[str] = ..., infill: _Optional[bool] = ..., chat_format: _Optional[str] = ..., chat_template: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class CreateTemplateVersionResponse(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: TemplateVersion
    def __init__(self, template: _Optional[_Union[TemplateVersion, _Mapping]] = ...) -> None: ...

class ListTemplateVersionsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListTemplateVersionsResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[TemplateVersion]
    def __init__(self, templates: _Optional[_Iterable[_Union[TemplateVersion, _Mapping]]] = ...) -> None: ...

class EngineSettings(_message.Message):
    __slots__ = ("tensor_parallel_size", "max_model_len", "quantization", "dtype")
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    tensor_parallel_size: int
    max_model_len: int
    quantization: str
    dtype: str
    def __init__(self, tensor_parallel_size: _Optional[int] = ..., max_model_len: _Optional[int] = ..., quantization: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model", "version", "checkpoint", "template_name", "template_version", "engine", "pool", "queue", "created_at", "checkpoint_dir", "supports_infill", "chat_format", "chat_template")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_INFILL_FIELD_NUMBER: _ClassVar[int]
    CHAT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    checkpoint: str
    template_name: str
    template_version: int
    engine: EngineSettings
    pool: str
    queue: str
    created_at: _timestamp_pb2.Timestamp
    checkpoint_dir: str
    supports_infill: bool
    chat_format: str
    chat_template: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., checkpoint: _Optional[str] = ..., template_name: _Optional[str] = ..., template_version: _Optional[int] = ..., engine: _Optional[_Union[EngineSettings, _Mapping]] = ..., pool: _Optional[str] = ..., queue: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., checkpoint_dir: _Optional[str] = ..., supports_infill: _Optional[bool] = ..., chat_format: _Optional[str] = ..., chat_template: _Optional[str] = ...) -> None: ...

class CreateModelVersionRequest(_message.Message):
    __slots__ = ("model", "version", "checkpoint", "template_name", "template_version", "engine", "pool", "actor")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    checkpoint: str
    template_name: str
    template_version: int
    engine: EngineSettings
    pool: str
    actor: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., checkpoint: _Optional[str] = ..., template_name: _Optional[str] = ..., template_version: _Optional[int] = ..., engine: _Optional[_Union[EngineSettings, _Mapping]] = ..., pool: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class CreateModelVersionResponse(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: ModelVersion
    def __init__(self, model_version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("model_versions",)
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model_versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, model_versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("model", "stable_version", "candidate_version", "candidate_weight", "paused", "revision", "updated_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    stable_version: str
    candidate_version: str
    candidate_weight: int
    paused: bool
    revision: int
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., stable_version: _Optional[str] = ..., candidate_version: _Optional[str] = ..., candidate_weight: _Optional[int] = ..., paused: _Optional[bool] = ..., revision: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class RolloutChange(_message.Message):
    __slots__ = ("model", "expected_revision", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    expected_revision: int
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., expected_revision: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StartCanaryRequest(_message.Message):
    __slots__ = ("change", "candidate_version", "weight", "force")
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    change: RolloutChange
    candidate_version: str
    weight: int
    force: bool
    def __init__(self, change: _Optional[_Union[RolloutChange, _Mapping]] = ..., candidate_version: _Optional[str] = ..., weight: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class StartCanaryResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class SetCanaryWeightRequest(_message.Message):
    __slots__ = ("change", "weight", "force")
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    change: RolloutChange
    weight: int
    force: bool
    def __init__(self, change: _Optional[_Union[RolloutChange, _Mapping]] = ..., weight: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class SetCanaryWeightResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("change",)
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    change: RolloutChange
    def __init__(self, change: _Optional[_Union[RolloutChange, _Mapping]] = ...) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("change",)
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    change: RolloutChange
    def __init__(self, change: _Optional[_Union[RolloutChange, _Mapping]] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class PauseCanaryRequest(_message.Message):
    __slots__ = ("change", "paused")
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    change: RolloutChange
    paused: bool
    def __init__(self, change: _Optional[_Union[RolloutChange, _Mapping]] = ..., paused: _Optional[bool] = ...) -> None: ...

class PauseCanaryResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class RolloutEvent(_message.Message):
    __slots__ = ("model", "revision", "action", "actor", "reason", "at", "stable_version", "candidate_version", "candidate_weight", "paused")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: int
    action: str
    actor: str
    reason: str
    at: _timestamp_pb2.Timestamp
    stable_version: str
    candidate_version: str
    candidate_weight: int
    paused: bool
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[int] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stable_version: _Optional[str] = ..., candidate_version: _Optional[str] = ..., candidate_weight: _Optional[int] = ..., paused: _Optional[bool] = ...) -> None: ...

class ListRolloutEventsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListRolloutEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RolloutEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[RolloutEvent, _Mapping]]] = ...) -> None: ...

class GetServingSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServedRollout(_message.Message):
    __slots__ = ("rollout", "stable", "candidate")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    stable: ModelVersion
    candidate: ModelVersion
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ..., stable: _Optional[_Union[ModelVersion, _Mapping]] = ..., candidate: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class GetServingSnapshotResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[ServedRollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[ServedRollout, _Mapping]]] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetModelVersionResponse(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: ModelVersion
    def __init__(self, model_version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("name", "display_name", "created_at", "created_by", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    policy: TenantPolicy
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ...) -> None: ...

class TenantPolicy(_message.Message):
    __slots__ = ("tenant", "max_concurrent", "requests_per_minute", "tokens_per_minute", "max_queued_job_items", "weight", "max_priority")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_JOB_ITEMS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    max_concurrent: int
    requests_per_minute: int
    tokens_per_minute: int
    max_queued_job_items: int
    weight: int
    max_priority: _generation_pb2.Priority
    def __init__(self, tenant: _Optional[str] = ..., max_concurrent: _Optional[int] = ..., requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., max_queued_job_items: _Optional[int] = ..., weight: _Optional[int] = ..., max_priority: _Optional[_Union[_generation_pb2.Priority, str]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("name", "display_name", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    policy: TenantPolicy
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class UpdateTenantPolicyRequest(_message.Message):
    __slots__ = ("tenant", "policy")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    policy: TenantPolicy
    def __init__(self, tenant: _Optional[str] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ...) -> None: ...

class UpdateTenantPolicyResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "tenant", "name", "scopes", "created_at", "created_by", "expires_at", "revoked_at", "revoked_by")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tenant: str
    name: str
    scopes: _containers.RepeatedScalarFieldContainer[ApiKeyScope]
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    revoked_by: str
    def __init__(self, key_id: _Optional[str] = ..., tenant: _Optional[str] = ..., name: _Optional[str] = ..., scopes: _Optional[_Iterable[_Union[ApiKeyScope, str]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_by: _Optional[str] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("tenant", "name", "scopes", "expires_in")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    name: str
    scopes: _containers.RepeatedScalarFieldContainer[ApiKeyScope]
    expires_in: _duration_pb2.Duration
    def __init__(self, tenant: _Optional[str] = ..., name: _Optional[str] = ..., scopes: _Optional[_Iterable[_Union[ApiKeyScope, str]]] = ..., expires_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "secret")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    secret: str
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("api_keys",)
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class GetAuthSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApiKeyGrant(_message.Message):
    __slots__ = ("key_id", "key_sha256", "tenant", "key_name", "scopes", "expires_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_sha256: str
    tenant: str
    key_name: str
    scopes: _containers.RepeatedScalarFieldContainer[ApiKeyScope]
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., key_sha256: _Optional[str] = ..., tenant: _Optional[str] = ..., key_name: _Optional[str] = ..., scopes: _Optional[_Iterable[_Union[ApiKeyScope, str]]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAuthSnapshotResponse(_message.Message):
    __slots__ = ("grants", "authentication_required", "policies")
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATION_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[ApiKeyGrant]
    authentication_required: bool
    policies: _containers.RepeatedCompositeFieldContainer[TenantPolicy]
    def __init__(self, grants: _Optional[_Iterable[_Union[ApiKeyGrant, _Mapping]]] = ..., authentication_required: _Optional[bool] = ..., policies: _Optional[_Iterable[_Union[TenantPolicy, _Mapping]]] = ...) -> None: ...
