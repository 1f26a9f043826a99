"""Sampling features through the real fleet: n, seed, logprobs, stop sequences, auth."""

from __future__ import annotations

import json

import grpc
import pytest

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_cli.processes import start_gateway
from tests.e2e.conftest import CHAT_7B
from tests.e2e.fleet_harness import Fleet

pytestmark = pytest.mark.e2e


def _complete(fleet: Fleet, **sampling: object) -> api.CompleteResponse:
    return fleet.stub().Complete(api.CompleteRequest(
        model=CHAT_7B, prompt="def quicksort(items):", sampling=pb.SamplingParams(**sampling)),
        timeout=60)


def test_n_choices_with_a_seed_are_reproducible(fleet: Fleet) -> None:
    first = _complete(fleet, n=3, temperature=1.0, seed=1234, max_tokens=12)
    again = _complete(fleet, n=3, temperature=1.0, seed=1234, max_tokens=12)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [list(c.token_ids) for c in first.choices] == [list(c.token_ids) for c in again.choices]
    assert len({tuple(c.token_ids) for c in first.choices}) > 1, "choices should differ"
    assert first.usage.completion_tokens == sum(len(c.token_ids) for c in first.choices)


def test_logprobs_return_the_requested_number_of_alternatives(fleet: Fleet) -> None:
    response = _complete(fleet, max_tokens=6, temperature=0.0, logprobs=3)
    choice = response.choices[0]
    assert len(choice.logprobs) == len(choice.token_ids) == 6
    for token_id, entry in zip(choice.token_ids, choice.logprobs):
        assert entry.token_id == token_id and entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3
        ranked = [t.logprob for t in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert entry.top_logprobs[0].token_id == token_id, "greedy picks the most likely token"


def test_stop_sequence_ends_generation_and_is_reported(fleet: Fleet) -> None:
    free = _complete(fleet, max_tokens=40, temperature=0.0)
    text = free.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), text
    stopped = _complete(fleet, max_tokens=40, temperature=0.0, stop_sequences=[stop])
    choice = stopped.choices[0]
    assert choice.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert choice.matched_stop_sequence == stop
    assert stop not in choice.text and text.startswith(choice.text)


def test_gateway_with_api_keys_refuses_unknown_callers(fleet: Fleet) -> None:
    env = {"FLEET_REGISTRY_URL": fleet.registry_url, "FLEET_REDIS_URL": fleet.redis_url,
           "FLEET_API_KEYS": json.dumps({"secret-key-1": "team-a"})}
    gateway, port = start_gateway(env, fleet.log_dir)
    try:
        stub = InferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        request = api.CompleteRequest(model=CHAT_7B, prompt="x",
                                      sampling=pb.SamplingParams(max_tokens=2))
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Complete(request, timeout=10, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in caught.value.details()
        ok = stub.Complete(request, timeout=60,
                           metadata=(("authorization", "Bearer secret-key-1"),))
        assert ok.usage.completion_tokens == 2
    finally:
        gateway.stop()
