"""GrpcRegistryReader: the registry's read side through its RegistryService, so a pod that reads
the registry needs the service's address and an API key, and no database credentials."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import urlsplit

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from codellama.fleet.v1 import registry_service_pb2 as pb
from codellama.fleet.v1.registry_service_pb2_grpc import RegistryServiceStub
from fleet_common.errors import FleetError, NotFound, PermissionDenied, Unauthenticated
from model_registry.access_messages import auth_snapshot_from_pb
from model_registry.reader import GRPC_SCHEMES, RegistryUnavailable
from model_registry.records import (
    AuthSnapshot,
    CheckpointRecord,
    FileRecord,
    RolloutState,
    ServedModel,
    ServedRollout,
)

RPC_TIMEOUT_S = 5.0
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # After an outage, reconnect within seconds rather than gRPC's default backoff of up to 2 min.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)

Response = TypeVar("Response")


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def served_model_from_pb(m: pb.ModelVersion) -> ServedModel:
    return ServedModel(
        model=m.model, version=m.version, pool=m.pool, checkpoint=m.checkpoint,
        checkpoint_dir=m.checkpoint_dir, template=f"{m.template_name}@{m.template_version}",
        chat_format=m.chat_format, chat_template=m.chat_template,
        supports_infill=m.supports_infill, context_limit=m.engine.max_model_len,
        tensor_parallel_size=m.engine.tensor_parallel_size, dtype=m.engine.dtype,
        quantization=m.engine.quantization,
        created_at=_time(m.created_at) if m.HasField("created_at") else None)


def rollout_state_from_pb(r: pb.Rollout) -> RolloutState:
    return RolloutState(model=r.model, stable_version=r.stable_version,
                        candidate_version=r.candidate_version or None,
                        candidate_weight=r.candidate_weight, paused=r.paused,
                        revision=r.revision, updated_at=_time(r.updated_at))


def served_rollout_from_pb(r: pb.ServedRollout) -> ServedRollout:
    return ServedRollout(rollout_state_from_pb(r.rollout), served_model_from_pb(r.stable),
                         served_model_from_pb(r.candidate) if r.HasField("candidate") else None)


def checkpoint_from_pb(c: pb.Checkpoint) -> CheckpointRecord:
    return CheckpointRecord(
        name=c.name, directory=c.directory, source_repo=c.source_repo, format=c.format,
        dtype=c.dtype, quantization=c.quantization, architecture=c.architecture,
        vocab_size=c.vocab_size, context_length=c.context_length, tokenizer=c.tokenizer,
        total_bytes=c.total_bytes, created_at=_time(c.created_at),
        files=tuple(FileRecord(f.path, f.size_bytes, f.sha256) for f in c.files))


def parse_grpc_url(url: str) -> tuple[str, bool]:
    """`grpc://host:port` -> ("host:port", plaintext); `grpcs://` -> (..., TLS)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (parts.scheme.lower() not in GRPC_SCHEMES or not parts.hostname or port is None
            or parts.username is not None or parts.path not in ("", "/") or parts.query):
        raise ValueError(f"registry URL {url!r}: expected grpc://host:port or grpcs://host:port")
    return parts.netloc, parts.scheme.lower() == "grpcs"


class GrpcRegistryReader:
    """A RegistryReader over one channel; thread-safe, calls block for at most `timeout_s`."""

    def __init__(self, channel: grpc.Channel, target: str,
                 timeout_s: float = RPC_TIMEOUT_S, api_key: str = "") -> None:
        """Every call sends `api_key` (any scope reads) unless it is empty."""
        self._channel = channel
        self._stub = RegistryServiceStub(channel)
        self._target = target
        self._timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    @classmethod
    def from_url(cls, url: str, timeout_s: float = RPC_TIMEOUT_S,
                 api_key: str = "") -> GrpcRegistryReader:
        target, tls = parse_grpc_url(url)
        channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(), CHANNEL_OPTIONS)
                   if tls else grpc.insecure_channel(target, CHANNEL_OPTIONS))
        return cls(channel, target, timeout_s, api_key)

    def served_rollouts(self) -> list[ServedRollout]:
        response = self._call("GetServingSnapshot", self._stub.GetServingSnapshot,
                              pb.GetServingSnapshotRequest())
        return [served_rollout_from_pb(r) for r in response.rollouts]

    def get_version(self, model: str, version: str | None = None) -> ServedModel:
        response = self._call("GetModelVersion", self._stub.GetModelVersion,
                              pb.GetModelVersionRequest(model=model, version=version or ""))
        return served_model_from_pb(response.model_version)

    def get_checkpoint(self, name: str) -> CheckpointRecord:
        response = self._call("GetCheckpoint", self._stub.GetCheckpoint,
                              pb.GetCheckpointRequest(name=name))
        return checkpoint_from_pb(response.checkpoint)

    def auth_snapshot(self) -> AuthSnapshot:
        response = self._call("GetAuthSnapshot", self._stub.GetAuthSnapshot,
                              pb.GetAuthSnapshotRequest())
        return auth_snapshot_from_pb(response)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, call: Callable[..., Response], request: object) -> Response:
        try:
            return call(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(method, exc) from exc

    def _error(self, method: str, exc: grpc.RpcError) -> FleetError:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details: str = exc.details() or ""  # type: ignore[attr-defined]
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(details)
        # Retrying does not help a refused key: the caller must be reconfigured.
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return Unauthenticated(f"registry {self._target}: {details} (FLEET_REGISTRY_API_KEY)")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return PermissionDenied(f"registry {self._target}: {details}")
        return RegistryUnavailable(f"registry {self._target}: {method} failed with "
                                   f"{code.name}: {details}")
