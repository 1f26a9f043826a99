"""RegistryService: gRPC over the store and rollouts. Handlers translate, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from codellama.fleet.v1 import registry_service_pb2 as pb
from codellama.fleet.v1 import registry_service_pb2_grpc as pb_grpc
from fleet_common.errors import InvalidArgument
from model_registry.hf_download import download_hf_repo
from model_registry.records import (
    CheckpointRecord,
    RolloutEventRecord,
    RolloutState,
    ServedModel,
    TemplateRecord,
)
from model_registry.registration import register_checkpoint_dir
from model_registry.rollouts import Change, RolloutStore
from model_registry.store import NewModelVersion, RegistryStore
from model_registry.template_fit import check_template_fits
from workers.verification import CheckpointCorrupted, verify_before_load

T = TypeVar("T")


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
        created_at=_ts(m.created_at))


def rollout_pb(r: RolloutState) -> pb.Rollout:
    return pb.Rollout(model=r.model, stable_version=r.stable_version,
                      candidate_version=r.candidate_version or "",
                      candidate_weight=r.candidate_weight, paused=r.paused,
                      revision=r.revision, updated_at=_ts(r.updated_at))


def event_pb(e: RolloutEventRecord) -> pb.RolloutEvent:
    return pb.RolloutEvent(model=e.model, revision=e.revision, action=e.action, actor=e.actor,
                           reason=e.reason, at=_ts(e.at), stable_version=e.stable_version,
                           candidate_version=e.candidate_version or "",
                           candidate_weight=e.candidate_weight, paused=e.paused)


def _actor(actor: str, context: grpc.aio.ServicerContext) -> str:
    if actor:
        return actor
    for key, value in context.invocation_metadata() or ():
        if key == "x-fleet-actor" and isinstance(value, str):
            return value
    raise InvalidArgument("actor", "is required: say who makes the change (or send "
                                   "metadata x-fleet-actor)")


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    def __init__(self, store: RegistryStore, checkpoint_root: Path) -> None:
        self._store = store
        self._rollouts = RolloutStore(store)
        self._checkpoint_root = checkpoint_root

    @staticmethod
    async def _run(call: Callable[[], T]) -> T:
        """Database and hashing work off the event loop."""
        return await asyncio.to_thread(call)

    def _change(self, change: pb.RolloutChange, context: grpc.aio.ServicerContext) -> Change:
        if not change.model:
            raise InvalidArgument("change.model", "is required")
        return Change(model=change.model, actor=_actor(change.actor, context),
                      reason=change.reason, expected_revision=change.expected_revision)

    async def RegisterCheckpoint(self, request: Any, context: Any) -> Any:
        actor = _actor(request.actor, context)
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
        record = await self._run(lambda: self._store.get_checkpoint(request.name))
        return pb.GetCheckpointResponse(checkpoint=checkpoint_pb(record))

    async def ListCheckpoints(self, request: Any, context: Any) -> Any:
        records = await self._run(self._store.list_checkpoints)
        return pb.ListCheckpointsResponse(checkpoints=[checkpoint_pb(c) for c in records])

    async def CreateTemplateVersion(self, request: Any, context: Any) -> Any:
        actor = _actor(request.actor, context)
        record = await self._run(lambda: self._store.create_template_version(
            request.name, infill=request.infill, chat_format=request.chat_format,
            chat_template=request.chat_template, actor=actor))
        return pb.CreateTemplateVersionResponse(template=template_pb(record))

    async def ListTemplateVersions(self, request: Any, context: Any) -> Any:
        records = await self._run(lambda: self._store.list_templates(request.name))
        return pb.ListTemplateVersionsResponse(templates=[template_pb(t) for t in records])

    async def CreateModelVersion(self, request: Any, context: Any) -> Any:
        actor = _actor(request.actor, context)
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
        records = await self._run(lambda: self._store.list_versions(request.model))
        return pb.ListModelVersionsResponse(model_versions=[model_version_pb(m) for m in records])

    async def GetRollout(self, request: Any, context: Any) -> Any:
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
        change = self._change(request.change, context)
        state = await self._run(lambda: self._rollouts.start_canary(
            change, request.candidate_version, request.weight, verify=self._verify_candidate))
        return pb.StartCanaryResponse(rollout=rollout_pb(state))

    async def SetCanaryWeight(self, request: Any, context: Any) -> Any:
        change = self._change(request.change, context)
        state = await self._run(lambda: self._rollouts.set_weight(change, request.weight))
        return pb.SetCanaryWeightResponse(rollout=rollout_pb(state))

    async def Promote(self, request: Any, context: Any) -> Any:
        change = self._change(request.change, context)
        state = await self._run(lambda: self._rollouts.promote(change))
        return pb.PromoteResponse(rollout=rollout_pb(state))

    async def Rollback(self, request: Any, context: Any) -> Any:
        change = self._change(request.change, context)
        state = await self._run(lambda: self._rollouts.rollback(change))
        return pb.RollbackResponse(rollout=rollout_pb(state))

    async def PauseCanary(self, request: Any, context: Any) -> Any:
        change = self._change(request.change, context)
        state = await self._run(lambda: self._rollouts.pause(change, request.paused))
        return pb.PauseCanaryResponse(rollout=rollout_pb(state))

    async def ListRolloutEvents(self, request: Any, context: Any) -> Any:
        events = await self._run(lambda: self._rollouts.events(request.model))
        return pb.ListRolloutEventsResponse(events=[event_pb(e) for e in events])
