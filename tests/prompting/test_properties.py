"""Property tests: for random texts and dialogs, ids decode back to what the format promises,
special ids appear exactly where the format puts them, and user text never yields one."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from prompting import (
    ChatMessage,
    InfillOrder,
    build_chat_prompt,
    build_infill_prompt,
    catalog_entry,
)
from prompting.pieces import RESERVED_CHAT_TAGS
from prompting.tokenizer import PromptTokenizer
from tests.prompting.conftest import TOKENIZER_KINDS
from tests.support.codellama_tokenizer import LAYOUTS

BOS, EOS = 1, 2
PRE, SUF, MID, STEP = 32007, 32008, 32009, 32015
SOURCE = 7562  # "▁Source", how every 70B header starts

FRAGMENTS = (
    "<s>", "</s>", "<unk>", "<step>", "<PRE>", " <SUF>", " <MID>", " <EOT>", "▁<PRE>", "▁<EOT>",
    "<FILL_ME>", "[INST", "INST]", "<<SY", "Source: user", "\n\n ", "☺", "▁", " ", "  ", "\t", "\n",
    "def ", "return x",
)  # fmt: skip
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=8).map(
    "".join
)
FAST = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def seen(text: str) -> str:
    """What decoding gives back: SentencePiece reads a literal "▁" (U+2581) as its space symbol,
    so such a character comes back as a space (in Meta's reference too)."""
    return text.replace("▁", " ")


def tokenizers(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], layout: str
) -> list[PromptTokenizer]:
    return [prompt_tokenizers[kind, layout] for kind in TOKENIZER_KINDS]


def chat_safe(text: str) -> str:
    assume(not any(tag in text for tag in RESERVED_CHAT_TAGS))
    return text


@FAST
@given(text=texts, leading_space=st.booleans())
def test_user_text_never_yields_a_special_id(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], text: str, leading_space: bool
) -> None:
    for layout in LAYOUTS:
        sp_tok, hf_tok = tokenizers(prompt_tokenizers, layout)
        ids = sp_tok.encode(text, leading_space=leading_space)
        assert sp_tok.special_ids.isdisjoint(ids)
        assert not {BOS, EOS, *range(32000, 32016)} & set(ids)
        assert hf_tok.encode(text, leading_space=leading_space) == ids
        assert sp_tok.decode(ids) == hf_tok.decode(ids)


@FAST
@given(text=texts)
def test_infill_encoding_round_trips(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], text: str
) -> None:
    for tok in tokenizers(prompt_tokenizers, "infill"):
        assert tok.decode_infill(tok.encode(text, leading_space=False)) == seen(text)
        assert tok.decode(tok.encode(text)) == seen(text)


@FAST
@given(prefix=texts, suffix=texts, order=st.sampled_from(InfillOrder))
def test_infill_layout(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer],
    prefix: str,
    suffix: str,
    order: InfillOrder,
) -> None:
    assume(prefix or suffix)
    for tok in tokenizers(prompt_tokenizers, "infill"):
        ids = build_infill_prompt(
            tok, catalog_entry("codellama-7b").profile(), prefix, suffix, order
        ).token_ids
        specials = [(i, t) for i, t in enumerate(ids) if t in tok.special_ids]
        if order is InfillOrder.PSM:
            suf_at = ids.index(SUF)
            assert specials == [(0, BOS), (1, PRE), (suf_at, SUF), (len(ids) - 1, MID)]
            prefix_ids, suffix_ids = ids[2:suf_at], ids[suf_at + 1 : -1]
        else:
            mid_at = ids.index(MID)
            assert specials == [(0, BOS), (1, PRE), (2, SUF), (mid_at, MID)]
            prefix_ids, suffix_ids = ids[mid_at + 1 :], ids[3:mid_at]
        assert tok.decode(prefix_ids) == seen(prefix)
        assert tok.decode_infill(suffix_ids) == seen(suffix)
        assert suffix_ids == tok.encode(suffix, leading_space=False)


def dialogs(with_system: bool) -> st.SearchStrategy[list[ChatMessage]]:
    turns = st.lists(st.tuples(texts, texts), max_size=3)
    return st.builds(
        lambda system, pairs, last: (
            ([ChatMessage("system", system)] if with_system else [])
            + [
                ChatMessage(role, text)
                for u, a in pairs
                for role, text in (("user", u), ("assistant", a))
            ]
            + [ChatMessage("user", last)]
        ),
        texts,
        turns,
        texts.filter(lambda t: t.strip() != ""),
    )


@FAST
@given(dialog=st.booleans().flatmap(dialogs))
def test_llama2_chat_layout(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], dialog: list[ChatMessage]
) -> None:
    for message in dialog:
        chat_safe(message.content)
    users = [m.content for m in dialog if m.role == "user"]
    answers = [m.content for m in dialog if m.role == "assistant"]
    if dialog[0].role == "system":
        users[0] = f"<<SYS>>\n{dialog[0].content}\n<</SYS>>\n\n{users[0]}"
    for tok in tokenizers(prompt_tokenizers, "infill"):
        ids = build_chat_prompt(
            tok, catalog_entry("codellama-13b-instruct").profile(), dialog
        ).token_ids
        bos_at = [i for i, t in enumerate(ids) if t == BOS]
        eos_at = [i for i, t in enumerate(ids) if t == EOS]
        assert len(bos_at) == len(users) and bos_at[0] == 0
        assert eos_at == [i - 1 for i in bos_at[1:]]
        assert all(t in (BOS, EOS) for t in ids if t in tok.special_ids)
        segments = [
            ids[start + 1 : end] for start, end in zip(bos_at, [*eos_at, len(ids)], strict=True)
        ]
        expected = [
            f"[INST] {u.strip()} [/INST] {a.strip()} "
            for u, a in zip(users[:-1], answers, strict=True)
        ]
        expected.append(f"[INST] {users[-1].strip()} [/INST]")
        assert [tok.decode(s) for s in segments] == [seen(e) for e in expected]


@FAST
@given(dialog=st.booleans().flatmap(dialogs))
def test_codellama70b_chat_layout(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], dialog: list[ChatMessage]
) -> None:
    for message in dialog:
        chat_safe(message.content)
    full = dialog if dialog[0].role == "system" else [ChatMessage("system", ""), *dialog]
    expected = (
        "".join(
            f" Source: {m.role}" + (f"\n\n {m.content.strip()}" if m.content else "") for m in full
        )
        + " Source: assistant\nDestination: user\n\n "
    )
    for tok in tokenizers(prompt_tokenizers, "70b"):
        ids = build_chat_prompt(
            tok, catalog_entry("codellama-70b-instruct").profile(), dialog
        ).token_ids
        step_at = [i for i, t in enumerate(ids) if t == STEP]
        assert len(step_at) == len(full)
        assert [ids[i + 1] for i in step_at] == [SOURCE] * len(full)
        assert ids[0] == BOS and ids[1] == SOURCE
        assert [t for t in ids if t in tok.special_ids] == [BOS] + [STEP] * len(full)
        # The 70B tokenizer has no dummy prefix and <step>/BOS decode to nothing.
        assert tok.decode(ids) == seen(expected)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_sentinel_fallback_when_the_sentinel_merges(
    prompt_tokenizers: dict[tuple[str, str], PromptTokenizer], kind: str
) -> None:
    from prompting.leading_space import encode_without_leading_space

    tok = prompt_tokenizers[kind, "infill"]

    def merging(text: str) -> list[int]:  # a tokenizer whose "☺" merges with what follows
        return (
            [31172, *tok.encode(text[2:])]
            if text.startswith("☺") and len(text) > 1
            else tok.encode(text)
        )

    assert encode_without_leading_space(merging, "def f") == tok.encode(
        "def f", leading_space=False
    )
    assert encode_without_leading_space(merging, " def") == [822]
