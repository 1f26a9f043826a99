"""Field validation of requests. Every message names the field, the limit and the value."""

from __future__ import annotations

import math
import re
import uuid

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.errors import InvalidArgument, OutOfBounds
from fleet_common.wire import Sampling
from gateway.settings import Limits

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MAX_SEED = 2**63 - 1


def validate_sampling(params: pb.SamplingParams, limits: Limits) -> Sampling:
    """Checks every field that does not depend on the model (context budget comes later)."""
    f = "sampling."
    max_tokens = params.max_tokens if params.HasField("max_tokens") else limits.default_max_tokens
    if max_tokens < 1:
        raise OutOfBounds(f + "max_tokens", max_tokens, "at least 1")
    temperature = params.temperature if params.HasField("temperature") else 0.0
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0:
        raise OutOfBounds(f + "temperature", temperature, "between 0 and 2")
    top_p = params.top_p if params.HasField("top_p") else 1.0
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise OutOfBounds(f + "top_p", top_p, "greater than 0 and at most 1")
    top_k = params.top_k if params.HasField("top_k") else 0
    if top_k > 100_000:
        raise OutOfBounds(f + "top_k", top_k, "at most 100000 (0 disables it)")
    penalty = params.repetition_penalty if params.HasField("repetition_penalty") else 1.0
    if not math.isfinite(penalty) or not 0.0 < penalty <= 2.0:
        raise OutOfBounds(f + "repetition_penalty", penalty, "greater than 0 and at most 2")
    stops = tuple(params.stop_sequences)
    if len(stops) > limits.max_stop_sequences:
        raise OutOfBounds(f + "stop_sequences", len(stops),
                         f"at most {limits.max_stop_sequences} entries")
    for i, stop in enumerate(stops):
        if not stop:
            raise InvalidArgument(f"{f}stop_sequences[{i}]", "must not be empty")
        if len(stop) > limits.max_stop_sequence_chars:
            raise OutOfBounds(f"{f}stop_sequences[{i}]", f"{len(stop)} characters",
                             f"at most {limits.max_stop_sequence_chars} characters")
    seed = params.seed if params.HasField("seed") else None
    if seed is not None and seed > _MAX_SEED:
        raise OutOfBounds(f + "seed", seed, f"at most {_MAX_SEED}")
    n = params.n if params.HasField("n") else 1
    if not 1 <= n <= limits.max_n:
        raise OutOfBounds(f + "n", n, f"between 1 and {limits.max_n}")
    if n > 1 and temperature == 0.0:
        raise InvalidArgument(f + "n", f"n={n} needs sampling: set temperature above 0 "
                                       "(greedy decoding gives identical choices)")
    logprobs = params.logprobs if params.HasField("logprobs") else None
    if logprobs is not None and logprobs > limits.max_logprobs:
        raise OutOfBounds(f + "logprobs", logprobs, f"between 0 and {limits.max_logprobs}")
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=penalty,
        stop_sequences=stops,
        n=n,
        ignore_eos=params.ignore_eos,
    )
    if seed is not None:
        sampling.seed = seed
    if logprobs is not None:
        sampling.logprobs = logprobs
    return sampling


def validate_request_id(options: pb.RequestOptions) -> str:
    if not options.request_id:
        return uuid.uuid4().hex
    if not _REQUEST_ID.fullmatch(options.request_id):
        raise InvalidArgument("options.request_id",
                              f"must be 1-128 characters of [A-Za-z0-9._:-], "
                              f"got {options.request_id[:140]!r}")
    return options.request_id


def validate_priority(options: pb.RequestOptions, *, default: int = pb.PRIORITY_NORMAL) -> int:
    """The request's priority; PRIORITY_UNSPECIFIED is `default` (PRIORITY_NORMAL for calls,
    PRIORITY_LOW for job items)."""
    if options.priority not in pb.Priority.values():
        raise InvalidArgument("options.priority", f"unknown value {options.priority}; allowed: "
                              + ", ".join(pb.Priority.keys()))
    return options.priority or default


def validate_model_name(model: str) -> str:
    if not model:
        raise InvalidArgument("model", "is required (see ListModels for the served models)")
    if len(model) > 128:
        raise OutOfBounds("model", f"{len(model)} characters", "at most 128 characters")
    return model


def validate_routing_key(options: pb.RequestOptions) -> str | None:
    if len(options.routing_key) > 256:
        raise OutOfBounds("options.routing_key", f"{len(options.routing_key)} characters",
                         "at most 256 characters")
    return options.routing_key or None
