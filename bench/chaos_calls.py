"""The chaos run's requests: a seeded workload of greedy completions (distinct prompt and length
pairs, each called unary or streaming) and one client call per request, recorded as an
`Outcome` whatever happens to it.

Every request is greedy with `ignore_eos`, so its answer is exactly `max_tokens` tokens and the
same on every fault-free run; a request carries its own request id, so its result stream can be
read from Redis afterwards.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import grpc

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub

PROMPTS = (
    "def quicksort(arr):",
    "import numpy as np\n",
    "class Stack:",
    "# binary search over a sorted list\n",
    "def fibonacci(n):\n    \"\"\"",
    "SELECT name, count(*) FROM",
    "fn main() {\n",
    "#include <stdio.h>\nint main(",
    "async def fetch(session, url):",
    "public class LinkedList<T> {",
    "const express = require('express');",
    "def parse_args(argv=None):",
    "for i in range(10):",
    "package main\n\nimport \"fmt\"",
    "// merge two sorted arrays\n",
    "@dataclass\nclass Point:",
)
MIN_TOKENS, MAX_TOKENS = 16, 200


@dataclass(frozen=True)
class Spec:
    """What is generated: the same spec always gives the same tokens."""

    prompt: str
    max_tokens: int


@dataclass(frozen=True)
class Call:
    index: int
    request_id: str
    spec: Spec
    streaming: bool


@dataclass
class Outcome:
    """What the client saw of one call. `code` is the gRPC status name ("OK" on success);
    `lost` is a call that neither answered nor failed before its timeout (and the margin)."""

    call: Call
    code: str = ""
    details: str = ""
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    completion_tokens: int = 0
    worker: str = ""
    started_unix: float = 0.0
    ended_unix: float = 0.0
    messages: int = 0
    lost: bool = False
    local_deadline: bool = False  # DEADLINE_EXCEEDED from the client's own timer, not the fleet


def specs(count: int, rng: random.Random) -> list[Spec]:
    """`count` distinct (prompt, max_tokens) pairs, lengths spread over MIN..MAX_TOKENS."""
    chosen: list[Spec] = []
    for i in range(count):
        tokens = MIN_TOKENS + round((MAX_TOKENS - MIN_TOKENS) * i / max(count - 1, 1))
        chosen.append(Spec(PROMPTS[i % len(PROMPTS)], tokens))
    rng.shuffle(chosen)
    return chosen


def workload(requests: int, pool: list[Spec], rng: random.Random, run_tag: str) -> list[Call]:
    """`requests` calls over the specs, half of them streaming, in a random order."""
    kinds = [i % 2 == 1 for i in range(requests)]
    rng.shuffle(kinds)
    return [Call(i, f"chaos-{run_tag}-{i:04d}", rng.choice(pool), kinds[i])
            for i in range(requests)]


def _greedy(spec: Spec) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=spec.max_tokens, temperature=0.0, ignore_eos=True)


def run_call(stub: InferenceServiceStub, model: str, call: Call, timeout_s: float) -> Outcome:
    """One call to its end; never raises for an RPC error (the outcome records it)."""
    out = Outcome(call, started_unix=time.time())
    options = pb.RequestOptions(request_id=call.request_id)
    try:
        if call.streaming:
            _stream(stub, model, call, options, timeout_s, out)
        else:
            response = stub.Complete(api.CompleteRequest(
                model=model, prompt=call.spec.prompt, sampling=_greedy(call.spec),
                options=options), timeout=timeout_s)
            choice = response.choices[0]
            out.token_ids, out.text = list(choice.token_ids), choice.text
            out.completion_tokens = response.usage.completion_tokens
            out.worker = response.served_by.worker
            out.messages = 1
        out.code = "OK"
    except grpc.RpcError as exc:
        code = exc.code()
        out.code = code.name if code is not None else "UNKNOWN"
        out.details = exc.details() or ""
        # The gateway answers before the caller's deadline (FLEET_DEADLINE_MARGIN_S); a bare
        # "Deadline Exceeded" is the client's own timer, i.e. the fleet never answered.
        out.local_deadline = (code == grpc.StatusCode.DEADLINE_EXCEEDED
                              and out.details == "Deadline Exceeded")
    out.ended_unix = time.time()
    return out


def _stream(stub: InferenceServiceStub, model: str, call: Call, options: pb.RequestOptions,
            timeout_s: float, out: Outcome) -> None:
    pieces: list[str] = []
    try:
        for message in stub.StreamComplete(api.StreamCompleteRequest(
                model=model, prompt=call.spec.prompt, sampling=_greedy(call.spec),
                options=options), timeout=timeout_s):
            out.messages += 1
            for delta in message.deltas:
                pieces.append(delta.text)
                out.token_ids.extend(delta.token_ids)
            if message.HasField("usage"):
                out.completion_tokens = message.usage.completion_tokens
            if message.served_by.worker:
                out.worker = message.served_by.worker
    finally:
        out.text = "".join(pieces)

