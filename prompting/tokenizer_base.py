"""What both PromptTokenizer implementations share: the leading-space handling and the
special-token bookkeeping. Subclasses provide `_encode_plain`, `decode` and the backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from prompting.leading_space import decode_without_leading_space, encode_without_leading_space
from prompting.pieces import SENTINEL


class BasePromptTokenizer:
    def __init__(
        self,
        *,
        special_tokens: Mapping[str, int],
        special_ids: frozenset[int],
        chat_template: str | None,
    ) -> None:
        """Call after the subclass has set up its backend: the sentinel is encoded here."""
        self._special_tokens: Mapping[str, int] = MappingProxyType(dict(special_tokens))
        self._special_ids = special_ids
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

    def encode(self, text: str, *, leading_space: bool = True) -> list[int]:
        if leading_space:
            return self._encode_plain(text)
        return encode_without_leading_space(self._encode_plain, text)

    def decode_infill(self, ids: Sequence[int]) -> str:
        return decode_without_leading_space(self.decode, self._sentinel_ids, ids)
