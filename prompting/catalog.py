"""The twelve Code Llama variants and their serving defaults.

The facts and their sources (the Code Llama paper, Meta's reference repository and README, the
Hugging Face model cards, codellama issue 188) are in docs/codellama-prompts.md.

Context ("Context length" there): every model was trained on 16,384-token sequences, and the
long-context ones work up to 100,000 tokens with RoPE theta 1e6, so `context_length` defaults to
16,384 and `max_context_length` is 100,000. Meta said later (codellama issue 188) that 70B Python
and 70B Instruct use RoPE theta 10,000 and 4,096 positions, which disagrees with some published
configs; we follow Meta's statement for those two. The registry refuses a version of a variant
whose `engine.max_model_len` exceeds `max_context_length`, or exceeds its checkpoint's own
context length, so a checkpoint's config can allow less than this catalog.

Tokenizer layouts ("Tokenizers" there): "infill" (32,016 pieces; 7B/13B base and Instruct),
"70b" (32,016 pieces with `<step>`, no dummy prefix; all 70B models, which share one tokenizer),
"plain" (Llama 2's 32,000 pieces; 34B and the 7B/13B/34B Python variants). 70B Python gets the
70B tokenizer (its published config has vocab_size 32016), not the 32,000 pieces of the other
Python variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fleet_common.errors import NotFound
from prompting.profile import ChatFormat, PromptProfile


class Flavour(StrEnum):
    BASE = "base"
    PYTHON = "python"
    INSTRUCT = "instruct"


@dataclass(frozen=True)
class CodeLlamaVariant:
    name: str  # e.g. "codellama-13b-instruct"
    size: str  # "7b", "13b", "34b", "70b"
    flavour: Flavour
    supports_infill: bool
    chat_format: ChatFormat | None
    tokenizer_layout: str  # "infill", "70b", "plain"
    vocab_size: int
    context_length: int  # default limit for prompt + generated tokens
    max_context_length: int  # the most a registered version may set (engine.max_model_len)
    rope_theta: float
    pool: str  # "7b" (7B and 13B), "34b", "70b"
    tensor_parallel_size: int
    hf_repo: str  # where the published weights live, for operators

    @property
    def supports_chat(self) -> bool:
        return self.chat_format is not None

    def profile(self) -> PromptProfile:
        return PromptProfile(
            model=self.name, supports_infill=self.supports_infill, chat_format=self.chat_format
        )


TRAINED_CONTEXT = 16_384
LONG_CONTEXT = 100_000
LONG_CONTEXT_THETA = 1_000_000.0
_POOL = {"7b": "7b", "13b": "7b", "34b": "34b", "70b": "70b"}
_TENSOR_PARALLEL = {"7b": 1, "13b": 1, "34b": 2, "70b": 4}
_HF_SUFFIX = {Flavour.BASE: "", Flavour.PYTHON: "-Python", Flavour.INSTRUCT: "-Instruct"}


def _variant(size: str, flavour: Flavour) -> CodeLlamaVariant:
    infill = size in ("7b", "13b") and flavour is not Flavour.PYTHON
    if flavour is Flavour.INSTRUCT:
        chat_format: ChatFormat | None = (
            ChatFormat.CODELLAMA_70B if size == "70b" else ChatFormat.LLAMA2
        )
    else:
        chat_format = None
    layout = "70b" if size == "70b" else ("infill" if infill else "plain")
    short_context = size == "70b" and flavour is not Flavour.BASE  # codellama issue 188
    return CodeLlamaVariant(
        name=f"codellama-{size}" + ("" if flavour is Flavour.BASE else f"-{flavour.value}"),
        size=size,
        flavour=flavour,
        supports_infill=infill,
        chat_format=chat_format,
        tokenizer_layout=layout,
        vocab_size=32_000 if layout == "plain" else 32_016,
        context_length=4_096 if short_context else TRAINED_CONTEXT,
        max_context_length=4_096 if short_context else LONG_CONTEXT,
        rope_theta=10_000.0 if short_context else LONG_CONTEXT_THETA,
        pool=_POOL[size],
        tensor_parallel_size=_TENSOR_PARALLEL[size],
        hf_repo=f"codellama/CodeLlama-{size}{_HF_SUFFIX[flavour]}-hf",
    )


CATALOG: tuple[CodeLlamaVariant, ...] = tuple(
    _variant(size, flavour) for size in ("7b", "13b", "34b", "70b") for flavour in Flavour
)


def catalog_entry(name: str) -> CodeLlamaVariant:
    for variant in CATALOG:
        if variant.name == name:
            return variant
    raise NotFound(
        f"unknown Code Llama variant {name!r}; known: {', '.join(v.name for v in CATALOG)}"
    )


def infill_model_names() -> tuple[str, ...]:
    return tuple(v.name for v in CATALOG if v.supports_infill)


def chat_model_names() -> tuple[str, ...]:
    return tuple(v.name for v in CATALOG if v.supports_chat)
