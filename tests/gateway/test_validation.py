"""The gateway's field validators: defaults, the edges that pass, the first values that fail."""

from __future__ import annotations

import re

import pytest

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.errors import InvalidArgument
from gateway.settings import Limits
from gateway.validation import (
    validate_model_name,
    validate_priority,
    validate_request_id,
    validate_routing_key,
    validate_sampling,
)

LIMITS = Limits()


def test_unset_sampling_fields_get_their_defaults() -> None:
    sampling = validate_sampling(pb.SamplingParams(), Limits(default_max_tokens=99))
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k,
            sampling.repetition_penalty, sampling.n) == (99, 0.0, 1.0, 0, 1.0, 1)
    assert list(sampling.stop_sequences) == [] and not sampling.ignore_eos
    assert not sampling.HasField("seed") and not sampling.HasField("logprobs")


def test_set_sampling_fields_are_kept_including_zero_seed_and_logprobs() -> None:
    params = pb.SamplingParams(max_tokens=7, temperature=0.5, top_p=0.25, top_k=40,
                               repetition_penalty=1.5, stop_sequences=["\n", "END"], seed=0,
                               n=3, logprobs=0, ignore_eos=True)
    sampling = validate_sampling(params, LIMITS)
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k,
            sampling.repetition_penalty, sampling.n) == (7, 0.5, 0.25, 40, 1.5, 3)
    assert list(sampling.stop_sequences) == ["\n", "END"] and sampling.ignore_eos
    assert sampling.HasField("seed") and sampling.seed == 0
    assert sampling.HasField("logprobs") and sampling.logprobs == 0


@pytest.mark.parametrize("params", [
    pb.SamplingParams(max_tokens=1),
    pb.SamplingParams(temperature=0.0),
    pb.SamplingParams(temperature=2.0),
    pb.SamplingParams(top_p=1.0),
    pb.SamplingParams(top_k=100_000),
    pb.SamplingParams(repetition_penalty=2.0),
    pb.SamplingParams(stop_sequences=["s"] * 8),
    pb.SamplingParams(stop_sequences=["x" * 64]),
    pb.SamplingParams(seed=2**63 - 1),
    pb.SamplingParams(n=8, temperature=0.1),
    pb.SamplingParams(logprobs=5),
], ids=lambda p: str(p).replace("\n", " ").strip())
def test_values_at_the_limits_pass(params: pb.SamplingParams) -> None:
    validate_sampling(params, LIMITS)


@pytest.mark.parametrize(("params", "field", "says"), [
    (pb.SamplingParams(max_tokens=0), "max_tokens", "must be at least 1, got 0"),
    (pb.SamplingParams(temperature=2.5), "temperature", "between 0 and 2, got 2.5"),
    (pb.SamplingParams(temperature=float("inf")), "temperature", "got inf"),
    (pb.SamplingParams(top_p=0.0), "top_p", "greater than 0 and at most 1, got 0.0"),
    (pb.SamplingParams(top_p=float("nan")), "top_p", "got nan"),
    (pb.SamplingParams(top_k=100_001), "top_k", "at most 100000 (0 disables it), got 100001"),
    (pb.SamplingParams(repetition_penalty=2.5), "repetition_penalty",
     "greater than 0 and at most 2, got 2.5"),
    (pb.SamplingParams(stop_sequences=["s"] * 9), "stop_sequences", "at most 8 entries, got 9"),
    (pb.SamplingParams(stop_sequences=["a", ""]), "stop_sequences[1]", "must not be empty"),
    (pb.SamplingParams(stop_sequences=["x" * 65]), "stop_sequences[0]",
     "at most 64 characters, got '65 characters'"),
    (pb.SamplingParams(seed=2**63), "seed", f"at most {2**63 - 1}, got {2**63}"),
    (pb.SamplingParams(n=0, temperature=1.0), "n", "between 1 and 8, got 0"),
    (pb.SamplingParams(n=9, temperature=1.0), "n", "between 1 and 8, got 9"),
    (pb.SamplingParams(n=2), "n", "n=2 needs sampling: set temperature above 0"),
    (pb.SamplingParams(logprobs=6), "logprobs", "between 0 and 5, got 6"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_a_value_past_a_limit_names_the_field_the_limit_and_the_value(
        params: pb.SamplingParams, field: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_sampling(params, LIMITS)
    assert caught.value.field == f"sampling.{field}"
    assert caught.value.message.startswith(f"sampling.{field}: ")
    assert says in caught.value.message


def test_limits_come_from_the_settings() -> None:
    limits = Limits(max_n=2, max_logprobs=1, max_stop_sequences=1, max_stop_sequence_chars=3)
    for params, says in [(pb.SamplingParams(n=3, temperature=1.0), "between 1 and 2"),
                         (pb.SamplingParams(logprobs=2), "between 0 and 1"),
                         (pb.SamplingParams(stop_sequences=["a", "b"]), "at most 1 entries"),
                         (pb.SamplingParams(stop_sequences=["abcd"]), "at most 3 characters")]:
        with pytest.raises(InvalidArgument, match=re.escape(says)):
            validate_sampling(params, limits)


def test_request_id_is_the_callers_or_a_fresh_one() -> None:
    assert validate_request_id(pb.RequestOptions(request_id="a.B_9:-z")) == "a.B_9:-z"
    assert validate_request_id(pb.RequestOptions(request_id="r" * 128)) == "r" * 128
    made = {validate_request_id(pb.RequestOptions()) for _ in range(3)}
    assert len(made) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made)


@pytest.mark.parametrize("request_id", [
    "has space", "a/b", "r" * 129, "é", "x\n",
])
def test_a_bad_request_id_names_the_allowed_characters_and_the_value(request_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_request_id(pb.RequestOptions(request_id=request_id))
    assert caught.value.field == "options.request_id"
    assert "1-128 characters of [A-Za-z0-9._:-]" in caught.value.message
    assert repr(request_id[:140]) in caught.value.message


def test_priority_unspecified_is_normal_and_unknown_values_are_refused() -> None:
    assert validate_priority(pb.RequestOptions()) == pb.PRIORITY_NORMAL
    for priority in (pb.PRIORITY_LOW, pb.PRIORITY_NORMAL, pb.PRIORITY_HIGH):
        assert validate_priority(pb.RequestOptions(priority=priority)) == priority
    with pytest.raises(InvalidArgument) as caught:
        validate_priority(pb.RequestOptions(priority=42))  # type: ignore[arg-type]
    assert caught.value.field == "options.priority"
    assert "unknown value 42" in caught.value.message
    assert "PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH" in caught.value.message


def test_model_name_is_required_and_bounded() -> None:
    assert validate_model_name("m" * 128) == "m" * 128
    with pytest.raises(InvalidArgument, match=r"^model: is required"):
        validate_model_name("")
    with pytest.raises(InvalidArgument, match=r"^model: must be at most 128 characters, "
                                              r"got '129 characters'"):
        validate_model_name("m" * 129)


def test_routing_key_is_optional_and_bounded() -> None:
    assert validate_routing_key(pb.RequestOptions()) is None
    assert validate_routing_key(pb.RequestOptions(routing_key="k" * 256)) == "k" * 256
    with pytest.raises(InvalidArgument, match=r"^options.routing_key: must be at most 256 "
                                              r"characters, got '257 characters'"):
        validate_routing_key(pb.RequestOptions(routing_key="k" * 257))
