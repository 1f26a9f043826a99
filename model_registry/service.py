"""RegistryService: gRPC over the store, rollouts and tenants. Handlers authorize the caller
(`model_registry.access`) and translate, nothing more."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from codellama.fleet.v1 import registry_service_pb2 as pb
from codellama.fleet.v1 import registry_service_pb2_grpc as pb_grpc
from fleet_common.errors import InvalidArgument
from model_registry.access import Metadata, RegistryAccess, actor_of
from model_registry.access_messages import (
    api_key_pb,
    auth_snapshot_pb,
    expires_in_from_pb,
    policy_changes_from_pb,
    scopes_from_pb,
    tenant_pb,
)
from model_registry.api_keys import OPERATOR
from model_registry.hf_download import download_hf_repo
from model_registry.records import (
    CheckpointRecord,
    KeyGrant,
    RolloutEventRecord,
    RolloutState,
    ServedModel,
    ServedRollout,
    TemplateRecord,
)
from model_registry.registration import register_checkpoint_dir
from model_registry.rollouts import Change, LiveWorkers, RolloutStore
from model_registry.store import NewModelVersion, RegistryStore
from model_registry.template_fit import check_template_fits
from model_registry.tenants import TenantStore
from model_registry.verification import CheckpointCorrupted, verify_before_load

T = TypeVar("T")
log = logging.getLogger(__name__)


def _ts(value: Any) -> Timestamp:
    stamp = Timestamp()
    if value is not None:
        stamp.FromDatetime(value)
    return stamp


def checkpoint_pb(c: CheckpointRecord) -> pb.Checkpoint:
    return pb.Checkpoint(
        name=c.name, directory=c.directory, source_repo=c.source_repo, format=c.format,
        dtype=c.dtype, quantization=c.quantization, architecture=c.architecture,
        vocab_size=c.vocab_size, context_length=c.context_length, tokenizer=c.tokenizer,
        files=[pb.CheckpointFile(path=f.path, size_bytes=f.size_bytes, sha256=f.sha256)
               for f in c.files],
        total_bytes=c.total_bytes, created_at=_ts(c.created_at))


def template_pb(t: TemplateRecord) -> pb.TemplateVersion:
    return pb.TemplateVersion(name=t.name, version=t.version, infill=t.infill,
                              chat_format=t.chat_format, chat_template=t.chat_template,
                              sha256=t.sha256, created_at=_ts(t.created_at))


def model_version_pb(m: ServedModel) -> pb.ModelVersion:
    name, _, version = m.template.partition("@")
    return pb.ModelVersion(
        model=m.model, version=m.version, checkpoint=m.checkpoint, template_name=name,
        template_version=int(version), pool=m.pool, queue=m.queue,
        engine=pb.EngineSettings(tensor_parallel_size=m.tensor_parallel_size,
                                 max_model_len=m.context_limit, quantization=m.quantization,
                                 dtype=m.dtype),
        created_at=_ts(m.created_at), checkpoint_dir=m.checkpoint_dir,
        supports_infill=m.supports_infill, chat_format=m.chat_format,
        chat_template=m.chat_template)


def rollout_pb(r: RolloutState) -> pb.Rollout:
    return pb.Rollout(model=r.model, stable_version=r.stable_version,
                      candidate_version=r.candidate_version or "",
                      candidate_weight=r.candidate_weight, paused=r.paused,
                      revision=r.revision, updated_at=_ts(r.updated_at))


def served_rollout_pb(r: ServedRollout) -> pb.ServedRollout:
    return pb.ServedRollout(
        rollout=rollout_pb(r.state), stable=model_version_pb(r.stable),
        candidate=model_version_pb(r.candidate) if r.candidate is not None else None)


def event_pb(e: RolloutEventRecord) -> pb.RolloutEvent:
    return pb.RolloutEvent(model=e.model, revision=e.revision, action=e.action, actor=e.actor,
                           reason=e.reason, at=_ts(e.at), stable_version=e.stable_version,
                           candidate_version=e.candidate_version or "",
                           candidate_weight=e.candidate_weight, paused=e.paused)


def _metadata(context: grpc.aio.ServicerContext) -> Metadata:
    return context.invocation_metadata()


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, store: RegistryStore, checkpoint_root: Path,
                 workers: LiveWorkers | None = None, *, authenticate: bool = True) -> None:
        """`authenticate` False (FLEET_REGISTRY_AUTH=off): every call is allowed and writes
        record the actor the caller declares."""
        self._store = store
        self._rollouts = RolloutStore(store, workers)
        self._tenants = TenantStore(store)
        self._access = RegistryAccess(self._tenants, required=authenticate)
        self._checkpoint_root = checkpoint_root

    @staticmethod
    async def _run(call: Callable[[], T]) -> T:
        """Database and hashing work off the event loop."""
        return await asyncio.to_thread(call)

    async def _reader(self, context: Any, rpc: str) -> None:
        """Refuses a caller without a valid key (any scope reads)."""
        await self._access.caller(_metadata(context), rpc, None)

    async def _writer(self, context: Any, rpc: str, declared_actor: str | None = None,
                      field: str = "actor") -> str:
        """Refuses a caller without the operator scope; returns who makes the change.
        `declared_actor` None: the request has no actor field, so with authentication off and
        no x-fleet-actor metadata the change is recorded as made by "unauthenticated"."""
        grant = await self._operator(context, rpc)
        return actor_of(grant, declared_actor or "", _metadata(context), field,
                        required=declared_actor is not None)

    async def _operator(self, context: Any, rpc: str) -> KeyGrant | None:
        return await self._access.caller(_metadata(context), rpc, OPERATOR)

    async def _change(self, change: pb.RolloutChange, context: Any, rpc: str) -> Change:
        grant = await self._operator(context, rpc)
        if not change.model:
            raise InvalidArgument("change.model", "is required")
        return Change(model=change.model,
                      actor=actor_of(grant, change.actor, _metadata(context), "change.actor"),
                      reason=change.reason, expected_revision=change.expected_revision)

    async def RegisterCheckpoint(self, request: Any, context: Any) -> Any:
        actor = await self._writer(context, "RegisterCheckpoint", request.actor)
        which = request.WhichOneof("source")
        if which is None:
            raise InvalidArgument("source", "set directory or hf_repo_id")
        if which == "hf_repo_id":
            directory = await self._run(lambda: download_hf_repo(request.hf_repo_id,
                                                                 self._checkpoint_root))
            source = request.hf_repo_id
        else:
            directory, source = Path(request.directory), ""
        record = await self._run(lambda: register_checkpoint_dir(
            self._store, request.name, directory, source_repo=source, actor=actor))
        return pb.RegisterCheckpointResponse(checkpoint=checkpoint_pb(record))

    async def GetCheckpoint(self, request: Any, context: Any) -> Any:
        await self._reader(context, "GetCheckpoint")
        record = await self._run(lambda: self._store.get_checkpoint(request.name))
        return pb.GetCheckpointResponse(checkpoint=checkpoint_pb(record))

    async def ListCheckpoints(self, request: Any, context: Any) -> Any:
        await self._reader(context, "ListCheckpoints")
        records = await self._run(self._store.list_checkpoints)
        return pb.ListCheckpointsResponse(checkpoints=[checkpoint_pb(c) for c in records])

    async def CreateTemplateVersion(self, request: Any, context: Any) -> Any:
        actor = await self._writer(context, "CreateTemplateVersion", request.actor)
        record = await self._run(lambda: self._store.create_template_version(
            request.name, infill=request.infill, chat_format=request.chat_format,
            chat_template=request.chat_template, actor=actor))
        return pb.CreateTemplateVersionResponse(template=template_pb(record))

    async def ListTemplateVersions(self, request: Any, context: Any) -> Any:
        await self._reader(context, "ListTemplateVersions")
        records = await self._run(lambda: self._store.list_templates(request.name))
        return pb.ListTemplateVersionsResponse(templates=[template_pb(t) for t in records])

    async def CreateModelVersion(self, request: Any, context: Any) -> Any:
        actor = await self._writer(context, "CreateModelVersion", request.actor)
        new = NewModelVersion(
            model=request.model, version=request.version, checkpoint=request.checkpoint,
            template_name=request.template_name, template_version=request.template_version,
            pool=request.pool, tensor_parallel_size=request.engine.tensor_parallel_size,
            max_model_len=request.engine.max_model_len, dtype=request.engine.dtype or "auto",
            quantization=request.engine.quantization)
        served = await self._run(lambda: self._store.create_model_version(
            new, actor=actor, fits=check_template_fits))
        return pb.CreateModelVersionResponse(model_version=model_version_pb(served))

    async def ListModelVersions(self, request: Any, context: Any) -> Any:
        await self._reader(context, "ListModelVersions")
        records = await self._run(lambda: self._store.list_versions(request.model))
        return pb.ListModelVersionsResponse(model_versions=[model_version_pb(m) for m in records])

    async def GetRollout(self, request: Any, context: Any) -> Any:
        await self._reader(context, "GetRollout")
        state = await self._run(lambda: self._rollouts.get(request.model))
        return pb.GetRolloutResponse(rollout=rollout_pb(state))

    def _verify_candidate(self, served: ServedModel) -> None:
        """A canary must not start on files that no longer match their checksums."""
        checkpoint = self._store.get_checkpoint(served.checkpoint)
        try:
            verify_before_load(Path(checkpoint.directory), checkpoint.files)
        except CheckpointCorrupted as exc:
            from fleet_common.errors import FailedPrecondition

            raise FailedPrecondition(f"candidate {served.model}@{served.version}: {exc}") from exc

    async def StartCanary(self, request: Any, context: Any) -> Any:
        change = await self._change(request.change, context, "StartCanary")
        state = await self._run(lambda: self._rollouts.start_canary(
            change, request.candidate_version, request.weight, verify=self._verify_candidate,
            force=request.force))
        return pb.StartCanaryResponse(rollout=rollout_pb(state))

    async def SetCanaryWeight(self, request: Any, context: Any) -> Any:
        change = await self._change(request.change, context, "SetCanaryWeight")
        state = await self._run(lambda: self._rollouts.set_weight(change, request.weight,
                                                                  force=request.force))
        return pb.SetCanaryWeightResponse(rollout=rollout_pb(state))

    async def Promote(self, request: Any, context: Any) -> Any:
        change = await self._change(request.change, context, "Promote")
        state = await self._run(lambda: self._rollouts.promote(change))
        return pb.PromoteResponse(rollout=rollout_pb(state))

    async def Rollback(self, request: Any, context: Any) -> Any:
        change = await self._change(request.change, context, "Rollback")
        state = await self._run(lambda: self._rollouts.rollback(change))
        return pb.RollbackResponse(rollout=rollout_pb(state))

    async def PauseCanary(self, request: Any, context: Any) -> Any:
        change = await self._change(request.change, context, "PauseCanary")
        state = await self._run(lambda: self._rollouts.pause(change, request.paused))
        return pb.PauseCanaryResponse(rollout=rollout_pb(state))

    async def ListRolloutEvents(self, request: Any, context: Any) -> Any:
        await self._reader(context, "ListRolloutEvents")
        events = await self._run(lambda: self._rollouts.events(request.model))
        return pb.ListRolloutEventsResponse(events=[event_pb(e) for e in events])

    async def GetServingSnapshot(self, request: Any, context: Any) -> Any:
        await self._reader(context, "GetServingSnapshot")
        rollouts = await self._run(self._store.served_rollouts)
        return pb.GetServingSnapshotResponse(rollouts=[served_rollout_pb(r) for r in rollouts])

    async def GetModelVersion(self, request: Any, context: Any) -> Any:
        await self._reader(context, "GetModelVersion")
        if not request.model:
            raise InvalidArgument("model", "is required")
        served = await self._run(lambda: self._store.get_version(request.model,
                                                                 request.version or None))
        return pb.GetModelVersionResponse(model_version=model_version_pb(served))

    # Tenants and keys: operators only, reads included (they list every tenant's keys).

    async def CreateTenant(self, request: Any, context: Any) -> Any:
        actor = await self._writer(context, "CreateTenant")
        policy = policy_changes_from_pb(request.policy)
        record = await self._run(lambda: self._tenants.create_tenant(
            request.name, request.display_name, actor=actor, policy=policy))
        return pb.CreateTenantResponse(tenant=tenant_pb(record))

    async def UpdateTenantPolicy(self, request: Any, context: Any) -> Any:
        actor = await self._writer(context, "UpdateTenantPolicy")
        if not request.tenant:
            raise InvalidArgument("tenant", "is required")
        changes = policy_changes_from_pb(request.policy)
        record = await self._run(lambda: self._tenants.update_policy(request.tenant, changes))
        log.info("tenant %s: policy %s set by %s; now %s", request.tenant, changes, actor,
                 record.policy)
        return pb.UpdateTenantPolicyResponse(tenant=tenant_pb(record))

    async def ListTenants(self, request: Any, context: Any) -> Any:
        await self._operator(context, "ListTenants")
        records = await self._run(self._tenants.list_tenants)
        return pb.ListTenantsResponse(tenants=[tenant_pb(t) for t in records])

    async def CreateApiKey(self, request: Any, context: Any) -> Any:
        actor = await self._writer(context, "CreateApiKey")
        scopes = scopes_from_pb(request.scopes)
        record, secret = await self._run(lambda: self._tenants.create_key(
            request.tenant, request.name, scopes, expires_in=expires_in_from_pb(request),
            actor=actor))
        return pb.CreateApiKeyResponse(api_key=api_key_pb(record), secret=secret)

    async def ListApiKeys(self, request: Any, context: Any) -> Any:
        await self._operator(context, "ListApiKeys")
        records = await self._run(lambda: self._tenants.list_keys(request.tenant))
        return pb.ListApiKeysResponse(api_keys=[api_key_pb(k) for k in records])

    async def RevokeApiKey(self, request: Any, context: Any) -> Any:
        actor = await self._writer(context, "RevokeApiKey")
        record = await self._run(lambda: self._tenants.revoke_key(request.key_id, actor=actor))
        return pb.RevokeApiKeyResponse(api_key=api_key_pb(record))

    async def GetAuthSnapshot(self, request: Any, context: Any) -> Any:
        await self._reader(context, "GetAuthSnapshot")
        return auth_snapshot_pb(await self._run(self._tenants.auth_snapshot))
