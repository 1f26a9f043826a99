"""What both PromptTokenizer implementations share: the leading-space handling and the
special-token bookkeeping. Subclasses provide `_encode_plain`, `decode` and the backend."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from types import MappingProxyType

from prompting.leading_space import (
    decode_without_leading_space,
    encode_continuations,
    encode_without_leading_space,
)
from prompting.pieces import FORMAT_PIECES, SENTINEL


class BasePromptTokenizer:
    def __init__(
        self,
        *,
        special_tokens: Mapping[str, int],
        special_ids: frozenset[int],
        chat_template: str | None,
    ) -> None:
        """Call after the subclass has set up its backend: the format pieces are looked up and
        the sentinel is encoded here.

        The format pieces count as special whatever their type: in a vocabulary where they are
        ordinary BPE pieces (Code Llama's appended pieces come with their partial merges,
        `▁<SU`, `▁<SUF`, ...), text such as " <PRE>" would otherwise encode to them."""
        self._special_tokens: Mapping[str, int] = MappingProxyType(dict(special_tokens))
        format_pieces = {piece: self.piece_to_id(piece) for piece in FORMAT_PIECES}
        surfaces = {token_id: piece.replace("▁", " ").strip()
                    for piece, token_id in format_pieces.items() if token_id is not None}
        self._special_ids = special_ids | frozenset(surfaces)
        # Every surface starts with "<" and holds no other, so matches never overlap.
        self._format_surface_re = re.compile("|".join(map(re.escape, surfaces.values()))
                                             or "(?!)")
        self._chat_template = chat_template
        self._sentinel_ids = self._encode_plain(SENTINEL)

    def _encode_plain(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return self._special_tokens

    def piece_to_id(self, piece: str) -> int | None:
        raise NotImplementedError

    def encode(self, text: str, *, leading_space: bool = True) -> list[int]:
        if leading_space:
            return self._encode_user_text(text)
        return encode_without_leading_space(self._encode_user_text, text)

    def _encode_user_text(self, text: str) -> list[int]:
        ids = self._encode_plain(text)
        if self._special_ids.isdisjoint(ids):
            return ids
        return self._encode_defused(text)

    def _encode_defused(self, text: str) -> list[int]:
        """`text` cut right after the first character of every format piece it spells
        (`<` of `<PRE>`), the parts encoded as one continuous text: BPE cannot merge across a
        cut, so the piece comes out as ordinary tokens that decode to the same text. Whatever
        is still special, `encode_segment` refuses, naming the field."""
        cuts = [match.start() + 1 for match in self._format_surface_re.finditer(text)]
        parts = [text[start:end] for start, end in pairwise([0, *cuts, len(text)])]
        ids = self._encode_plain(parts[0])
        for part_ids in encode_continuations(self._encode_plain, self._encode_plain_batch,
                                             parts[1:]):
            ids += part_ids
        return ids

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_plain(text) for text in texts]

    def decode_infill(self, ids: Sequence[int]) -> str:
        return decode_without_leading_space(self.decode, self._sentinel_ids, ids)

