"""The test tokenizers themselves: layouts, piece types, and SentencePiece/HF parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from tests.prompting.sample_texts import sample_texts
from tests.support.codellama_tokenizer import LAYOUTS, build_model_proto

SPECIAL_PIECES = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")
TEXTS = sample_texts(400)


@pytest.mark.parametrize(
    ("layout", "size", "dummy_prefix"),
    [("infill", 32016, True), ("70b", 32016, False), ("plain", 32000, True)],
)
def test_layout_shape(
    sp_models: dict[str, spm.SentencePieceProcessor], layout: str, size: int, dummy_prefix: bool
) -> None:
    sp = sp_models[layout]
    assert sp.vocab_size() == size
    assert (sp.bos_id(), sp.eos_id(), sp.unk_id()) == (1, 2, 0)
    assert build_model_proto(layout).normalizer_spec.add_dummy_prefix is dummy_prefix
    assert sp.encode("x") == ([921] if dummy_prefix else [29916])


@pytest.mark.parametrize("layout", ["infill", "70b"])
def test_special_pieces_have_the_published_ids(
    sp_models: dict[str, spm.SentencePieceProcessor], layout: str
) -> None:
    sp = sp_models[layout]
    assert [sp.piece_to_id(p) for p in SPECIAL_PIECES] == [32007, 32008, 32009, 32010]
    assert all(sp.is_control(i) for i in range(32000, 32016))
    step = sp.piece_to_id("<step>")
    assert step == (32015 if layout == "70b" else sp.unk_id())
    # CONTROL pieces decode to nothing.
    assert sp.decode([32007, 32010, 32015]) == ""


def test_plain_layout_has_no_infill_pieces(
    sp_models: dict[str, spm.SentencePieceProcessor],
) -> None:
    sp = sp_models["plain"]
    assert all(sp.piece_to_id(p) == sp.unk_id() for p in (*SPECIAL_PIECES, "<step>"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_text_encodes_to_a_special_id(
    sp_models: dict[str, spm.SentencePieceProcessor], layout: str
) -> None:
    sp = sp_models[layout]
    specials = {sp.bos_id(), sp.eos_id(), *range(32000, sp.vocab_size())}
    for text in TEXTS:
        assert not specials & set(sp.encode(text)), text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ordinary_text_matches_llama2(
    sp_models: dict[str, spm.SentencePieceProcessor], layout: str
) -> None:
    if layout == "70b":
        pytest.skip("70B has no dummy prefix, so it differs from Llama 2 by design")
    llama2 = sp_models["plain"]
    for text in TEXTS:
        assert sp_models[layout].encode(text) == llama2.encode(text), text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tokenizer_json_matches_sentencepiece(
    tokenizer_dirs: dict[str, Path], sp_models: dict[str, spm.SentencePieceProcessor], layout: str
) -> None:
    hf = Tokenizer.from_file(str(tokenizer_dirs[layout] / "tokenizer.json"))
    hf.encode_special_tokens = True
    sp = sp_models[layout]
    for text in TEXTS:
        ids = sp.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert hf.decode(ids) == sp.decode(ids), text
    assert hf.get_vocab_size() == sp.vocab_size()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_auto_tokenizer_loads_a_fast_llama_tokenizer(
    tokenizer_dirs: dict[str, Path], sp_models: dict[str, spm.SentencePieceProcessor], layout: str
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dirs[layout]))
    sp = sp_models[layout]
    assert type(tok).__name__ == "LlamaTokenizer" and tok.is_fast
    assert (tok.bos_token, tok.eos_token, tok.bos_token_id, tok.eos_token_id) == (
        "<s>",
        "</s>",
        1,
        2,
    )
    assert len(tok) == sp.vocab_size()
    for piece_id in range(32000, sp.vocab_size()):
        added = tok.added_tokens_decoder[piece_id]
        assert added.special and added.content == sp.id_to_piece(piece_id)
    # transformers 5 rebuilds Llama tokenizers with a Metaspace pre-tokenizer, which adds no
    # dummy prefix to text that already starts with a space (or "▁"); everything else agrees.
    for text in TEXTS:
        if text.startswith((" ", "▁")) and layout != "70b":
            continue
        ids = sp.encode(text)
        assert tok.encode(text, add_special_tokens=False, split_special_tokens=True) == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids), text
    assert tok.encode("x")[0] == 1
