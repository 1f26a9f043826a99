"""From request fields to the exact engine prompt, with the served model's tokenizer.

Tokenizing a long prompt takes a while (0.4 to 0.6 s of CPU for 1,000,000 characters with
SmolLM2's BPE or Llama 2's SentencePiece), and on the gateway's event loop that would stall
every other call, so `build_async` builds a prompt of more than INLINE_MAX_CHARS characters in
a thread; both tokenizer backends release the GIL while they encode. Smaller prompts are built
inline: for them the thread hop would add more CPU (4 to 5 times the build of a 200-character
prompt) than holding the loop for at most a millisecond is worth. A process pool was measured
too and lost: more CPU per call (the request and the ids pickled both ways, plus the IPC) and
no less loop lag than a thread. The numbers are in docs/benchmarks/admission.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from fleet_common.errors import InvalidArgument, OutOfBounds
from gateway.settings import Limits
from gateway.tokenizer_cache import SHARED_TOKENIZERS, TokenizerCache
from model_registry.records import ServedModel
from prompting.built import BuiltPrompt
from prompting.chat_template import end_of_turn_ids
from prompting.formats import build_chat_prompt, build_completion_prompt, build_infill_prompt
from prompting.infill import InfillOrder
from prompting.messages import ChatMessage
from prompting.modes import Mode
from prompting.preview import preview
from prompting.profile import ChatFormat, PromptProfile
from prompting.tokenizer import PromptTokenizer
from prompting.validation import check_context_budget

log = logging.getLogger(__name__)

#: Prompts of at most this many characters (all text fields together) are built on the event
#: loop, holding it up to about 1 ms; longer ones in a thread (the hop costs 0.15 to 0.2 ms of
#: CPU one at a time, about 0.3 ms at 64 concurrent admissions).
INLINE_MAX_CHARS = 4_000
PROMPT_THREADS = min(4, os.cpu_count() or 1)

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

    @property
    def chars(self) -> int:
        """Characters of text to tokenize, all fields together."""
        return (len(self.prompt) + len(self.prefix) + len(self.suffix)
                + sum(len(m.content) for m in self.messages))

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
    def __init__(self, limits: Limits, *, tokenizers: TokenizerCache | None = None,
                 executor: Executor | None = None, inline_max_chars: int = INLINE_MAX_CHARS
                 ) -> None:
        """`tokenizers`: default the process's shared cache. `executor`: where `build_async`
        and `preload` work, default a thread pool of PROMPT_THREADS made on first use."""
        self._limits = limits
        self._tokenizers = SHARED_TOKENIZERS if tokenizers is None else tokenizers
        self._executor = executor
        self._inline_max_chars = inline_max_chars

    @staticmethod
    def tokenizer(checkpoint_dir: str) -> PromptTokenizer:
        """The tokenizer of `checkpoint_dir` from the process's shared cache."""
        return SHARED_TOKENIZERS.get(checkpoint_dir)

    def build(self, served: ServedModel, prompt_input: PromptInput) -> EnginePrompt:
        """The engine prompt, built in the calling thread (blocking)."""
        profile = PromptProfile.from_registry(
            served.model, chat_format=served.chat_format,
            supports_infill=served.supports_infill, supports_chat=served.supports_chat,
            chat_template=served.chat_template or None)
        return self.build_with(self._tokenizers.get(served.checkpoint_dir), profile,
                               prompt_input)

    async def build_async(self, served: ServedModel, prompt_input: PromptInput) -> EnginePrompt:
        """`build` for the event loop: inline when the prompt is small and its tokenizer is
        loaded, else in the executor (which also loads a tokenizer not loaded yet)."""
        if (prompt_input.chars <= self._inline_max_chars
                and self._tokenizers.loaded(served.checkpoint_dir) is not None):
            return self.build(served, prompt_input)
        return await asyncio.get_running_loop().run_in_executor(
            self._pool(), self.build, served, prompt_input)

    async def preload(self, served: Iterable[ServedModel]) -> None:
        """Loads the tokenizer of every version in `served` (each checkpoint once) and computes
        its chat template's end-of-turn ids, in the executor. A version whose tokenizer fails
        to load is logged; its requests load it again on first need (and fail if it still
        cannot be loaded)."""
        versions = list(served)
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(self._pool(), self._prepare, version) for version in versions),
            return_exceptions=True)
        for version, result in zip(versions, results, strict=True):
            if isinstance(result, Exception):
                log.error("cannot load the tokenizer (or chat template) of %s %s from %s: %s",
                          version.model, version.version, version.checkpoint_dir, result)
            elif isinstance(result, BaseException):
                raise result

    def _prepare(self, served: ServedModel) -> None:
        tokenizer = self._tokenizers.get(served.checkpoint_dir)
        if served.supports_chat and served.chat_format == ChatFormat.HF_TEMPLATE:
            template = served.chat_template or tokenizer.chat_template
            if template:
                end_of_turn_ids(template, tokenizer)

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="prompt")
        return self._executor

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
            raise OutOfBounds("messages", len(messages),
                             f"at most {self._limits.max_messages} messages")
        converted = []
        for i, message in enumerate(messages):
            if message.role not in _ROLES:
                got = (pb.Role.Name(message.role) if message.role in pb.Role.values()
                       else message.role)
                raise InvalidArgument(f"messages[{i}].role", "must be ROLE_SYSTEM, ROLE_USER or "
                                      f"ROLE_ASSISTANT, got {got}")
            self._check_length(f"messages[{i}].content", message.content)
            converted.append(ChatMessage(role=_ROLES[message.role], content=message.content,
                                         destination=message.destination or None))
        return converted

    def _check_length(self, field: str, text: str) -> None:
        if len(text) > self._limits.max_prompt_chars:
            raise OutOfBounds(field, f"{len(text)} characters",
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
        view = self.view(self._tokenizers.get(served.checkpoint_dir), prompt)
        return api.PreviewPromptResponse(
            model_version=served.version, prompt_format=view["format"],
            token_ids=view["token_ids"], pieces=view["pieces"],
            stop_token_ids=view["stop_token_ids"], stop_pieces=view["stop_pieces"],
            context_limit=served.context_limit)
