"""Code Llama's prompt formats through the real fleet: infill stops at EOT and returns only the
middle; the 70B chat stops at <step>; <FILL_ME> completions are infills."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from gateway.prompts import PromptBuilder
from tests.e2e.conftest import CHAT_7B, CHAT_70B, References, reference_cases
from tests.e2e.fleet_harness import Fleet
from tests.support.codellama_tokenizer import build_sentencepiece_model

pytestmark = pytest.mark.e2e
END = pb.FINISH_REASON_END_OF_SEQUENCE


def _tokenizer(fleet: Fleet, model: str):  # type: ignore[no-untyped-def]
    return PromptBuilder.tokenizer(fleet.store.get_version(model).checkpoint_dir)


def test_infill_stops_at_eot_and_returns_only_the_middle(references: References,
                                                         fleet: Fleet) -> None:
    _, prompt_input, max_tokens = reference_cases()["infill"]
    response = fleet.stub().Infill(api.InfillRequest(
        model=CHAT_7B, prefix=prompt_input.prefix, suffix=prompt_input.suffix,
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)), timeout=60)
    choice = response.choices[0]
    expected = references.get("infill")
    assert expected["finish_reason"] == "stop", "the tiny checkpoint should emit EOT here"
    assert choice.finish_reason == END
    assert list(choice.token_ids) == expected["token_ids"]
    tokenizer = _tokenizer(fleet, CHAT_7B)
    eot = tokenizer.piece_to_id("▁<EOT>")
    middle_ids = [t for t in choice.token_ids if t != eot]
    assert len(middle_ids) < max_tokens
    assert choice.text == tokenizer.decode_infill(middle_ids)
    assert "<EOT>" not in choice.text and prompt_input.suffix not in choice.text


def test_fill_me_completion_is_served_as_infill(fleet: Fleet) -> None:
    _, prompt_input, max_tokens = reference_cases()["infill"]
    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    infill = fleet.stub().Infill(api.InfillRequest(
        model=CHAT_7B, prefix=prompt_input.prefix, suffix=prompt_input.suffix,
        sampling=sampling), timeout=60)
    completion = fleet.stub().Complete(api.CompleteRequest(
        model=CHAT_7B, prompt=prompt_input.prefix + "<FILL_ME>" + prompt_input.suffix,
        sampling=sampling), timeout=60)
    assert list(completion.choices[0].token_ids) == list(infill.choices[0].token_ids)
    assert completion.choices[0].text == infill.choices[0].text
    assert completion.choices[0].finish_reason == END


def test_streamed_infill_deltas_join_to_the_unary_middle(fleet: Fleet) -> None:
    _, prompt_input, max_tokens = reference_cases()["infill"]
    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    unary = fleet.stub().Infill(api.InfillRequest(
        model=CHAT_7B, prefix=prompt_input.prefix, suffix=prompt_input.suffix,
        sampling=sampling), timeout=60)
    streamed = "".join(d.text for m in fleet.stub().StreamInfill(api.StreamInfillRequest(
        model=CHAT_7B, prefix=prompt_input.prefix, suffix=prompt_input.suffix,
        sampling=sampling), timeout=60) for d in m.deltas)
    assert streamed == unary.choices[0].text


def test_70b_chat_stops_at_step(references: References, fleet: Fleet) -> None:
    _, prompt_input, max_tokens = reference_cases()["chat_70b"]
    messages = [pb.ChatMessage(role=m.role, content=m.content) for m in prompt_input.messages]
    preview = fleet.stub().PreviewPrompt(api.PreviewPromptRequest(
        model=CHAT_70B, chat=api.ChatInput(messages=messages)), timeout=10)
    assert preview.prompt_format == "codellama-70b-chat"
    assert list(preview.stop_pieces) == ["<step>"]
    step = preview.stop_token_ids[0]
    assert list(preview.token_ids).count(step) == 2, "empty system inserted, then the user turn"
    assert list(preview.token_ids[-3:]) == [13, 13, 29871], "ends with the assistant header"
    response = fleet.stub().Chat(api.ChatRequest(
        model=CHAT_70B, messages=messages,
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)), timeout=60)
    expected = references.get("chat_70b")
    assert expected["finish_reason"] == "stop" and expected["stop_reason"] == 32015
    choice = response.choices[0]
    assert choice.finish_reason == END
    assert list(choice.token_ids) == expected["token_ids"]
    assert "<step>" not in choice.text


def test_ignore_eos_also_ignores_the_formats_end_token(references: References,
                                                       fleet: Fleet) -> None:
    _, prompt_input, max_tokens = reference_cases()["infill"]
    assert references.get("infill")["finish_reason"] == "stop"  # EOT comes early without it
    response = fleet.stub().Infill(api.InfillRequest(
        model=CHAT_7B, prefix=prompt_input.prefix, suffix=prompt_input.suffix,
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)),
        timeout=60)
    choice = response.choices[0]
    assert len(choice.token_ids) == max_tokens
    assert choice.finish_reason == pb.FINISH_REASON_LENGTH
    assert response.timings.time_to_first_token_ms <= response.timings.total_ms


def test_user_code_spelling_format_pieces_stays_text_in_the_gateway(
        fleet: Fleet, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """A model whose tokenizer lets BPE build `▁<PRE>` etc. from text: the gateway still sends
    the infill layout's special ids only where the layout puts them."""
    checkpoint = tmp_path / "reachable"
    shutil.copytree(tiny_checkpoints["infill"], checkpoint)
    build_sentencepiece_model("infill", checkpoint, reachable=True)
    fleet.register("tiny-bpe-reachable", checkpoint, variant="codellama-7b",
                   context_limit=2048)
    prefix, suffix = "s = ' <SUF> <MID>'\nif a <PRE> b:", " <EOT> pass\n"
    request = api.PreviewPromptRequest(model="tiny-bpe-reachable",
                                       infill=api.InfillInput(prefix=prefix, suffix=suffix))
    deadline = time.monotonic() + 10
    while True:  # until the gateway's registry refresh has seen the new model
        try:
            preview = fleet.stub().PreviewPrompt(request, timeout=10)
            break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    ids = list(preview.token_ids)
    pre, suf, mid, eot = 32007, 32008, 32009, 32010
    suf_at = ids.index(suf)
    assert [(i, t) for i, t in enumerate(ids) if t in {1, pre, suf, mid, eot}] == [
        (0, 1), (1, pre), (suf_at, suf), (len(ids) - 1, mid)]
    tokenizer = _tokenizer(fleet, "tiny-bpe-reachable")
    assert tokenizer.decode(ids[2:suf_at]) == prefix
    assert tokenizer.decode_infill(ids[suf_at + 1:-1]) == suffix
