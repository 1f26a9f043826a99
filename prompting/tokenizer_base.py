"""What both PromptTokenizer implementations share: the leading-space handling and the
special-token bookkeeping. Subclasses provide `_encode_plain`, `decode` and the backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from types import MappingProxyType

from prompting.leading_space import decode_without_leading_space, encode_without_leading_space
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
        self._format_surfaces = {token_id: piece.replace("▁", " ").strip()
                                 for piece, token_id in format_pieces.items()
                                 if token_id is not None}
        self._special_ids = special_ids | frozenset(self._format_surfaces)
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
        cut, so the piece comes out as ordinary tokens that decode to the same text. All parts
        go to the backend in one batch call, however many cuts there are."""
        cuts = sorted({match + 1 for surface in self._format_surfaces.values()
                       for match in _occurrences(text, surface)})
        bounds = [0, *cuts, len(text)]
        parts = [text[start:end] for start, end in pairwise(bounds) if end > start]
        if not parts:
            return []
        head = self._sentinel_ids
        encoded = self._encode_plain_batch([parts[0], *(SENTINEL + part for part in parts[1:])])
        ids = list(encoded[0])
        for part, part_ids in zip(parts[1:], encoded[1:], strict=True):
            if head and part_ids[:len(head)] == head:
                ids += part_ids[len(head):]
            else:  # the sentinel merged with the part: the slow, careful way
                ids += encode_without_leading_space(self._encode_plain, part)
        # Whatever is still special here, encode_segment refuses, naming the field.
        return ids

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_plain(text) for text in texts]

    def decode_infill(self, ids: Sequence[int]) -> str:
        return decode_without_leading_space(self.decode, self._sentinel_ids, ids)


def _occurrences(text: str, surface: str) -> list[int]:
    found, start = [], text.find(surface)
    while start >= 0:
        found.append(start)
        start = text.find(surface, start + 1)
    return found
