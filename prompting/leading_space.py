"""Encoding and decoding text without SentencePiece's implicit leading space (the sentinel trick).

Meta's reference encodes `"☺" + text` and drops the first two ids (`▁` and `☺`); decoding puts
the sentinel back in front and removes it from the text. Rather than assume the sentinel gives
exactly two ids, we encode the sentinel alone, check that `sentinel + text` starts with those ids
and drop exactly them. When a tokenizer merges the sentinel with the text that follows, we try
the next candidate (a newline, which Llama-style vocabularies never merge).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prompting.pieces import SENTINEL

SENTINEL_CANDIDATES = (SENTINEL, "\n")


def encode_without_leading_space(encode: Callable[[str], list[int]], text: str) -> list[int]:
    """Ids of `text` as if it continued a longer text (no implicit leading space added)."""
    if not text:
        return []
    for sentinel in SENTINEL_CANDIDATES:
        head = encode(sentinel)
        ids = encode(sentinel + text)
        if head and ids[: len(head)] == head:
            return ids[len(head) :]
    # Every candidate merged with the text: such a tokenizer adds no prefix we could remove.
    return encode(text)


def encode_continuations(encode: Callable[[str], list[int]],
                         encode_batch: Callable[[list[str]], list[list[int]]],
                         texts: list[str]) -> list[list[int]]:
    """`encode_without_leading_space` of each of `texts`, in one batch call for the usual case
    (the first sentinel stays separate); a text the sentinel merges with takes the long way."""
    head = encode(SENTINEL)
    encoded = encode_batch([SENTINEL + text for text in texts])
    return [ids[len(head):] if head and ids[:len(head)] == head
            else encode_without_leading_space(encode, text)
            for text, ids in zip(texts, encoded, strict=True)]


def decode_without_leading_space(
    decode: Callable[[Sequence[int]], str], sentinel_ids: Sequence[int], ids: Sequence[int]
) -> str:
    """Text of `ids` generated after other text: a leading `▁` is kept as a space."""
    head = decode(sentinel_ids)
    text = decode([*sentinel_ids, *ids])
    if head and text.startswith(head):
        return text[len(head) :]
    return decode(ids)
