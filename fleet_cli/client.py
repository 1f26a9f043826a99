"""Client commands: complete, infill, chat (streamed by default), preview, models."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub

ROLES = {"system": pb.ROLE_SYSTEM, "user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="127.0.0.1:50051", help="gateway host:port")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    parser.add_argument("-m", "--model", required=True)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    parser.add_argument("--no-stream", action="store_true", help="one unary call instead")
    parser.add_argument("--json", action="store_true", help="print response messages as JSON")


def sampling_from(args: argparse.Namespace) -> pb.SamplingParams:
    params = pb.SamplingParams(stop_sequences=args.stop)
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(params, name, value)
    return params


def parse_messages(system: str | None, turns: list[str]) -> list[pb.ChatMessage]:
    """Turns alternate user, assistant, user...; `role:text` picks a role explicitly."""
    messages = [pb.ChatMessage(role=pb.ROLE_SYSTEM, content=system)] if system else []
    for i, turn in enumerate(turns):
        role, sep, text = turn.partition(":")
        if sep and role in ROLES:
            messages.append(pb.ChatMessage(role=ROLES[role], content=text))
        else:
            messages.append(pb.ChatMessage(role=pb.ROLE_USER if i % 2 == 0 else pb.ROLE_ASSISTANT,
                                           content=turn))
    return messages


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {args.api_key}")] if args.api_key else []


def _print_summary(message: Any) -> None:
    reasons = ", ".join(pb.FinishReason.Name(c.finish_reason) for c in message.choices) \
        if hasattr(message, "choices") else ""
    t, u, s = message.timings, message.usage, message.served_by
    print(f"\n[{s.model}@{s.model_version} pool={s.pool} worker={s.worker}] "
          f"prompt={u.prompt_tokens} completion={u.completion_tokens} tokens; "
          f"queue {t.queue_wait_ms:.0f} ms, first token {t.time_to_first_token_ms:.0f} ms, "
          f"total {t.total_ms:.0f} ms{'; ' + reasons if reasons else ''}", file=sys.stderr)


def run_generation(args: argparse.Namespace, kind: str, **fields: Any) -> int:
    unary_name, stream_name = {"complete": ("Complete", "StreamComplete"),
                               "infill": ("Infill", "StreamInfill"),
                               "chat": ("Chat", "StreamChat")}[kind]
    request_types = {"Complete": api.CompleteRequest, "StreamComplete": api.StreamCompleteRequest,
                     "Infill": api.InfillRequest, "StreamInfill": api.StreamInfillRequest,
                     "Chat": api.ChatRequest, "StreamChat": api.StreamChatRequest}
    with grpc.insecure_channel(args.target) as channel:
        stub = InferenceServiceStub(channel)
        name = unary_name if args.no_stream else stream_name
        request = request_types[name](model=args.model, sampling=sampling_from(args), **fields)
        try:
            if args.no_stream:
                response = getattr(stub, name)(request, timeout=args.timeout,
                                               metadata=_metadata(args))
                if args.json:
                    print(json.dumps(MessageToDict(response), indent=2))
                else:
                    print(response.choices[0].text if response.choices else "")
                    _print_summary(response)
                return 0
            last = None
            for message in getattr(stub, name)(request, timeout=args.timeout,
                                               metadata=_metadata(args)):
                if args.json:
                    print(json.dumps(MessageToDict(message)))
                else:
                    for delta in message.deltas:
                        if delta.index == 0:
                            print(delta.text, end="", flush=True)
                last = message
            if last is not None and not args.json:
                _print_summary(last)
            return 0
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1


def preview_request(args: argparse.Namespace) -> Any:
    """The PreviewPromptRequest of `fleet preview`'s arguments (also built offline)."""
    request = api.PreviewPromptRequest(model=args.model or "")
    if args.max_tokens is not None:
        request.max_tokens = args.max_tokens
    if args.prompt is not None:
        request.prompt = args.prompt
    elif args.prefix is not None or args.suffix is not None:
        request.infill.CopyFrom(api.InfillInput(
            prefix=args.prefix or "", suffix=args.suffix or "",
            order=pb.INFILL_ORDER_SPM if args.spm else pb.INFILL_ORDER_PSM))
    else:
        request.chat.CopyFrom(api.ChatInput(messages=parse_messages(args.system, args.turns)))
    return request


def run_preview(args: argparse.Namespace) -> int:
    request = preview_request(args)
    with grpc.insecure_channel(args.target) as channel:
        try:
            response = InferenceServiceStub(channel).PreviewPrompt(
                request, timeout=args.timeout, metadata=_metadata(args))
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return 0
    print_prompt_table(
        f"{args.model}@{response.model_version}  format={response.prompt_format}  "
        f"{len(response.token_ids)} tokens (context limit {response.context_limit})",
        response.token_ids, response.pieces, response.stop_token_ids, response.stop_pieces)
    return 0


def print_prompt_table(header: str, token_ids: Any, pieces: Any, stop_ids: Any,
                       stop_pieces: Any) -> None:
    print(header)
    for token_id, piece in zip(token_ids, pieces):
        print(f"{token_id:>8}  {piece!r}")
    stops = ", ".join(f"{i} {p!r}" for i, p in zip(stop_ids, stop_pieces))
    print(f"stop tokens: {stops}")


def run_models(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.target) as channel:
        try:
            response = InferenceServiceStub(channel).ListModels(
                api.ListModelsRequest(), timeout=args.timeout, metadata=_metadata(args))
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    for m in response.models:
        print(f"{m.name}@{m.model_version}  pool={m.pool}  modes={','.join(m.modes)}  "
              f"context={m.context_limit}  chat_format={m.chat_format or '-'}")
    return 0
