"""Operator commands over the RegistryService: checkpoints, templates, versions, rollouts,
tenants and API keys. Every call sends the operator's API key (--api-key, else FLEET_API_KEY)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from codellama.fleet.v1 import registry_service_pb2 as pb
from codellama.fleet.v1.registry_service_pb2_grpc import RegistryServiceStub
from fleet_cli import access_commands


def _change(a: argparse.Namespace) -> pb.RolloutChange:
    return pb.RolloutChange(model=a.model, actor=a.actor, reason=a.reason,
                            expected_revision=a.expected_revision)


def _register(a: argparse.Namespace) -> Any:
    request = pb.RegisterCheckpointRequest(name=a.name, actor=a.actor)
    if a.hf_repo_id:
        request.hf_repo_id = a.hf_repo_id
    else:
        request.directory = a.directory
    return request


def _template(a: argparse.Namespace) -> Any:
    text = Path(a.chat_template_file).read_text(encoding="utf-8") if a.chat_template_file \
        else ""
    return pb.CreateTemplateVersionRequest(name=a.name, infill=a.infill,
                                           chat_format=a.chat_format, chat_template=text,
                                           actor=a.actor)


def _version(a: argparse.Namespace) -> Any:
    name, _, number = a.template.partition("@")
    return pb.CreateModelVersionRequest(
        model=a.model, version=a.version, checkpoint=a.checkpoint, template_name=name,
        template_version=int(number or 0), pool=a.pool, actor=a.actor,
        engine=pb.EngineSettings(tensor_parallel_size=a.tensor_parallel_size,
                                 max_model_len=a.max_model_len, dtype=a.dtype))


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="route to the candidate even if no worker of its queue is live "
                        "(recorded in the history)")


# command -> (RPC name, request builder, extra arguments)
Builder = Callable[[argparse.Namespace], Any]
COMMANDS: dict[str, tuple[str, Builder, Callable[[argparse.ArgumentParser], None]]] = {
    "checkpoint-register": ("RegisterCheckpoint", _register, lambda p: (
        p.add_argument("name"), p.add_argument("directory", nargs="?", default=""),
        p.add_argument("--hf-repo-id", default=""))),
    "checkpoint-show": ("GetCheckpoint", lambda a: pb.GetCheckpointRequest(name=a.name),
                        lambda p: p.add_argument("name")),
    "checkpoint-list": ("ListCheckpoints", lambda a: pb.ListCheckpointsRequest(), lambda p: None),
    "template-create": ("CreateTemplateVersion", _template, lambda p: (
        p.add_argument("name"), p.add_argument("--infill", action="store_true"),
        p.add_argument("--chat-format", default=""),
        p.add_argument("--chat-template-file"))),
    "template-list": ("ListTemplateVersions",
                      lambda a: pb.ListTemplateVersionsRequest(name=a.name),
                      lambda p: p.add_argument("name", nargs="?", default="")),
    "version-create": ("CreateModelVersion", _version, lambda p: (
        p.add_argument("model"), p.add_argument("version"),
        p.add_argument("--checkpoint", required=True),
        p.add_argument("--template", required=True, help="NAME or NAME@VERSION"),
        p.add_argument("--pool", required=True),
        p.add_argument("--tensor-parallel-size", type=int, default=0),
        p.add_argument("--max-model-len", type=int, default=0),
        p.add_argument("--dtype", default=""))),
    "version-list": ("ListModelVersions", lambda a: pb.ListModelVersionsRequest(model=a.model),
                     lambda p: p.add_argument("model", nargs="?", default="")),
    "rollout-show": ("GetRollout", lambda a: pb.GetRolloutRequest(model=a.model),
                     lambda p: p.add_argument("model")),
    "rollout-history": ("ListRolloutEvents",
                        lambda a: pb.ListRolloutEventsRequest(model=a.model),
                        lambda p: p.add_argument("model")),
    "canary-start": ("StartCanary", lambda a: pb.StartCanaryRequest(
        change=_change(a), candidate_version=a.candidate, weight=a.weight, force=a.force),
        lambda p: (p.add_argument("model"), p.add_argument("candidate"),
                   p.add_argument("--weight", type=int, required=True), _force(p))),
    "canary-weight": ("SetCanaryWeight", lambda a: pb.SetCanaryWeightRequest(
        change=_change(a), weight=a.weight, force=a.force), lambda p: (
        p.add_argument("model"), p.add_argument("weight", type=int), _force(p))),
    "promote": ("Promote", lambda a: pb.PromoteRequest(change=_change(a)),
                lambda p: p.add_argument("model")),
    "rollback": ("Rollback", lambda a: pb.RollbackRequest(change=_change(a)),
                 lambda p: p.add_argument("model")),
    "canary-pause": ("PauseCanary", lambda a: pb.PauseCanaryRequest(change=_change(a),
                                                                    paused=True),
                     lambda p: p.add_argument("model")),
    "canary-resume": ("PauseCanary", lambda a: pb.PauseCanaryRequest(change=_change(a),
                                                                     paused=False),
                      lambda p: p.add_argument("model")),
}
_CHANGES = {"canary-start", "canary-weight", "promote", "rollback", "canary-pause",
            "canary-resume"}
_ACTORS = _CHANGES | {name for name in COMMANDS if name.endswith(("register", "create"))}
COMMANDS.update(access_commands.COMMANDS)


def _metadata(a: argparse.Namespace) -> list[tuple[str, str]]:
    key = a.api_key or os.environ.get("FLEET_API_KEY", "")
    return [("authorization", f"Bearer {key}")] if key else []


def run(a: argparse.Namespace) -> int:
    rpc, build, _ = COMMANDS[a.registry_op]
    with grpc.insecure_channel(a.registry) as channel:
        try:
            response = getattr(RegistryServiceStub(channel), rpc)(
                build(a), timeout=a.timeout, metadata=_metadata(a))
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
    if a.registry_op in access_commands.NOTES:
        print(access_commands.NOTES[a.registry_op], file=sys.stderr)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ops = commands.add_parser("ops", help="operate the registry service (checkpoints, "
                                          "templates, versions, rollouts, tenants, API keys)")
    ops.add_argument("--registry", default="127.0.0.1:50061", help="registry host:port")
    ops.add_argument("--timeout", type=float, default=600.0)
    ops.add_argument("--api-key", default="", help="the operator's API key (reads: any scope; "
                     "writes: operator) [default: FLEET_API_KEY]")
    sub = ops.add_subparsers(dest="registry_op", required=True)
    for name, (rpc, _, add_arguments) in COMMANDS.items():
        parser = sub.add_parser(name, help=rpc)
        add_arguments(parser)
        if name in _ACTORS:
            parser.add_argument("--actor", default=getpass.getuser(),
                                help="recorded only when the registry does not authenticate; "
                                     "else the key's tenant/name is")
        if name in _CHANGES:
            parser.add_argument("--reason", default="")
            parser.add_argument("--expected-revision", type=int, default=0)
    ops.set_defaults(handler=run)
