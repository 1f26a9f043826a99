"""Build Code Llama-layout tokenizers for tests from the Llama 2 SentencePiece fixture.

Code Llama's tokenizers are Llama 2's 32,000 pieces plus, for 7B/13B/70B, 16 appended pieces
(ids 32000-32015; see /work/shared/fixtures/README.md and docs/codellama-prompts.md):

- ``"infill"`` (7B/13B): 32,016 pieces; ``▁<PRE>``=32007, ``▁<SUF>``=32008, ``▁<MID>``=32009,
  ``▁<EOT>``=32010; 32015 is one more repeated ``▁<EOT>`` piece.
- ``"70b"``: the same, but 32015 is ``<step>`` and ``normalizer_spec.add_dummy_prefix`` is off
  (the 70B reference ids are reproduced only that way).
- ``"plain"`` (34B and Python variants): Llama 2's 32,000 pieces unchanged.

Piece types: every appended piece is a SentencePiece CONTROL piece, like ``<s>`` and ``</s>``.
SentencePiece never produces CONTROL pieces from raw text (they are not in the BPE merge table),
so no user text, whatever it contains (``<PRE>``, `` <EOT>``, ``<step>``, ``</s>``), can encode
to a special id, and ordinary text encodes exactly as with Llama 2. ``piece_to_id`` and
``id_to_piece`` still find them by piece string (for a piece that does not exist,
``piece_to_id`` returns the ``<unk>`` id 0, not an error); ``decode`` renders CONTROL ids as the
empty string, which is what a server wants for stop and marker tokens. (USER_DEFINED pieces
would be matched verbatim in user text; NORMAL pieces with merges would be reachable by BPE from
text such as `` <SUF>``: both would let a user inject format tokens.)

The Hugging Face files mirror that: the appended pieces are special added tokens, and the BPE
merges are the NORMAL pieces ranked by SentencePiece score. tokenizer.json spells out
SentencePiece's own pipeline (a Prepend("▁") normalizer, no pre-tokenizer), so the `tokenizers`
library gives exactly the SentencePiece ids for all text (special tokens not matched in text).
transformers 5 (`AutoTokenizer`, class LlamaTokenizer) rebuilds the pipeline with a Metaspace
pre-tokenizer, which adds no dummy prefix to text that already starts with a space or "▁":
there, and only there, its ids differ (the 70B layout, with no dummy prefix, always agrees).
"""

from __future__ import annotations

import json
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as model_pb2

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "llama2-tokenizer.model"
LAYOUTS = ("infill", "70b", "plain")

_CONTROL = model_pb2.ModelProto.SentencePiece.CONTROL
_NORMAL = model_pb2.ModelProto.SentencePiece.NORMAL
_BYTE = model_pb2.ModelProto.SentencePiece.BYTE

# ids 32000-32014, shared by the 7B/13B and 70B layouts. Only 32007-32010 are confirmed by
# public sources; the partial pieces and the repeats are a reconstruction (they never matter).
_SHARED_APPENDED = (
    "▁<SU", "▁<SUF", "▁<PRE", "▁<M", "▁<MID", "▁<E", "▁<EOT",
    "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>",
    "▁<EOT><EOT>", "▁<EOT><EOT><EOT>", "▁<EOT><EOT><EOT><EOT>", "▁<EOT><EOT><EOT><EOT><EOT>",
)  # fmt: skip
_LAST_APPENDED = {"infill": "▁<EOT><EOT><EOT><EOT><EOT><EOT>", "70b": "<step>"}

# tokenizer_config.json's model_max_length: Code Llama's trained sequence length.
_HF_MODEL_MAX_LENGTH = 16384


def appended_pieces(layout: str) -> tuple[str, ...]:
    """The pieces appended after Llama 2's 32,000 for `layout` (empty for "plain")."""
    _check_layout(layout)
    if layout == "plain":
        return ()
    return (*_SHARED_APPENDED, _LAST_APPENDED[layout])


def build_model_proto(layout: str, *, reachable: bool = False) -> model_pb2.ModelProto:
    """The SentencePiece model for `layout`, as a protobuf message. `reachable`: the appended
    pieces are NORMAL, so BPE builds them from text (" <PRE>" -> `▁<PRE>`), as it may in a
    real Code Llama tokenizer that ships their partial merges."""
    _check_layout(layout)
    proto = model_pb2.ModelProto()
    proto.ParseFromString(FIXTURE.read_bytes())
    for piece in appended_pieces(layout):
        new = proto.pieces.add()
        new.piece = piece
        new.score = 0.0
        new.type = _NORMAL if reachable else _CONTROL
    proto.trainer_spec.vocab_size = len(proto.pieces)
    if layout == "70b":
        proto.normalizer_spec.add_dummy_prefix = False
    return proto


def build_sentencepiece_model(layout: str, dest: Path, *, reachable: bool = False) -> Path:
    """Write `dest/tokenizer.model` for `layout` ("infill", "70b" or "plain"); return its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "tokenizer.model"
    path.write_bytes(build_model_proto(layout, reachable=reachable).SerializeToString())
    return path


def build_hf_tokenizer_files(layout: str, dest: Path, *, chat_template: str | None = None) -> Path:
    """Write tokenizer.model plus the Hugging Face tokenizer files for `layout` into `dest`.

    `transformers.AutoTokenizer.from_pretrained(dest)` loads the result as a fast Llama
    tokenizer; vLLM uses it for detokenisation. Returns `dest`.
    """
    dest = Path(dest)
    build_sentencepiece_model(layout, dest)
    proto = build_model_proto(layout)
    add_prefix_space = proto.normalizer_spec.add_dummy_prefix
    specials = [
        (i, p.piece) for i, p in enumerate(proto.pieces) if p.type in (_CONTROL, 2)
    ]  # 2: UNKNOWN

    (dest / "tokenizer.json").write_text(
        json.dumps(_tokenizer_json(proto, specials, add_prefix_space), ensure_ascii=False),
        encoding="utf-8",
    )
    config: dict[str, object] = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": add_prefix_space,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _HF_MODEL_MAX_LENGTH,
        "added_tokens_decoder": {str(i): _added_token(piece) for i, piece in specials},
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (dest / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (dest / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=1), encoding="utf-8"
    )
    return dest


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")


def _added_token(piece: str) -> dict[str, object]:
    return {
        "content": piece,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _merges(proto: model_pb2.ModelProto) -> list[list[str]]:
    """BPE merges from the NORMAL pieces, ranked like SentencePiece: higher score first.

    Ties (Llama's whitespace-run pieces all score -1e9) are broken by piece id, which
    reproduces SentencePiece's leftmost-first choice on every run we tested.
    """
    vocab = {p.piece: i for i, p in enumerate(proto.pieces) if p.type in (_NORMAL, _BYTE)}
    ranked: list[tuple[float, int, int, int, str, str]] = []
    for piece, piece_id in vocab.items():
        if proto.pieces[piece_id].type != _NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append(
                    (
                        -proto.pieces[piece_id].score,
                        piece_id,
                        vocab[left],
                        vocab[right],
                        left,
                        right,
                    )
                )
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def _tokenizer_json(
    proto: model_pb2.ModelProto, specials: list[tuple[int, str]], add_prefix_space: bool
) -> dict[str, object]:
    decoders: list[dict[str, object]] = [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if add_prefix_space:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    normalizers: list[dict[str, object]] = [
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    ]
    if add_prefix_space:
        normalizers.insert(0, {"type": "Prepend", "prepend": "▁"})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, **_added_token(piece)} for i, piece in specials],
        # SentencePiece's own pipeline: the dummy prefix is always prepended (a Metaspace
        # pre-tokenizer would not add it to text that already starts with a space).
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {p.piece: i for i, p in enumerate(proto.pieces)},
            "merges": _merges(proto),
        },
    }
