"""From request fields to the exact engine prompt, with the served model's tokenizer."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from fleet_common.errors import InvalidArgument, OutOfRange
from fleet_common.wire import Mode
from gateway.settings import Limits
from model_registry.records import ServedModel
from prompting.built import BuiltPrompt
from prompting.formats import build_chat_prompt, build_completion_prompt, build_infill_prompt
from prompting.infill import InfillOrder
from prompting.messages import ChatMessage
from prompting.preview import preview
from prompting.profile import PromptProfile
from prompting.tokenizer import PromptTokenizer, load_prompt_tokenizer
from prompting.validation import check_context_budget

_ROLES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}
_ORDERS = {pb.INFILL_ORDER_UNSPECIFIED: InfillOrder.PSM, pb.INFILL_ORDER_PSM: InfillOrder.PSM,
           pb.INFILL_ORDER_SPM: InfillOrder.SPM}


@dataclass(frozen=True)
class PromptInput:
    """The prompt part of any request, independent of the RPC it came in."""

    mode: Mode
    prompt: str = ""
    prefix: str = ""
    suffix: str = ""
    order: int = pb.INFILL_ORDER_UNSPECIFIED
    messages: tuple[Any, ...] = ()

    @classmethod
    def completion(cls, request: Any) -> PromptInput:
        return cls(Mode.COMPLETION, prompt=request.prompt)

    @classmethod
    def infill(cls, request: Any) -> PromptInput:
        return cls(Mode.INFILL, prefix=request.prefix, suffix=request.suffix, order=request.order)

    @classmethod
    def chat(cls, request: Any) -> PromptInput:
        return cls(Mode.CHAT, messages=tuple(request.messages))

    @classmethod
    def preview(cls, request: api.PreviewPromptRequest) -> PromptInput:
        which = request.WhichOneof("input")
        if which == "prompt":
            return cls(Mode.COMPLETION, prompt=request.prompt)
        if which == "infill":
            return cls.infill(request.infill)
        if which == "chat":
            return cls.chat(request.chat)
        raise InvalidArgument("input", "set one of prompt, infill or chat")


@dataclass(frozen=True)
class EnginePrompt:
    token_ids: list[int]
    stop_token_ids: list[int]
    format: str
    mode: Mode


class PromptBuilder:
    def __init__(self, limits: Limits) -> None:
        self._limits = limits

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def tokenizer(checkpoint_dir: str) -> PromptTokenizer:
        return load_prompt_tokenizer(Path(checkpoint_dir))

    def build(self, served: ServedModel, prompt_input: PromptInput) -> EnginePrompt:
        profile = PromptProfile.from_registry(
            served.model, chat_format=served.chat_format,
            supports_infill=served.supports_infill, supports_chat=served.supports_chat,
            chat_template=served.chat_template or None)
        return self.build_with(self.tokenizer(served.checkpoint_dir), profile, prompt_input)

    def build_with(self, tokenizer: PromptTokenizer, profile: PromptProfile,
                   prompt_input: PromptInput) -> EnginePrompt:
        """`build` for any tokenizer and profile (the offline `fleet preview --tokenizer`)."""
        built = self._build(tokenizer, profile, prompt_input)
        mode = Mode.INFILL if built.decode_as_infill or built.format.startswith("infill") \
            else prompt_input.mode
        return EnginePrompt(list(built.token_ids), list(built.stop_token_ids), built.format, mode)

    def _build(self, tokenizer: PromptTokenizer, profile: PromptProfile,
               prompt_input: PromptInput) -> BuiltPrompt:
        if prompt_input.mode is Mode.COMPLETION:
            self._check_length("prompt", prompt_input.prompt)
            return build_completion_prompt(tokenizer, profile, prompt_input.prompt)
        if prompt_input.mode is Mode.INFILL:
            self._check_length("prefix", prompt_input.prefix)
            self._check_length("suffix", prompt_input.suffix)
            if prompt_input.order not in _ORDERS:
                raise InvalidArgument("order", f"unknown value {prompt_input.order}; allowed: "
                                      "INFILL_ORDER_PSM, INFILL_ORDER_SPM")
            return build_infill_prompt(tokenizer, profile, prompt_input.prefix,
                                       prompt_input.suffix, _ORDERS[prompt_input.order])
        return build_chat_prompt(tokenizer, profile, self._messages(prompt_input.messages))

    def _messages(self, messages: Sequence[Any]) -> list[ChatMessage]:
        if len(messages) > self._limits.max_messages:
            raise OutOfRange("messages", len(messages),
                             f"at most {self._limits.max_messages} messages")
        converted = []
        for i, message in enumerate(messages):
            if message.role not in _ROLES:
                raise InvalidArgument(f"messages[{i}].role",
                                      f"must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT, got "
                                      f"{pb.Role.Name(message.role) if message.role in pb.Role.values() else message.role}")
            self._check_length(f"messages[{i}].content", message.content)
            converted.append(ChatMessage(role=_ROLES[message.role], content=message.content,
                                         destination=message.destination or None))
        return converted

    def _check_length(self, field: str, text: str) -> None:
        if len(text) > self._limits.max_prompt_chars:
            raise OutOfRange(field, f"{len(text)} characters",
                             f"at most {self._limits.max_prompt_chars} characters")

    @staticmethod
    def check_budget(served: ServedModel, prompt: EnginePrompt, max_tokens: int) -> None:
        check_context_budget(len(prompt.token_ids), max_tokens, served.context_limit)

    @staticmethod
    def view(tokenizer: PromptTokenizer, prompt: EnginePrompt) -> dict[str, Any]:
        """Ids, pieces and stops of a built prompt, JSON-ready."""
        return preview(BuiltPrompt(prompt.token_ids, prompt.stop_token_ids, prompt.format,
                                   decode_as_infill=prompt.mode is Mode.INFILL), tokenizer)

    def preview_response(self, served: ServedModel, prompt: EnginePrompt
                         ) -> api.PreviewPromptResponse:
        view = self.view(self.tokenizer(served.checkpoint_dir), prompt)
        return api.PreviewPromptResponse(
            model_version=served.version, prompt_format=view["format"],
            token_ids=view["token_ids"], pieces=view["pieces"],
            stop_token_ids=view["stop_token_ids"], stop_pieces=view["stop_pieces"],
            context_limit=served.context_limit)
