"""Exact id lists: the public reference vectors, and vectors built piece by piece from the raw
SentencePiece model following Meta's reference formulas. Every case runs through both the
SentencePiece and the Hugging Face tokenizer files, which must give identical ids."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from prompting import (
    ChatMessage,
    InfillOrder,
    build_chat_prompt,
    build_completion_prompt,
    build_infill_prompt,
    catalog_entry,
)
from prompting.tokenizer import PromptTokenizer
from tests.prompting.conftest import TOKENIZER_KINDS

BOS, EOS = 1, 2
PRE, SUF, MID, EOT, STEP = 32007, 32008, 32009, 32010, 32015

# docs/codellama-prompts.md, "Public example (PSM)".
PSM_PREFIX = 'def remove_non_ascii(s: str) -> str:\n    """ '
PSM_SUFFIX = "\n    return result\n"
PSM_IDS = [1, 32007, 822, 3349, 29918, 5464, 29918, 294, 18869, 29898, 29879, 29901, 851, 29897,
           1599, 851, 29901, 13, 1678, 9995, 29871, 32008,
           13, 1678, 736, 1121, 13, 32009]  # fmt: skip
# The same example split into its parts (read off PSM_IDS): the prefix with its implicit leading
# space ("▁def" = 822) and the suffix without one (it starts with the newline byte 13).
PREFIX_IDS = PSM_IDS[2:21]
SUFFIX_IDS = PSM_IDS[22:27]

# docs/codellama-prompts.md, the 70B model card's example.
DIALOG_70B = [
    ChatMessage("system", "System prompt "),
    ChatMessage("user", "First user query"),
    ChatMessage("assistant", "Model response to first query"),
    ChatMessage("user", "Second user query"),
]
IDS_70B = [1, 7562, 29901, 1788, 13, 13, 2184, 9508, 32015, 7562, 29901, 1404, 13, 13, 3824,
           1404, 2346, 32015, 7562, 29901, 20255, 13, 13, 8125, 2933, 304, 937, 2346, 32015, 7562,
           29901, 1404, 13, 13, 6440, 1404, 2346, 32015, 7562, 29901, 20255, 13, 14994, 3381,
           29901, 1404, 13, 13, 29871]  # fmt: skip

UNICODE_PREFIX = 'def grüße(名前: str) -> str:\n    # émoji 🎉 ☺\n    return f"こんにちは {名前}'
UNICODE_SUFFIX = "  \t# Ωμέγα\n\n\nprint(grüße('世界'))\n"
CODE_PREFIX = "#include <stdio.h>\nint main(void) {\n\tfor (int i = 0; i < 10; ++i) {\n\t\t"
CODE_SUFFIX = "\n\t}\n\treturn 0; /* </s> <PRE> <step> */\n}\n"

kinds = pytest.mark.parametrize("kind", TOKENIZER_KINDS)


def without_leading_space(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """The reference's encode_infilling, written independently: ☺ is piece 31171."""
    ids = sp.encode("☺" + text)
    assert ids[:2] == [29871, 31171]
    return ids[2:]


@kinds
def test_public_psm_example(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], kind: str
) -> None:
    tok = prompt_tokenizers[kind, "infill"]
    built = build_infill_prompt(
        tok, catalog_entry("codellama-7b").profile(), PSM_PREFIX, PSM_SUFFIX
    )
    assert built.token_ids == PSM_IDS
    assert built.stop_token_ids == [EOT]
    assert (built.format, built.decode_as_infill) == ("infill-psm", True)


@kinds
def test_public_example_suffix_first(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], kind: str
) -> None:
    tok = prompt_tokenizers[kind, "infill"]
    built = build_infill_prompt(
        tok, catalog_entry("codellama-13b").profile(), PSM_PREFIX, PSM_SUFFIX, InfillOrder.SPM
    )
    assert built.token_ids == [BOS, PRE, SUF, *SUFFIX_IDS, MID, *PREFIX_IDS]
    assert (built.format, built.stop_token_ids) == ("infill-spm", [EOT])


@kinds
def test_fill_me_marker_is_psm(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], kind: str
) -> None:
    tok = prompt_tokenizers[kind, "infill"]
    profile = catalog_entry("codellama-7b-instruct").profile()
    built = build_completion_prompt(tok, profile, PSM_PREFIX + "<FILL_ME>" + PSM_SUFFIX)
    assert built.token_ids == PSM_IDS


@kinds
def test_empty_suffix_keeps_the_full_layout(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], kind: str
) -> None:
    tok = prompt_tokenizers[kind, "infill"]
    built = build_infill_prompt(tok, catalog_entry("codellama-7b").profile(), PSM_PREFIX, "")
    assert built.token_ids == [BOS, PRE, *PREFIX_IDS, SUF, MID]


@kinds
@pytest.mark.parametrize(
    ("prefix", "suffix"), [(UNICODE_PREFIX, UNICODE_SUFFIX), (CODE_PREFIX, CODE_SUFFIX)]
)
def test_infill_unicode_and_code(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer],
    sp_models: dict[str, spm.SentencePieceProcessor],
    kind: str,
    prefix: str,
    suffix: str,
) -> None:
    tok, sp = prompt_tokenizers[kind, "infill"], sp_models["infill"]
    profile = catalog_entry("codellama-7b").profile()
    prefix_ids, suffix_ids = sp.encode(prefix), without_leading_space(sp, suffix)
    psm = build_infill_prompt(tok, profile, prefix, suffix)
    spm_ = build_infill_prompt(tok, profile, prefix, suffix, InfillOrder.SPM)
    assert psm.token_ids == [BOS, PRE, *prefix_ids, SUF, *suffix_ids, MID]
    assert spm_.token_ids == [BOS, PRE, SUF, *suffix_ids, MID, *prefix_ids]
    # By hand: "#include" starts with "▁#" (396), "def" with "▁def" (822); the code suffix starts
    # with "\n" (13), the unicode one with "▁▁" (259) and no third "▁" for an implicit space.
    assert (prefix_ids[0], suffix_ids[0]) == ((396, 13) if prefix is CODE_PREFIX else (822, 259))


@kinds
def test_completion(prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], kind: str) -> None:
    tok = prompt_tokenizers[kind, "plain"]
    built = build_completion_prompt(
        tok, catalog_entry("codellama-34b-python").profile(), PSM_PREFIX
    )
    assert built.token_ids == [BOS, *PREFIX_IDS]
    assert (built.stop_token_ids, built.format, built.decode_as_infill) == (
        [EOS],
        "completion",
        False,
    )


@kinds
def test_codellama_70b_reference_example(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], kind: str
) -> None:
    tok = prompt_tokenizers[kind, "70b"]
    built = build_chat_prompt(tok, catalog_entry("codellama-70b-instruct").profile(), DIALOG_70B)
    assert built.token_ids == IDS_70B
    assert (built.stop_token_ids, built.format) == ([STEP], "codellama-70b-chat")


@kinds
def test_codellama_70b_without_system_and_with_destination(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer],
    sp_models: dict[str, spm.SentencePieceProcessor],
    kind: str,
) -> None:
    tok, sp = prompt_tokenizers[kind, "70b"], sp_models["70b"]
    profile = catalog_entry("codellama-70b-instruct").profile()
    built = build_chat_prompt(tok, profile, [ChatMessage("user", "  Write fib in Rust \n")])
    # Read off IDS_70B: " Source: system" = [7562, 29901, 1788],
    # " Source: user" = [7562, 29901, 1404],
    # "\n\n " = [13, 13, 29871]; the reply header + "\n\n " are the vector's last 11 ids.
    reply = IDS_70B[-11:]
    assert built.token_ids == [
        BOS,
        7562,
        29901,
        1788,
        STEP,
        7562,
        29901,
        1404,
        *sp.encode("\n\n Write fib in Rust"),
        STEP,
        *reply,
    ]

    dialog = [
        ChatMessage("user", "hi", destination=" assistant "),
        ChatMessage("assistant", "", destination="user"),
        ChatMessage("user", "again"),
    ]
    built = build_chat_prompt(tok, profile, dialog)
    expected = [BOS, 7562, 29901, 1788, STEP]
    expected += sp.encode(" Source: user\nDestination: assistant") + sp.encode("\n\n hi") + [STEP]
    expected += sp.encode(" Source: assistant\nDestination: user") + [
        STEP
    ]  # empty content: no body
    expected += [7562, 29901, 1404] + sp.encode("\n\n again") + [STEP] + reply
    assert built.token_ids == expected


@kinds
def test_llama2_chat_single_turn(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer],
    sp_models: dict[str, spm.SentencePieceProcessor],
    kind: str,
) -> None:
    tok, sp = prompt_tokenizers[kind, "infill"], sp_models["infill"]
    built = build_chat_prompt(
        tok, catalog_entry("codellama-7b-instruct").profile(), [ChatMessage("user", " Hi there ")]
    )
    # "▁[" 518, "INST" 25580, "]" 29962, "▁Hi" 6324, "▁there" 727,
    # "▁[" 518, "/" 29914, "INST" 25580, "]" 29962
    assert built.token_ids == [BOS, 518, 25580, 29962, 6324, 727, 518, 29914, 25580, 29962]
    assert built.token_ids[1:] == sp.encode("[INST] Hi there [/INST]")
    assert (built.stop_token_ids, built.format) == ([EOS], "llama2-chat")


@kinds
def test_llama2_chat_with_system_multi_turn(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer],
    sp_models: dict[str, spm.SentencePieceProcessor],
    kind: str,
) -> None:
    tok, sp = prompt_tokenizers[kind, "plain"], sp_models["plain"]
    dialog = [
        ChatMessage("system", " Answer in Python. "),
        ChatMessage("user", "Reverse a list\n"),
        ChatMessage("assistant", "  xs[::-1]  "),
        ChatMessage("user", "And a string? ☺"),
        ChatMessage("assistant", "s[::-1]"),
        ChatMessage("user", "Thanks"),
    ]
    built = build_chat_prompt(tok, catalog_entry("codellama-34b-instruct").profile(), dialog)
    first_user = (
        "<<SYS>>\n Answer in Python. \n<</SYS>>\n\nReverse a list"  # whole merged text stripped
    )
    expected = [BOS, *sp.encode(f"[INST] {first_user} [/INST] xs[::-1] "), EOS]
    expected += [BOS, *sp.encode("[INST] And a string? ☺ [/INST] s[::-1] "), EOS]
    expected += [BOS, *sp.encode("[INST] Thanks [/INST]")]
    assert built.token_ids == expected
    # The trailing space before EOS is its own "▁" piece (29871).
    assert built.token_ids[built.token_ids.index(EOS) - 1] == 29871
