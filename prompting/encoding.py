"""Encoding user text for request fields, and looking up the special ids a format needs."""

from __future__ import annotations

from collections.abc import Sequence

from fleet_common.errors import FailedPrecondition, InvalidArgument
from prompting.tokenizer import PromptTokenizer


def encode_segment(
    tokenizer: PromptTokenizer,
    text: str,
    sources: Sequence[tuple[str, str]],
    *,
    leading_space: bool = True,
) -> list[int]:
    """Ids of `text`, which embeds user text from `sources` ((field, text) pairs).

    Refuses a result containing a special id. Both tokenizer implementations already keep
    special-token look-alikes as plain text; this makes it a guarantee for any tokenizer a
    registry row can point at. The error names the first source that causes it.
    """
    ids = tokenizer.encode(text, leading_space=leading_space)
    if not tokenizer.special_ids.isdisjoint(ids):
        blamed = next(
            (
                field
                for field, part in sources
                if not tokenizer.special_ids.isdisjoint(tokenizer.encode(part))
            ),
            sources[0][0] if sources else "prompt",
        )
        raise InvalidArgument(
            blamed, "contains text that this model's tokenizer reads as a special token"
        )
    return ids


def encode_field(
    tokenizer: PromptTokenizer, text: str, field: str, *, leading_space: bool = True
) -> list[int]:
    """Ids of the user text of request field `field` (see `encode_segment`)."""
    return encode_segment(tokenizer, text, [(field, text)], leading_space=leading_space)


def special_id(tokenizer: PromptTokenizer, piece: str, purpose: str) -> int:
    """Id of a format's special piece; FailedPrecondition when the tokenizer lacks it."""
    token_id = tokenizer.piece_to_id(piece)
    if token_id is None:
        raise FailedPrecondition(
            f"the model's tokenizer has no {piece!r} piece, which {purpose} needs"
        )
    return token_id


def bos_prefix(tokenizer: PromptTokenizer) -> list[int]:
    """[BOS] for models that start sequences with one, else []."""
    return [] if tokenizer.bos_id is None else [tokenizer.bos_id]
