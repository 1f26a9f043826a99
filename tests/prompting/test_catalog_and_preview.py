"""The catalog's twelve variants, registry profiles, and the JSON preview."""

from __future__ import annotations

import json

import pytest

from fleet_common.errors import NotFound
from prompting import (
    CATALOG,
    ChatFormat,
    ChatMessage,
    Mode,
    PromptProfile,
    build_chat_prompt,
    catalog_entry,
    preview,
)
from prompting.tokenizer import PromptTokenizer

# name: (infill, chat format, layout, vocab, context, theta, pool, tp)
EXPECTED = {
    "codellama-7b": (True, None, "infill", 32016, 16384, 1e6, "7b", 1),
    "codellama-7b-python": (False, None, "plain", 32000, 16384, 1e6, "7b", 1),
    "codellama-7b-instruct": (True, "llama2", "infill", 32016, 16384, 1e6, "7b", 1),
    "codellama-13b": (True, None, "infill", 32016, 16384, 1e6, "7b", 1),
    "codellama-13b-python": (False, None, "plain", 32000, 16384, 1e6, "7b", 1),
    "codellama-13b-instruct": (True, "llama2", "infill", 32016, 16384, 1e6, "7b", 1),
    "codellama-34b": (False, None, "plain", 32000, 16384, 1e6, "34b", 2),
    "codellama-34b-python": (False, None, "plain", 32000, 16384, 1e6, "34b", 2),
    "codellama-34b-instruct": (False, "llama2", "plain", 32000, 16384, 1e6, "34b", 2),
    "codellama-70b": (False, None, "70b", 32016, 16384, 1e6, "70b", 4),
    "codellama-70b-python": (False, None, "70b", 32016, 4096, 1e4, "70b", 4),
    "codellama-70b-instruct": (False, "codellama-70b", "70b", 32016, 4096, 1e4, "70b", 4),
}


def test_catalog_has_the_twelve_variants() -> None:
    assert [v.name for v in CATALOG] == list(EXPECTED)
    for variant in CATALOG:
        infill, chat, layout, vocab, context, theta, pool, tp = EXPECTED[variant.name]
        assert variant.supports_infill is infill
        assert variant.chat_format == (None if chat is None else ChatFormat(chat))
        assert variant.supports_chat is (variant.flavour == "instruct")
        assert (variant.tokenizer_layout, variant.vocab_size, variant.context_length) == (
            layout,
            vocab,
            context,
        )
        assert (variant.rope_theta, variant.pool, variant.tensor_parallel_size) == (theta, pool, tp)
        assert variant.context_length <= variant.max_context_length


def test_catalog_lookup() -> None:
    assert catalog_entry("codellama-13b-python").hf_repo == "codellama/CodeLlama-13b-Python-hf"
    with pytest.raises(NotFound, match="unknown Code Llama variant 'codellama-8b'"):
        catalog_entry("codellama-8b")


def test_profiles() -> None:
    assert catalog_entry("codellama-7b-instruct").profile().modes == (
        Mode.COMPLETION,
        Mode.INFILL,
        Mode.CHAT,
    )
    assert catalog_entry("codellama-34b").profile().modes == (Mode.COMPLETION,)
    row = PromptProfile.from_registry(
        "smollm2", chat_format="hf-template", supports_infill=False, supports_chat=True
    )
    assert (row.chat_format, row.modes) == (ChatFormat.HF_TEMPLATE, (Mode.COMPLETION, Mode.CHAT))
    off = PromptProfile.from_registry(
        "x", chat_format="llama2", supports_infill=False, supports_chat=False
    )
    assert off.chat_format is None
    with pytest.raises(ValueError, match="unknown chat_format 'chatml'"):
        PromptProfile.from_registry(
            "x", chat_format="chatml", supports_infill=False, supports_chat=True
        )
    with pytest.raises(ValueError, match="supports_chat needs a chat_format"):
        PromptProfile.from_registry("x", chat_format="", supports_infill=False, supports_chat=True)


def test_preview_is_json(prompt_tokenizers: dict[tuple[str, str], PromptTokenizer]) -> None:
    tok = prompt_tokenizers["huggingface", "70b"]
    built = build_chat_prompt(
        tok, catalog_entry("codellama-70b-instruct").profile(), [ChatMessage("user", "hi")]
    )
    shown = json.loads(json.dumps(preview(built, tok)))
    assert shown["format"] == "codellama-70b-chat"
    assert shown["token_count"] == len(built.token_ids) == len(shown["pieces"])
    assert shown["pieces"][:4] == ["<s>", "▁Source", ":", "▁system"]
    assert (shown["stop_token_ids"], shown["stop_pieces"]) == ([32015], ["<step>"])
    assert shown["decode_as_infill"] is False
